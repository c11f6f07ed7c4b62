"""TLS contexts for links: TLS 1.3 only, throwaway self-signed certificates.

Peers never check certificates (identity is proven by the AUTH record, see
L{meshvpn.link.auth}), so each process makes one ephemeral P-256 key and
certificate with a random name.  Objects here are connection creators that
L{twisted.protocols.tls.TLSMemoryBIOFactory} accepts directly.
"""

import datetime
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IOpenSSLServerConnectionCreator
from zope.interface import implementer


def _ephemeralCertificate():
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"www.{os.urandom(6).hex()}.net")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _baseContext():
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    # No resumption: every link runs a full handshake, so every exporter
    # value comes from fresh key exchange.
    ctx.set_options(SSL.OP_NO_TICKET)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    ctx.set_verify(SSL.VERIFY_NONE, lambda *a: True)
    return ctx


@implementer(IOpenSSLServerConnectionCreator, IOpenSSLClientConnectionCreator)
class LinkTLS:
    """Creates server and client TLS connections for links (one per process is enough)."""

    def __init__(self):
        key, cert = _ephemeralCertificate()
        self._server = _baseContext()
        self._server.use_privatekey(key)
        self._server.use_certificate(cert)
        self._server.check_privatekey()
        self._client = _baseContext()

    def serverConnectionForTLS(self, tlsProtocol):
        conn = SSL.Connection(self._server, None)
        conn.set_accept_state()
        return conn

    def clientConnectionForTLS(self, tlsProtocol):
        conn = SSL.Connection(self._client, None)
        conn.set_connect_state()
        return conn


_shared = None


def sharedLinkTLS():
    """The process's one L{LinkTLS} (key generation costs a few ms; do it once)."""
    global _shared
    if _shared is None:
        _shared = LinkTLS()
    return _shared
