"""Signed bootstrap files: the first relays a new client may ask, vouched for by a key it trusts.

A client with an empty routing table has to start from somewhere.  Addresses
typed by the user are trusted because the user typed them; a list that comes
with the package or from a network's web site is trusted only if it is
signed by a key the client already trusts, and only until it expires (an old
list replayed by an attacker would point new clients at relays that have
since gone or been taken over).

The file is one JSON object (at most L{MAX_FILE} bytes)::

    {"format": "meshvpn-bootstrap/1", "network": "NAME",
     "published": UNIX, "expires": UNIX,
     "nodes": ["IP:PORT", ...],
     "signer": "<Ed25519 public key, base64>", "signature": "<base64>"}

The signature is Ed25519 over L{SIGNING_CONTEXT} followed by the canonical
JSON (sorted keys, no spaces) of every field but C{signature}.  Trusted
signer keys are listed one per line (base64, C{#} comments) in
C{bootstrap-signers} files: the one shipped with the package and the one in
the client's config directory.
"""

import base64
import binascii
import json
import os
import time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from meshvpn.errors import MeshVPNError
from meshvpn.hostport import HostPortError, formatHostPort, parseIPPort

FORMAT = "meshvpn-bootstrap/1"
SIGNING_CONTEXT = b"meshvpn bootstrap file v1\0"
MAX_FILE = 64 * 1024
MAX_NODES = 64
MAX_LIFETIME = 400 * 86400  # a list signed for longer than this is refused: it would outlive its relays
FIELDS = {"format", "network", "published", "expires", "nodes", "signer", "signature"}


class BootstrapFileError(MeshVPNError):
    """A bootstrap file that is malformed, unsigned by a trusted key, or expired."""


def _b64(text, what, length):
    if not isinstance(text, str):
        raise BootstrapFileError(f"{what}: expected base64 text")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise BootstrapFileError(f"{what}: not valid base64") from None
    if len(raw) != length:
        raise BootstrapFileError(f"{what}: expected {length} bytes, got {len(raw)}")
    return raw


def canonical(body):
    return SIGNING_CONTEXT + json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sign(privateKey, nodes, network="main", published=None, lifetime=30 * 86400):
    """
    @param privateKey: an C{Ed25519PrivateKey}.
    @param nodes: C{"IP:PORT"} strings (checked).
    @return: the file's bytes.
    """
    published = int(time.time() if published is None else published)
    body = {
        "format": FORMAT,
        "network": network,
        "published": published,
        "expires": published + int(lifetime),
        "nodes": [formatHostPort(*_node(n)) for n in nodes],
        "signer": base64.b64encode(privateKey.public_key().public_bytes_raw()).decode(),
    }
    _checkBody(body)
    signature = privateKey.sign(canonical(body))
    return json.dumps({**body, "signature": base64.b64encode(signature).decode()}, indent=1).encode() + b"\n"


def _node(text):
    if not isinstance(text, str):
        raise BootstrapFileError("nodes: each entry must be an \"IP:PORT\" string")
    try:
        host, port = parseIPPort(text)
    except HostPortError as e:
        raise BootstrapFileError(f"nodes: {text[:60]!r}: {e}") from None
    if port == 0:
        raise BootstrapFileError(f"nodes: {text[:60]!r}: port 0")
    return host, port


def _checkBody(body):
    if body.get("format") != FORMAT:
        raise BootstrapFileError(f"format: expected {FORMAT!r}")
    if not isinstance(body.get("network"), str) or not 0 < len(body["network"]) <= 64:
        raise BootstrapFileError("network: expected a name of 1-64 characters")
    for key in ("published", "expires"):
        if not isinstance(body.get(key), int) or isinstance(body[key], bool) or body[key] < 0:
            raise BootstrapFileError(f"{key}: expected a UNIX time")
    if not body["published"] < body["expires"] <= body["published"] + MAX_LIFETIME:
        raise BootstrapFileError(f"expires: must follow published by at most {MAX_LIFETIME // 86400} days")
    nodes = body.get("nodes")
    if not isinstance(nodes, list) or not 0 < len(nodes) <= MAX_NODES:
        raise BootstrapFileError(f"nodes: expected a list of 1-{MAX_NODES} \"IP:PORT\" strings")
    for node in nodes:
        _node(node)


def parse(data, trusted, now=None):
    """
    Check a bootstrap file and return the addresses it vouches for.

    @param data: the file's bytes.
    @param trusted: the set of trusted signer public keys (32-byte raw).
    @return: C{(network, [(host, port)], expires)}.
    @raise BootstrapFileError: malformed, signed by an unknown key, badly
        signed, not yet valid or expired (the message says which).
    """
    if len(data) > MAX_FILE:
        raise BootstrapFileError(f"larger than {MAX_FILE} bytes")
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BootstrapFileError("not JSON") from None
    if not isinstance(doc, dict):
        raise BootstrapFileError("not a JSON object")
    if set(doc) != FIELDS:
        missing, extra = FIELDS - set(doc), set(doc) - FIELDS
        raise BootstrapFileError(f"fields: missing {sorted(missing)}, unexpected {sorted(extra)[:5]}")
    body = {k: v for k, v in doc.items() if k != "signature"}
    _checkBody(body)
    signer = _b64(doc["signer"], "signer", 32)
    signature = _b64(doc["signature"], "signature", 64)
    if signer not in trusted:
        raise BootstrapFileError(f"signed by {doc['signer']}, which is not a trusted bootstrap signer")
    try:
        Ed25519PublicKey.from_public_bytes(signer).verify(signature, canonical(body))
    except InvalidSignature:
        raise BootstrapFileError("bad signature: the file was changed after it was signed") from None
    now = time.time() if now is None else now
    if now < body["published"] - 3600:
        raise BootstrapFileError("published in the future (is this machine's clock right?)")
    if now > body["expires"]:
        raise BootstrapFileError(f"expired on {time.strftime('%Y-%m-%d', time.gmtime(body['expires']))}")
    return body["network"], [_node(n) for n in body["nodes"]], body["expires"]


def loadSigners(*paths):
    """
    The trusted keys in the C{bootstrap-signers} files that exist among
    C{paths}.  @raise BootstrapFileError: a line that is not a key (naming it).
    """
    keys = set()
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read(MAX_FILE).splitlines()
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError) as e:
            raise BootstrapFileError(f"{path}: {e}") from None
        for number, line in enumerate(lines, 1):
            text = line.split("#", 1)[0].strip()
            if text:
                try:
                    keys.add(_b64(text, f"{path}:{number}", 32))
                except BootstrapFileError as e:
                    raise BootstrapFileError(f"{e} (one base64 Ed25519 public key per line)") from None
    return keys


def newSigningKey(path):
    """Create an Ed25519 signing key file (0600) for a network's operators.  @return: its public key, base64."""
    from cryptography.hazmat.primitives import serialization

    from meshvpn.secretfile import writeSecretFile

    if os.path.exists(path):
        raise BootstrapFileError(f"{path} exists; not overwriting a signing key")
    key = Ed25519PrivateKey.generate()
    writeSecretFile(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    return base64.b64encode(key.public_key().public_bytes_raw()).decode()


def loadSigningKey(path):
    from cryptography.hazmat.primitives import serialization

    try:
        with open(path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except (OSError, ValueError) as e:
        raise BootstrapFileError(f"{path}: not a signing key ({e})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BootstrapFileError(f"{path}: not an Ed25519 key")
    return key
