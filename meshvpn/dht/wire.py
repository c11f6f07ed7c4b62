"""The DHT's wire format: encode and strictly parse every message (doc/protocol.md, "DHT").

Every datagram starts with one byte 0x80|type so the node's UDP demultiplexer
routes it here.  The parser validates every field and raises L{WireError}
naming what is wrong; it never allocates more than the datagram it was given,
and the datagram itself is capped at L{MAX_DATAGRAM}.

Version 2 carries what the attacks of doc/security.md ("DHT") need: the
sender's proof of work, an address token, padding (so an answer to an
address that has not proved itself is never bigger than the question), and
an optional Ed25519 signature over a whole answer (the proof that the key in
the header answers at that address).  Contacts carry keys, not ids, so their
work is checked before anyone is asked.
"""

import hashlib
import socket
import struct
from collections import namedtuple

VERSION = 2
MAX_DATAGRAM = 1400  # stays under a common path MTU, so no IP fragmentation
HEADER_LEN = 59
SIG_LEN = 64
TOKEN_LEN = 8
WORK_LEN = 8
MAX_CONTACTS = 20
MAX_RECORDS = 16
MAX_SALT = 64
CONTACT_V4_LEN = 32 + WORK_LEN + 7

# message types: the low nibble of the first byte
PING, PONG, FIND_NODE, NODES, FIND_VALUE, VALUE, STORE, STORE_RESULT, SAMPLE = range(9)
REQUESTS = {PING: PONG, FIND_NODE: NODES, FIND_VALUE: VALUE, STORE: STORE_RESULT, SAMPLE: VALUE}
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
    SAMPLE: "SAMPLE",
}
PADDED = frozenset((FIND_NODE, FIND_VALUE, SAMPLE))  # may carry zero padding after their fields

FLAG_CLIENT = 0x01  # the sender does not serve requests: never put it in a routing table
FLAG_PROVE = 0x02  # request: sign your answer (it proves your key answers at this address)
FLAG_SIGNED = 0x04  # response: the last 64 bytes are the responder's signature
FLAG_TRUNCATED = 0x08  # response: cut to the request's size (no valid token): ask again with the token
_KNOWN_FLAGS = FLAG_CLIENT | FLAG_PROVE | FLAG_SIGNED | FLAG_TRUNCATED

# STORE_RESULT codes
STORED = 0
BAD_RECORD = 1  # signature, key or field check failed
STALE = 2  # a record with an equal or higher sequence number is stored
EXPIRED = 3  # expired, or expiry too far in the future
FULL = 4  # storage caps reached
NEED_TOKEN = 5  # no valid address token: repeat the STORE with the token in this answer's header
RESULT_CODES = {
    STORED: "stored", BAD_RECORD: "bad-record", STALE: "stale", EXPIRED: "expired", FULL: "full",
    NEED_TOKEN: "need-token",
}

# A PING is padded to the size of the largest PONG (IPv6 address, signature),
# so even a signed PONG to a spoofed source is no bigger than the PING.
PING_PADDING = 19 + SIG_LEN
PING_LEN = HEADER_LEN + PING_PADDING

PROOF_DOMAIN = b"meshvpn-dht-answer-v2\x00"

_HEADER = struct.Struct("!BBB8s32s8s8s")
_U16 = struct.Struct("!H")
_PORT = struct.Struct("!H")
_ZERO_WORK = b"\x00" * WORK_LEN
_ZERO_TOKEN = b"\x00" * TOKEN_LEN


class WireError(ValueError):
    """A datagram is not a well-formed DHT message; the text says why (no payload)."""


class Peer(namedtuple("Peer", "nodeId address key work")):
    """A contact as it travels: its key and proof of work (its id is the key's SHA-256) and UDP address."""

    __slots__ = ()

    @classmethod
    def of(cls, key, work, address):
        return cls(hashlib.sha256(key).digest(), address, key, work)


