"""Byte layouts of relay signalling and of the offers peers exchange through it.

Signalling rides the control channel of an authenticated datagram link to a
relay, so the relay knows exactly which node sent each message.  Every
message is a type byte and fixed or length-prefixed fields; every parser
checks every length and raises L{SignalParseError} (the caller drops the
message and counts it).

Relay messages (client <-> relay):

    REGISTER     0x01                                   client -> relay
    REGISTERED   0x02 | observed address                relay -> client
    FORWARD      0x03 | destination node id (32) | payload      client -> relay
    DELIVER      0x04 | source node id (32) | source's observed address | payload
    UNREACHABLE  0x05 | destination node id (32)
    CREDS?       0x06                                   client -> relay
    CREDS        0x07 | lifetime (4) | len (1) | username | len (1) | password

Peer payloads (end to end, inside FORWARD/DELIVER):

    OFFER        0x11 | punch id (8) | secret (16) | candidates
    ANSWER       0x12 | punch id (8) | candidates
    RELAYED      0x13 | punch id (8) | relayed address   ("reach me at my TURN allocation")

An address is family (4 or 6) | port (2) | 4 or 16 address bytes; a
candidate list is a count (1, at most 16) then addresses.
"""

import ipaddress
import struct

REGISTER, REGISTERED, FORWARD, DELIVER, UNREACHABLE, CREDS_REQUEST, CREDS = range(1, 8)
OFFER, ANSWER, RELAYED = 0x11, 0x12, 0x13

NODE_ID_LEN = 32
MAX_PAYLOAD = 512
MAX_CANDIDATES = 16


class SignalParseError(ValueError):
    """A signalling message is malformed; the message says how."""


def encodeAddress(addr):
    host, port = addr
    ip = ipaddress.ip_address(host)
    return bytes((ip.version,)) + struct.pack("!H", port) + ip.packed


def decodeAddress(data, offset):
    """@return: C{((host, port), newOffset)}."""
    if offset + 3 > len(data):
        raise SignalParseError("truncated address")
    family = data[offset]
    size = {4: 4, 6: 16}.get(family)
    if size is None:
        raise SignalParseError(f"unknown address family {family}")
    end = offset + 3 + size
    if end > len(data):
        raise SignalParseError("truncated address")
    (port,) = struct.unpack_from("!H", data, offset + 1)
    host = str(ipaddress.ip_address(bytes(data[offset + 3 : end])))
    return (host, port), end


def encodeCandidates(candidates):
    candidates = list(candidates)[:MAX_CANDIDATES]
    return bytes((len(candidates),)) + b"".join(encodeAddress(c) for c in candidates)


def decodeCandidates(data, offset):
    if offset >= len(data):
        raise SignalParseError("missing candidate count")
    count = data[offset]
    if count > MAX_CANDIDATES:
        raise SignalParseError(f"{count} candidates is more than {MAX_CANDIDATES}")
    offset += 1
    out = []
    for _ in range(count):
        addr, offset = decodeAddress(data, offset)
        out.append(addr)
    return out, offset


def _done(data, offset, what):
    if offset != len(data):
        raise SignalParseError(f"{len(data) - offset} trailing bytes after {what}")


def parseRelayMessage(data):
    """
    @return: C{(kind, fields...)}:
        C{(REGISTER,)}, C{(REGISTERED, addr)}, C{(FORWARD, nodeId, payload)},
        C{(DELIVER, nodeId, addr, payload)}, C{(UNREACHABLE, nodeId)},
        C{(CREDS_REQUEST,)}, C{(CREDS, lifetime, username, password)}.
    @raise SignalParseError: anything malformed.
    """
    if not data:
        raise SignalParseError("empty signalling message")
    kind = data[0]
    if kind in (REGISTER, CREDS_REQUEST):
        _done(data, 1, "request")
        return (kind,)
    if kind == REGISTERED:
        addr, end = decodeAddress(data, 1)
        _done(data, end, "REGISTERED")
        return (kind, addr)
    if kind in (FORWARD, UNREACHABLE, DELIVER):
        if len(data) < 1 + NODE_ID_LEN:
            raise SignalParseError("truncated node id")
        nodeId = bytes(data[1 : 1 + NODE_ID_LEN])
        if kind == UNREACHABLE:
            _done(data, 1 + NODE_ID_LEN, "UNREACHABLE")
            return (kind, nodeId)
        offset = 1 + NODE_ID_LEN
        addr = None
        if kind == DELIVER:
            addr, offset = decodeAddress(data, offset)
        payload = bytes(data[offset:])
        if not payload or len(payload) > MAX_PAYLOAD:
            raise SignalParseError(f"payload of {len(payload)} bytes (1..{MAX_PAYLOAD} allowed)")
        return (kind, nodeId, payload) if kind == FORWARD else (kind, nodeId, addr, payload)
    if kind == CREDS:
        if len(data) < 6:
            raise SignalParseError("truncated CREDS")
        (lifetime,) = struct.unpack_from("!I", data, 1)
        offset = 5
        fields = []
        for _ in range(2):
            if offset >= len(data):
                raise SignalParseError("truncated CREDS")
            n = data[offset]
            if offset + 1 + n > len(data) or n == 0:
                raise SignalParseError("bad CREDS field length")
            try:
                fields.append(bytes(data[offset + 1 : offset + 1 + n]).decode("ascii"))
            except UnicodeDecodeError:
                raise SignalParseError("CREDS field is not ASCII") from None
            offset += 1 + n
        _done(data, offset, "CREDS")
        return (kind, lifetime, fields[0], fields[1])
    raise SignalParseError(f"unknown signalling message 0x{kind:02x}")


def encodeCreds(lifetime, username, password):
    u, p = username.encode("ascii"), password.encode("ascii")
    return bytes((CREDS,)) + struct.pack("!I", lifetime) + bytes((len(u),)) + u + bytes((len(p),)) + p


def parsePeerPayload(data):
    """
    @return: C{(OFFER, punchId, secret, candidates)},
        C{(ANSWER, punchId, candidates)} or C{(RELAYED, punchId, addr)}.
    @raise SignalParseError: anything malformed.
    """
    if len(data) < 9:
        raise SignalParseError("peer payload too short")
    kind, punchId = data[0], bytes(data[1:9])
    if kind == OFFER:
        if len(data) < 25:
            raise SignalParseError("truncated OFFER")
        secret = bytes(data[9:25])
        cands, end = decodeCandidates(data, 25)
        _done(data, end, "OFFER")
        return (kind, punchId, secret, cands)
    if kind == ANSWER:
        cands, end = decodeCandidates(data, 9)
        _done(data, end, "ANSWER")
        return (kind, punchId, cands)
    if kind == RELAYED:
        addr, end = decodeAddress(data, 9)
        _done(data, end, "RELAYED")
        return (kind, punchId, addr)
    raise SignalParseError(f"unknown peer payload 0x{kind:02x}")
