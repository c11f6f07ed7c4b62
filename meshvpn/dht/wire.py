"""The DHT's wire format: encode and strictly parse every message (doc/protocol.md, "DHT").

Every datagram starts with one byte 0x80|type so the node's UDP demultiplexer
routes it here.  The parser validates every field and raises L{WireError}
naming what is wrong; it never allocates more than the datagram it was given,
and the datagram itself is capped at L{MAX_DATAGRAM}.
"""

import socket
import struct

VERSION = 1
MAX_DATAGRAM = 1400  # stays under a common path MTU, so no IP fragmentation
HEADER_LEN = 43
MAX_CONTACTS = 20
MAX_RECORDS = 16

# message types: the low nibble of the first byte
PING, PONG, FIND_NODE, NODES, FIND_VALUE, VALUE, STORE, STORE_RESULT = range(8)
REQUESTS = {PING: PONG, FIND_NODE: NODES, FIND_VALUE: VALUE, STORE: STORE_RESULT}
RESPONSES = frozenset(REQUESTS.values())
NAMES = {
    PING: "PING",
    PONG: "PONG",
    FIND_NODE: "FIND_NODE",
    NODES: "NODES",
    FIND_VALUE: "FIND_VALUE",
    VALUE: "VALUE",
    STORE: "STORE",
    STORE_RESULT: "STORE_RESULT",
}

FLAG_CLIENT = 0x01  # the sender does not serve requests: never put it in a routing table
_KNOWN_FLAGS = FLAG_CLIENT

# STORE_RESULT codes
STORED = 0
BAD_RECORD = 1  # signature, key or field check failed
STALE = 2  # a record with an equal or higher sequence number is stored
EXPIRED = 3  # expired, or expiry too far in the future
FULL = 4  # storage caps reached
RESULT_CODES = {STORED: "stored", BAD_RECORD: "bad-record", STALE: "stale", EXPIRED: "expired", FULL: "full"}

_HEADER = struct.Struct("!BBB8s32s")
_U16 = struct.Struct("!H")
_PORT = struct.Struct("!H")


class WireError(ValueError):
    """A datagram is not a well-formed DHT message; the text says why (no payload)."""


class Message:
    """
    One decoded DHT message.  C{payload} depends on C{kind}:
      PING: None;  PONG: the requester's address as seen by the responder;
      FIND_NODE / FIND_VALUE: the 32-byte target;  NODES: list of contacts;
      VALUE: C{(records, contacts)} where records is a list of raw record bytes;
      STORE: raw record bytes;  STORE_RESULT: a result code.
    A contact is C{(nodeId, (host, port))}.
    """

    __slots__ = ("kind", "txid", "senderKey", "flags", "payload")

    def __init__(self, kind, txid, senderKey, flags, payload):
        self.kind = kind
        self.txid = txid
        self.senderKey = senderKey
        self.flags = flags
        self.payload = payload

    @property
    def clientMode(self):
        return bool(self.flags & FLAG_CLIENT)

    def __repr__(self):
        return f"<Message {NAMES.get(self.kind, self.kind)} tx={self.txid.hex()}>"


# ---- addresses and contacts


def encodeAddress(addr):
    host, port = addr
    if ":" in host:
        return b"\x06" + socket.inet_pton(socket.AF_INET6, host) + _PORT.pack(port)
    return b"\x04" + socket.inet_pton(socket.AF_INET, host) + _PORT.pack(port)


def decodeAddress(data, offset):
    """@return: C{((host, port), newOffset)}."""
    if offset >= len(data):
        raise WireError("truncated address")
    family = data[offset]
    if family == 4:
        end = offset + 7
        if end > len(data):
            raise WireError("truncated IPv4 address")
        host = socket.inet_ntop(socket.AF_INET, data[offset + 1 : offset + 5])
    elif family == 6:
        end = offset + 19
        if end > len(data):
            raise WireError("truncated IPv6 address")
        host = socket.inet_ntop(socket.AF_INET6, data[offset + 1 : offset + 17])
    else:
        raise WireError(f"unknown address family {family}")
    (port,) = _PORT.unpack_from(data, end - 2)
    if port == 0:
        raise WireError("port 0 in address")
    return (host, port), end


def encodeContacts(contacts, room=MAX_DATAGRAM):
    """Encode as many contacts as fit in C{room} bytes (count byte included)."""
    parts = []
    used = 1
    for nodeId, addr in contacts[:MAX_CONTACTS]:
        enc = nodeId + encodeAddress(addr)
        if used + len(enc) > room:
            break
        parts.append(enc)
        used += len(enc)
    return bytes([len(parts)]) + b"".join(parts)