class Message:
    """
    One decoded DHT message.  C{payload} depends on C{kind}:
      PING: None;  PONG: the requester's address as seen by the responder;
      FIND_NODE / FIND_VALUE: the 32-byte target;  NODES: list of L{Peer};
      VALUE: C{(records, peers)} where records is a list of raw record bytes;
      STORE: raw record bytes;  STORE_RESULT: a result code;
      SAMPLE: C{(target, salt)}.
    C{signature} is the trailing signature (C{None} if unsigned) and
    C{signedPart} the bytes it covers (after L{PROOF_DOMAIN} and the requester's key).
    """

    __slots__ = ("kind", "txid", "senderKey", "flags", "work", "token", "payload", "signature", "signedPart", "size")

    def __init__(self, kind, txid, senderKey, flags, payload, work=_ZERO_WORK, token=_ZERO_TOKEN):
        self.kind = kind
        self.txid = txid
        self.senderKey = senderKey
        self.flags = flags
        self.payload = payload
        self.work = work
        self.token = token
        self.signature = None
        self.signedPart = None
        self.size = 0

    @property
    def clientMode(self):
        return bool(self.flags & FLAG_CLIENT)

    @property
    def truncated(self):
        return bool(self.flags & FLAG_TRUNCATED)

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


_seenPeers = {}  # encoded contact -> Peer: the same contacts come back in answer after answer
_encodedPeers = {}  # Peer -> its encoding, likewise


def _cacheLimit(cache):
    if len(cache) >= 65536:
        cache.clear()


def encodeContacts(contacts, room=MAX_DATAGRAM):
    """
    Encode as many contacts (L{Peer}s) as fit in C{room} bytes (count byte included).

    @return: C{(bytes, how many were encoded)}.
    """
    parts = []
    used = 1
    for c in contacts[:MAX_CONTACTS]:
        enc = _encodedPeers.get(c)
        if enc is None:
            _cacheLimit(_encodedPeers)
            enc = _encodedPeers[c] = c.key + c.work + encodeAddress(c.address)
        if used + len(enc) > room:
            break
        parts.append(enc)
        used += len(enc)
    return bytes([len(parts)]) + b"".join(parts), len(parts)


def decodeContacts(data, offset):
    n = len(data)
    if offset >= n:
        raise WireError("missing contact count")
    count = data[offset]
    if count > MAX_CONTACTS:
        raise WireError(f"{count} contacts, at most {MAX_CONTACTS} allowed")
    offset += 1
    contacts = []
    head = 32 + WORK_LEN
    for _ in range(count):
        if offset + head >= n:
            raise WireError("truncated contact")
        end = offset + head + (7 if data[offset + head] == 4 else 19)
        chunk = bytes(data[offset:end])
        peer = _seenPeers.get(chunk)
        if peer is None:
            addr, end = decodeAddress(data, offset + head)
            _cacheLimit(_seenPeers)
            peer = _seenPeers[bytes(data[offset:end])] = Peer.of(data[offset : offset + 32], data[offset + 32 : offset + head], addr)
        contacts.append(peer)
        offset = end
    return contacts, offset


# ---- whole messages


def encodeHeader(kind, txid, senderKey, flags=0, work=_ZERO_WORK, token=_ZERO_TOKEN):
    return _HEADER.pack(0x80 | kind, VERSION, flags, txid, senderKey, work, token)


def _body(kind, payload, room):
    """@return: C{(body, truncated)} for C{kind}, keeping within C{room} bytes where the type allows."""
    if kind == PING:
        return b"\x00" * PING_PADDING, False
    if kind == PONG:
        return encodeAddress(payload), False
    if kind in (FIND_NODE, FIND_VALUE):
        if len(payload) != 32:
            raise WireError("target must be 32 bytes")
        return payload, False
    if kind == SAMPLE:
        target, salt = payload
        if len(target) != 32 or len(salt) > MAX_SALT:
            raise WireError("SAMPLE needs a 32-byte target and a salt of at most 64 bytes")
        return target + bytes([len(salt)]) + salt, False
    if kind == NODES:
        body, n = encodeContacts(payload, room)
        return body, n < min(len(payload), MAX_CONTACTS)
    if kind == VALUE:
        records, contacts = payload
        parts = []
        used = 1
        dropped = False
        for raw in records[:MAX_RECORDS]:
            if used + 2 + len(raw) > room - 1:  # keep a byte for the contact count
                dropped = True
                continue
            parts.append(_U16.pack(len(raw)) + raw)
            used += 2 + len(raw)
        cbody, n = encodeContacts(contacts, room - used)
        return bytes([len(parts)]) + b"".join(parts) + cbody, dropped or n < min(len(contacts), MAX_CONTACTS)
    if kind == STORE:
        return payload, False
    if kind == STORE_RESULT:
        return bytes([payload]), False
    raise WireError(f"unknown message type {kind}")


