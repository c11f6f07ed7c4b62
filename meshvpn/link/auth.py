"""Binding an Ed25519 node identity to one TLS session.

TLS here only encrypts; its certificates are throwaway.  Each side instead
signs the session's RFC 5705 exporter value (unique to this TLS session: a
man in the middle terminating TLS on both sides sees two different values)
together with a hash of the VERSIONS both sides sent and its role, so a
signature cannot be replayed in another session, reflected to its signer or
moved to a downgraded negotiation.
"""

import hashlib
import struct

from meshvpn.identity import nodeIdFromPublicKey, verifySignature
from meshvpn.link.wire import LinkProtocolError

EXPORTER_LABEL = b"EXPORTER-meshvpn-link-v1"
EXPORTER_LENGTH = 32
CONTEXT = b"meshvpn link auth v1\x00"
RESPONDER = b"R"
INITIATOR = b"I"

ANONYMOUS = 0
AUTHENTICATED = 1
_AUTH_LENGTH = 1 + 32 + 64


def transcriptHash(initiatorVersions, responderVersions):
    """SHA-256 over both raw VERSIONS payloads, each length-prefixed."""
    h = hashlib.sha256()
    for payload in (initiatorVersions, responderVersions):
        h.update(struct.pack(">H", len(payload)))
        h.update(payload)
    return h.digest()


def signedMessage(role, exporter, transcript, responderId=b""):
    """
    What a side signs.  The initiator also signs the responder's node id it
    verified, so its signature names the link's both ends.
    """
    return CONTEXT + role + exporter + transcript + responderId


def encodeAuth(identity, role, exporter, transcript, responderId=b""):
    """An AUTH payload proving C{identity} on this session."""
    sig = identity.sign(signedMessage(role, exporter, transcript, responderId))
    return bytes([AUTHENTICATED]) + identity.identityPublicKey + sig


def encodeAnonymousAuth():
    return bytes([ANONYMOUS])


def verifyAuth(payload, role, exporter, transcript, responderId=b""):
    """
    Check an AUTH payload.

    @return: the peer's C{(nodeId, identityPublicKey)}, or C{(None, None)}
        for an anonymous initiator.
    @raise LinkProtocolError: malformed payload or a bad signature.
    """
    if payload == bytes([ANONYMOUS]):
        return None, None
    if len(payload) != _AUTH_LENGTH or payload[0] != AUTHENTICATED:
        raise LinkProtocolError("malformed AUTH record")
    key, sig = payload[1:33], payload[33:]
    if not verifySignature(key, signedMessage(role, exporter, transcript, responderId), sig):
        raise LinkProtocolError("AUTH signature does not match this TLS session")
    return nodeIdFromPublicKey(key), key