def decodeContacts(data, offset):
    if offset >= len(data):
        raise WireError("missing contact count")
    count = data[offset]
    if count > MAX_CONTACTS:
        raise WireError(f"{count} contacts, at most {MAX_CONTACTS} allowed")
    offset += 1
    contacts = []
    for _ in range(count):
        nodeId = data[offset : offset + 32]
        if len(nodeId) != 32:
            raise WireError("truncated contact node id")
        addr, offset = decodeAddress(data, offset + 32)
        contacts.append((nodeId, addr))
    return contacts, offset


# ---- whole messages


def encodeHeader(kind, txid, senderKey, flags=0):
    return _HEADER.pack(0x80 | kind, VERSION, flags, txid, senderKey)


def encode(kind, txid, senderKey, payload=None, flags=0):
    """
    @return: the datagram for one message.
    @raise WireError: the result would exceed L{MAX_DATAGRAM} (a record too big).
    """
    head = encodeHeader(kind, txid, senderKey, flags)
    if kind == PING:
        body = b""
    elif kind == PONG:
        body = encodeAddress(payload)
    elif kind in (FIND_NODE, FIND_VALUE):
        if len(payload) != 32:
            raise WireError("target must be 32 bytes")
        body = payload
    elif kind == NODES:
        body = encodeContacts(payload, MAX_DATAGRAM - HEADER_LEN)
    elif kind == VALUE:
        records, contacts = payload
        parts = []
        used = HEADER_LEN + 1
        for raw in records[:MAX_RECORDS]:
            if used + 2 + len(raw) > MAX_DATAGRAM:
                continue
            parts.append(_U16.pack(len(raw)) + raw)
            used += 2 + len(raw)
        body = bytes([len(parts)]) + b"".join(parts) + encodeContacts(contacts, MAX_DATAGRAM - used)
    elif kind == STORE:
        body = payload
    elif kind == STORE_RESULT:
        body = bytes([payload])
    else:
        raise WireError(f"unknown message type {kind}")
    data = head + body
    if len(data) > MAX_DATAGRAM:
        raise WireError(f"message of {len(data)} bytes exceeds {MAX_DATAGRAM}")
    return data


def decode(data):
    """
    Parse one datagram.

    @return: a L{Message}.
    @raise WireError: anything malformed, oversized, or with trailing bytes.
    """
    if len(data) > MAX_DATAGRAM:
        raise WireError(f"datagram of {len(data)} bytes exceeds {MAX_DATAGRAM}")
    if len(data) < HEADER_LEN:
        raise WireError("shorter than the DHT header")
    first, version, flags, txid, senderKey = _HEADER.unpack_from(data)
    if first & 0xF0 != 0x80:
        raise WireError("first byte is not a DHT message")
    kind = first & 0x0F
    if kind > STORE_RESULT:
        raise WireError(f"unknown message type {kind}")
    if version != VERSION:
        raise WireError(f"unsupported version {version}")
    if flags & ~_KNOWN_FLAGS:
        raise WireError("unknown flag bits set")
    off = HEADER_LEN
    n = len(data)
    if kind == PING:
        payload = None
    elif kind == PONG:
        payload, off = decodeAddress(data, off)
    elif kind in (FIND_NODE, FIND_VALUE):
        payload = data[off : off + 32]
        if len(payload) != 32:
            raise WireError("truncated target")
        off += 32
    elif kind == NODES:
        payload, off = decodeContacts(data, off)
    elif kind == VALUE:
        if off >= n:
            raise WireError("missing record count")
        count = data[off]
        off += 1
        if count > MAX_RECORDS:
            raise WireError(f"{count} records, at most {MAX_RECORDS} allowed")
        records = []
        for _ in range(count):
            if off + 2 > n:
                raise WireError("truncated record length")
            (length,) = _U16.unpack_from(data, off)
            off += 2
            if length == 0 or off + length > n:
                raise WireError("bad record length")
            records.append(data[off : off + length])
            off += length
        contacts, off = decodeContacts(data, off)
        payload = (records, contacts)
    elif kind == STORE:
        payload = data[off:]
        if not payload:
            raise WireError("STORE without a record")
        off = n
    else:  # STORE_RESULT
        if off >= n:
            raise WireError("missing result code")
        payload = data[off]
        if payload not in RESULT_CODES:
            raise WireError(f"unknown result code {payload}")
        off += 1
    if off != n:
        raise WireError(f"{n - off} trailing bytes")
    return Message(kind, txid, senderKey, flags, payload)