def encode(kind, txid, senderKey, payload=None, flags=0, work=_ZERO_WORK, token=_ZERO_TOKEN, room=MAX_DATAGRAM,
           padTo=0, sign=None):
    """
    @param room: the most bytes the datagram may take (an answer to an
        address without a valid token gets the request's size); contact and
        record lists are cut to fit and the answer is flagged TRUNCATED.
    @param padTo: pad a FIND_NODE / FIND_VALUE / SAMPLE with zeros to this size.
    @param sign: C{callable(unsignedDatagram) -> 64-byte signature}; the
        datagram is then flagged SIGNED and the signature appended (if room allows).
    @return: the datagram for one message.
    @raise WireError: the result would exceed L{MAX_DATAGRAM} (a record too big).
    """
    room = min(room, MAX_DATAGRAM)
    signing = sign is not None
    bodyRoom = room - HEADER_LEN - (SIG_LEN if signing else 0)
    body, truncated = _body(kind, payload, bodyRoom)
    if signing and HEADER_LEN + len(body) + SIG_LEN > room:
        signing = False  # no room to prove anything: answer unsigned
    flags &= ~(FLAG_SIGNED | FLAG_TRUNCATED)
    if truncated:
        flags |= FLAG_TRUNCATED
    if signing:
        flags |= FLAG_SIGNED
    data = encodeHeader(kind, txid, senderKey, flags, work, token) + body
    if padTo and kind in PADDED and len(data) < padTo:
        data += b"\x00" * (min(padTo, MAX_DATAGRAM) - len(data))
    if signing:
        data += sign(data)
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
    first, version, flags, txid, senderKey, work, token = _HEADER.unpack_from(data)
    if first & 0xF0 != 0x80:
        raise WireError("first byte is not a DHT message")
    kind = first & 0x0F
    if kind > SAMPLE:
        raise WireError(f"unknown message type {kind}")
    if version != VERSION:
        raise WireError(f"unsupported version {version}")
    if flags & ~_KNOWN_FLAGS:
        raise WireError("unknown flag bits set")
    isResponse = kind in RESPONSES
    if flags & (FLAG_SIGNED | FLAG_TRUNCATED) and not isResponse:
        raise WireError("SIGNED or TRUNCATED on a request")
    if flags & FLAG_PROVE and isResponse:
        raise WireError("PROVE on a response")
    n = len(data)
    signature = None
    if flags & FLAG_SIGNED:
        if n < HEADER_LEN + SIG_LEN:
            raise WireError("truncated signature")
        n -= SIG_LEN
        signature = data[n:]
    off = HEADER_LEN
    if kind == PING:
        if n != PING_LEN or data[off:n].count(0) != n - off:
            raise WireError(f"PING must be {PING_LEN} bytes of which the last {PING_PADDING} are zero")
        payload = None
        off = n
    elif kind == PONG:
        payload, off = decodeAddress(data, off)
    elif kind in (FIND_NODE, FIND_VALUE):
        payload = data[off : off + 32]
        if len(payload) != 32:
            raise WireError("truncated target")
        off += 32
    elif kind == SAMPLE:
        if off + 33 > n:
            raise WireError("truncated SAMPLE")
        target = data[off : off + 32]
        saltLen = data[off + 32]
        if saltLen > MAX_SALT or off + 33 + saltLen > n:
            raise WireError("bad SAMPLE salt length")
        payload = (target, data[off + 33 : off + 33 + saltLen])
        off += 33 + saltLen
    elif kind == NODES:
        payload, off = decodeContacts(data[:n], off)
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
        contacts, off = decodeContacts(data[:n], off)
        payload = (records, contacts)
    elif kind == STORE:
        payload = data[off:n]
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
        if kind not in PADDED or data[off:n].count(0) != n - off:
            raise WireError(f"{n - off} trailing bytes")
    msg = Message(kind, txid, senderKey, flags, payload, work, token)
    msg.size = len(data)
    if signature is not None:
        msg.signature = signature
        msg.signedPart = data[:n]
    return msg


def proofInput(requesterKey, signedPart):
    """The bytes an answer's signature covers: domain, the requester's key, the answer without signature."""
    return PROOF_DOMAIN + requesterKey + signedPart
