"""STUN messages (RFC 8489, RFC 5389 compatible; RFC 5780 and RFC 8656 attributes).

One codec serves the STUN client, the STUN server, NAT classification and the
TURN relay and client, so it knows nothing about what a message is for: a
L{StunMessage} is a method, a class, a transaction id and an ordered list of
C{(type, value)} attributes with raw C{bytes} values.  Typed helpers turn the
values that need arithmetic (addresses, error codes, ...) into Python values.

Decoding is strict and bounded: a datagram is either a well-formed STUN
message or L{StunParseError} says what is wrong with it.  Nothing is
allocated beyond the datagram itself.  Attributes after MESSAGE-INTEGRITY
(except MESSAGE-INTEGRITY-SHA256 and FINGERPRINT) are dropped, as RFC 8489
section 14.5 requires.
"""

import hashlib
import hmac
import ipaddress
import os
import struct
import unicodedata
import zlib

from meshvpn.errors import MeshVPNError

MAGIC_COOKIE = 0x2112A442
MAGIC_COOKIE_BYTES = struct.pack("!I", MAGIC_COOKIE)
HEADER_LENGTH = 20
TRANSACTION_ID_LENGTH = 12
FINGERPRINT_XOR = 0x5354554E
MAX_MESSAGE_LENGTH = HEADER_LENGTH + 0xFFFC  # the length field is 16 bits, 4-aligned

# ---- classes (the two class bits, spread over the message type)
REQUEST = 0b00
INDICATION = 0b01
SUCCESS = 0b10
ERROR = 0b11
CLASS_NAMES = {REQUEST: "request", INDICATION: "indication", SUCCESS: "success", ERROR: "error"}

# ---- methods
BINDING = 0x001
ALLOCATE = 0x003
REFRESH = 0x004
SEND = 0x006
DATA = 0x007
CREATE_PERMISSION = 0x008
CHANNEL_BIND = 0x009

# ---- attributes: comprehension-required (< 0x8000)
MAPPED_ADDRESS = 0x0001
CHANGE_REQUEST = 0x0003  # RFC 5780
USERNAME = 0x0006
MESSAGE_INTEGRITY = 0x0008
ERROR_CODE = 0x0009
UNKNOWN_ATTRIBUTES = 0x000A
CHANNEL_NUMBER = 0x000C  # RFC 8656
LIFETIME = 0x000D
XOR_PEER_ADDRESS = 0x0012
DATA_ATTR = 0x0013
REALM = 0x0014
NONCE = 0x0015
XOR_RELAYED_ADDRESS = 0x0016
REQUESTED_ADDRESS_FAMILY = 0x0017
EVEN_PORT = 0x0018
REQUESTED_TRANSPORT = 0x0019
DONT_FRAGMENT = 0x001A
MESSAGE_INTEGRITY_SHA256 = 0x001C
PASSWORD_ALGORITHM = 0x001D
USERHASH = 0x001E
XOR_MAPPED_ADDRESS = 0x0020
RESERVATION_TOKEN = 0x0022
PRIORITY = 0x0024
USE_CANDIDATE = 0x0025
PADDING = 0x0026  # RFC 5780
RESPONSE_PORT = 0x0027  # RFC 5780
# ---- comprehension-optional (>= 0x8000)
ADDITIONAL_ADDRESS_FAMILY = 0x8000
PASSWORD_ALGORITHMS = 0x8002
ALTERNATE_DOMAIN = 0x8003
SOFTWARE = 0x8022
ALTERNATE_SERVER = 0x8023
CACHE_TIMEOUT = 0x8027  # RFC 5780
FINGERPRINT = 0x8028
ICE_CONTROLLED = 0x8029
ICE_CONTROLLING = 0x802A
RESPONSE_ORIGIN = 0x802B  # RFC 5780
OTHER_ADDRESS = 0x802C  # RFC 5780

# CHANGE-REQUEST flags (RFC 5780 section 7.2)
CHANGE_IP = 0x04
CHANGE_PORT = 0x02

FAMILY_IPV4 = 0x01
FAMILY_IPV6 = 0x02

# Password algorithms (RFC 8489 section 18.5)
ALGORITHM_MD5 = 0x0001
ALGORITHM_SHA256 = 0x0002

_MI_LENGTH = 20
_MI_SHA256_LENGTHS = range(16, 33, 4)  # RFC 8489 14.6: 16..32, multiple of 4


class StunParseError(MeshVPNError):
    """A datagram is not a well-formed STUN message; the message says why."""


def isStun(data):
    """
    Quick check for the UDP multiplexer: first byte 0..3 (RFC 7983; true of
    every method up to 0xff), magic cookie,
    4-aligned length matching the datagram.  No allocation.
    """
    return (
        len(data) >= HEADER_LENGTH
        and data[0] < 0x04
        and data[4:8] == MAGIC_COOKIE_BYTES
        and (data[2] << 8 | data[3]) == len(data) - HEADER_LENGTH
        and data[3] & 0x03 == 0
    )


def newTransactionId():
    """@return: 12 random bytes (RFC 8489 6: uniformly random, from a CSPRNG)."""
    return os.urandom(TRANSACTION_ID_LENGTH)


def messageType(method, cls):
    """Pack a 12-bit method and 2-bit class into the 14-bit message type."""
    if not 0 <= method <= 0xFFF:
        raise ValueError(f"STUN method {method:#x} is outside 0..0xfff")
    return (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((cls & 0b01) << 4)
        | ((cls & 0b10) << 7)
    )


def splitMessageType(mtype):
    """@return: C{(method, cls)} from a 14-bit message type."""
    method = (mtype & 0x000F) | ((mtype & 0x00E0) >> 1) | ((mtype & 0x3E00) >> 2)
    cls = ((mtype >> 4) & 0b01) | ((mtype >> 7) & 0b10)
    return method, cls


def _pad4(n):
    return (4 - n % 4) % 4


class StunMessage:
    """
    One STUN message.

    @ivar method: 12-bit method, e.g. L{BINDING}.
    @ivar cls: L{REQUEST}, L{INDICATION}, L{SUCCESS} or L{ERROR}.
    @ivar transactionId: 12 bytes.
    @ivar attributes: list of C{(type, value)} in wire order, without
        MESSAGE-INTEGRITY(-SHA256) and FINGERPRINT (those are computed by
        L{encode} and checked with L{checkIntegrity}).
    @ivar raw: the datagram this was decoded from (C{None} if built locally).
    """

    __slots__ = ("method", "cls", "transactionId", "attributes", "raw", "_integrity", "_integritySha256", "hasFingerprint")

    def __init__(self, method, cls, transactionId=None, attributes=None):
        self.method = method
        self.cls = cls
        self.transactionId = newTransactionId() if transactionId is None else transactionId
        if len(self.transactionId) != TRANSACTION_ID_LENGTH:
            raise ValueError("a STUN transaction id is 12 bytes")
        self.attributes = list(attributes or [])
        self.raw = None
        # (offset of the attribute header, value) for checking integrity later
        self._integrity = None
        self._integritySha256 = None
        self.hasFingerprint = False

    def __repr__(self):
        names = ", ".join(f"{t:#06x}" for t, _ in self.attributes)
        return (
            f"<StunMessage method={self.method:#05x} {CLASS_NAMES[self.cls]} "
            f"txid={self.transactionId.hex()} attrs=[{names}]>"
        )

    # ---- building

    @property
    def messageType(self):
        return messageType(self.method, self.cls)

    def add(self, attrType, value):
        """Append attribute C{attrType} with raw C{value} bytes.  @return: self."""
        if not 0 <= attrType <= 0xFFFF:
            raise ValueError(f"attribute type {attrType:#x} is outside 0..0xffff")
        if len(value) > 0xFFFF:
            raise ValueError("an attribute value is at most 65535 bytes")
        self.attributes.append((attrType, bytes(value)))
        return self

    def response(self, cls=SUCCESS):
        """@return: an empty response (same method and transaction id) to this request."""
        return StunMessage(self.method, cls, self.transactionId)

    # ---- reading

    def get(self, attrType, default=None):
        """@return: the value of the first attribute of C{attrType}, else C{default}."""
        for t, v in self.attributes:
            if t == attrType:
                return v
        return default

    def getAll(self, attrType):
        return [v for t, v in self.attributes if t == attrType]

    def has(self, attrType):
        return any(t == attrType for t, _ in self.attributes)

    def unknownRequired(self, known):
        """
        @param known: a container of attribute types this agent understands.
        @return: the comprehension-required types (< 0x8000) present but not
            in C{known}, in order, without duplicates (for a 420 response).
        """
        seen = []
        for t, _ in self.attributes:
            if t < 0x8000 and t not in known and t not in seen:
                seen.append(t)
        return seen

    # typed accessors over the raw values

    def getAddress(self, attrType):
        """@return: C{(host, port)} of a MAPPED-ADDRESS-style attribute, or None."""
        v = self.get(attrType)
        return None if v is None else decodeAddress(v)

    def getXorAddress(self, attrType=XOR_MAPPED_ADDRESS):
        """@return: C{(host, port)} of an XOR-*-ADDRESS attribute, or None."""
        v = self.get(attrType)
        return None if v is None else decodeXorAddress(v, self.transactionId)

    def addAddress(self, attrType, addr):
        return self.add(attrType, encodeAddress(addr))

    def addXorAddress(self, attrType, addr):
        return self.add(attrType, encodeXorAddress(addr, self.transactionId))

    def errorCode(self):
        """@return: C{(code, reason)} from ERROR-CODE, or None."""
        v = self.get(ERROR_CODE)
        return None if v is None else decodeErrorCode(v)

    def addErrorCode(self, code, reason):
        return self.add(ERROR_CODE, encodeErrorCode(code, reason))

    def software(self):
        v = self.get(SOFTWARE)
        return None if v is None else v.decode("utf-8", "replace")

    # ---- wire format

    def encode(self, integrityKey=None, integritySha256Key=None, fingerprint=False, padByte=b"\x00"):
        """
        @param integrityKey: key for MESSAGE-INTEGRITY (HMAC-SHA1), or None.
        @param integritySha256Key: key for MESSAGE-INTEGRITY-SHA256, or None.
            With both, MESSAGE-INTEGRITY comes first (RFC 8489 14.6).
        @param fingerprint: append FINGERPRINT.
        @param padByte: the byte used to pad attribute values to 4 bytes
            (receivers ignore it; RFC 5769's vectors use spaces).
        @return: the datagram.
        """
        parts = []
        length = 0
        for t, v in self.attributes:
            pad = _pad4(len(v))
            parts.append(struct.pack("!HH", t, len(v)))
            parts.append(v)
            if pad:
                parts.append(padByte * pad)
            length += 4 + len(v) + pad
        body = b"".join(parts)
        mtype = self.messageType
        if length + HEADER_LENGTH + 24 + 36 + 8 > MAX_MESSAGE_LENGTH:
            raise ValueError("STUN message too long")
        if integrityKey is not None:
            length += 4 + _MI_LENGTH
            header = struct.pack("!HHI", mtype, length, MAGIC_COOKIE) + self.transactionId
            mac = hmac.digest(integrityKey, header + body, "sha1")
            body += struct.pack("!HH", MESSAGE_INTEGRITY, _MI_LENGTH) + mac
        if integritySha256Key is not None:
            length += 4 + 32
            header = struct.pack("!HHI", mtype, length, MAGIC_COOKIE) + self.transactionId
            mac = hmac.digest(integritySha256Key, header + body, "sha256")
            body += struct.pack("!HH", MESSAGE_INTEGRITY_SHA256, 32) + mac
        if fingerprint:
            length += 8
            header = struct.pack("!HHI", mtype, length, MAGIC_COOKIE) + self.transactionId
            crc = zlib.crc32(header + body) ^ FINGERPRINT_XOR
            body += struct.pack("!HHI", FINGERPRINT, 4, crc)
        return struct.pack("!HHI", mtype, length, MAGIC_COOKIE) + self.transactionId + body

    @classmethod
    def decode(cls, data):
        """
        Parse one datagram.

        @raise StunParseError: not a well-formed STUN message (bad header,
            length, attribute framing, misplaced or wrong FINGERPRINT,
            misplaced or malformed MESSAGE-INTEGRITY).  Integrity itself is
            checked by L{checkIntegrity}, which needs the key.
        """
        data = bytes(data)
        n = len(data)
        if n < HEADER_LENGTH:
            raise StunParseError(f"{n} bytes is shorter than a STUN header")
        mtype, length, cookie = struct.unpack_from("!HHI", data)
        if mtype & 0xC000:
            raise StunParseError("the top two bits of a STUN message must be zero")
        if cookie != MAGIC_COOKIE:
            raise StunParseError("wrong magic cookie (not an RFC 5389/8489 STUN message)")
        if length % 4:
            raise StunParseError(f"message length {length} is not a multiple of 4")
        if length != n - HEADER_LENGTH:
            raise StunParseError(f"message length {length} does not match the {n - HEADER_LENGTH} bytes after the header")
        method, klass = splitMessageType(mtype)
        msg = cls(method, klass, data[8:20])
        msg.raw = data
        pos = HEADER_LENGTH
        # After MESSAGE-INTEGRITY only MESSAGE-INTEGRITY-SHA256 and
        # FINGERPRINT count; after MESSAGE-INTEGRITY-SHA256 only FINGERPRINT.
        ignoring = False
        while pos < n:
            if n - pos < 4:
                raise StunParseError(f"truncated attribute header at offset {pos}")
            t, vlen = struct.unpack_from("!HH", data, pos)
            end = pos + 4 + vlen
            if end > n:
                raise StunParseError(f"attribute {t:#06x} at offset {pos} runs past the end of the message")
            value = data[pos + 4 : end]
            padded = end + _pad4(vlen)
            if padded > n:
                raise StunParseError(f"attribute {t:#06x} at offset {pos} is missing its padding")
            if t == FINGERPRINT:
                if vlen != 4:
                    raise StunParseError("FINGERPRINT must be 4 bytes")
                if padded != n:
                    raise StunParseError("FINGERPRINT must be the last attribute")
                expected = zlib.crc32(data[:pos]) ^ FINGERPRINT_XOR
                if struct.unpack("!I", value)[0] != expected:
                    raise StunParseError("FINGERPRINT does not match")
                msg.hasFingerprint = True
            elif t == MESSAGE_INTEGRITY:
                if vlen != _MI_LENGTH:
                    raise StunParseError("MESSAGE-INTEGRITY must be 20 bytes")
                if msg._integrity is not None or msg._integritySha256 is not None:
                    ignoring = True
                else:
                    msg._integrity = (pos, value)
                    ignoring = True
            elif t == MESSAGE_INTEGRITY_SHA256:
                if vlen not in _MI_SHA256_LENGTHS:
                    raise StunParseError("MESSAGE-INTEGRITY-SHA256 must be 16 to 32 bytes, a multiple of 4")
                if msg._integritySha256 is None:
                    msg._integritySha256 = (pos, value)
                ignoring = True
            elif not ignoring:
                msg.attributes.append((t, value))
            pos = padded
        return msg

    # ---- integrity (needs the decoded datagram)

    @property
    def hasIntegrity(self):
        return self._integrity is not None

    @property
    def hasIntegritySha256(self):
        return self._integritySha256 is not None

    def _check(self, found, key, digest):
        if found is None or self.raw is None:
            return False
        pos, mac = found
        # The length field covers everything up to and including this attribute.
        covered = pos + 4 + len(mac) - HEADER_LENGTH
        header = self.raw[:2] + struct.pack("!H", covered) + self.raw[4:20]
        expected = hmac.digest(key, header + self.raw[HEADER_LENGTH:pos], digest)
        return hmac.compare_digest(expected[: len(mac)], mac)

    def checkIntegrity(self, key):
        """@return: True if MESSAGE-INTEGRITY is present and right for C{key}."""
        return self._check(self._integrity, key, "sha1")

    def checkIntegritySha256(self, key):
        """@return: True if MESSAGE-INTEGRITY-SHA256 is present and right for C{key}."""
        return self._check(self._integritySha256, key, "sha256")


# ---- credentials (RFC 8489 section 9)


def saslprep(text):
    """
    The parts of SASLprep (RFC 4013) / OpaqueString (RFC 8265) that change
    ordinary passwords: map non-ASCII spaces to space, drop characters
    mapped to nothing, NFKC-normalise.  Prohibited characters are refused.
    """
    out = []
    for ch in text:
        o = ord(ch)
        if ch in _MAPPED_TO_NOTHING:
            continue
        if ch != " " and unicodedata.category(ch) == "Zs":
            out.append(" ")
        elif unicodedata.category(ch) in ("Cc", "Cs", "Co") or 0xFFFE <= (o & 0xFFFF):
            raise ValueError("password contains a prohibited character")
        else:
            out.append(ch)
    return unicodedata.normalize("NFKC", "".join(out))


# RFC 3454 table B.1: commonly mapped to nothing
_MAPPED_TO_NOTHING = frozenset(
    "\u00ad\u034f\u1806\u180b\u180c\u180d\u200b\u200c\u200d\u2060\ufe00\ufe01\ufe02\ufe03"
    "\ufe04\ufe05\ufe06\ufe07\ufe08\ufe09\ufe0a\ufe0b\ufe0c\ufe0d\ufe0e\ufe0f\ufeff"
)


def shortTermKey(password):
    """RFC 8489 9.1.1: the key is the OpaqueString-prepared password."""
    return saslprep(password).encode("utf-8")


def longTermKey(username, realm, password, algorithm=ALGORITHM_MD5):
    """
    RFC 8489 9.2.2: MD5 (or SHA-256) of C{username ":" realm ":" password}.

    @param username: C{str} or C{bytes} (as sent in USERNAME).
    @param realm: C{str} or C{bytes}.
    @param password: C{str}, SASLprep'd here.
    """
    u = username.encode("utf-8") if isinstance(username, str) else username
    r = realm.encode("utf-8") if isinstance(realm, str) else realm
    material = u + b":" + r + b":" + saslprep(password).encode("utf-8")
    if algorithm == ALGORITHM_MD5:
        return hashlib.md5(material).digest()
    if algorithm == ALGORITHM_SHA256:
        return hashlib.sha256(material).digest()
    raise ValueError(f"unknown password algorithm {algorithm:#x}")


# ---- typed attribute values


def encodeAddress(addr):
    """MAPPED-ADDRESS / OTHER-ADDRESS / RESPONSE-ORIGIN value for C{(host, port)}."""
    host, port = addr
    ip = ipaddress.ip_address(host)
    family = FAMILY_IPV4 if ip.version == 4 else FAMILY_IPV6
    return struct.pack("!BBH", 0, family, port) + ip.packed


def decodeAddress(value):
    if len(value) < 4:
        raise StunParseError("address attribute shorter than 4 bytes")
    _, family, port = struct.unpack_from("!BBH", value)
    raw = value[4:]
    if family == FAMILY_IPV4 and len(raw) == 4:
        return (str(ipaddress.IPv4Address(raw)), port)
    if family == FAMILY_IPV6 and len(raw) == 16:
        return (str(ipaddress.IPv6Address(raw)), port)
    raise StunParseError(f"address attribute has family {family} and {len(raw)} address bytes")


def _xorMask(length, transactionId):
    return (MAGIC_COOKIE_BYTES + transactionId)[:length]


def encodeXorAddress(addr, transactionId):
    host, port = addr
    ip = ipaddress.ip_address(host)
    family = FAMILY_IPV4 if ip.version == 4 else FAMILY_IPV6
    packed = ip.packed
    mask = _xorMask(len(packed), transactionId)
    return struct.pack("!BBH", 0, family, port ^ (MAGIC_COOKIE >> 16)) + bytes(a ^ b for a, b in zip(packed, mask))


def decodeXorAddress(value, transactionId):
    host, xport = decodeAddress(value)
    packed = ipaddress.ip_address(host).packed
    mask = _xorMask(len(packed), transactionId)
    raw = bytes(a ^ b for a, b in zip(packed, mask))
    return (str(ipaddress.ip_address(raw)), xport ^ (MAGIC_COOKIE >> 16))


def encodeErrorCode(code, reason):
    if not 300 <= code <= 699:
        raise ValueError(f"STUN error code {code} is outside 300..699")
    r = reason.encode("utf-8")[:763]
    return struct.pack("!HBB", 0, code // 100, code % 100) + r


def decodeErrorCode(value):
    """@return: C{(code, reason)}."""
    if len(value) < 4:
        raise StunParseError("ERROR-CODE shorter than 4 bytes")
    klass, number = value[2] & 0x07, value[3]
    if not 3 <= klass <= 6 or number > 99:
        raise StunParseError(f"ERROR-CODE class {klass} number {number} is out of range")
    return klass * 100 + number, value[4:].decode("utf-8", "replace")


def encodeUnknownAttributes(types):
    return b"".join(struct.pack("!H", t) for t in types)


def decodeUnknownAttributes(value):
    if len(value) % 2:
        raise StunParseError("UNKNOWN-ATTRIBUTES has an odd length")
    return [t for (t,) in struct.iter_unpack("!H", value)]


def encodeChangeRequest(changeIP=False, changePort=False):
    return struct.pack("!I", (CHANGE_IP if changeIP else 0) | (CHANGE_PORT if changePort else 0))


def decodeChangeRequest(value):
    """@return: C{(changeIP, changePort)}."""
    if len(value) != 4:
        raise StunParseError("CHANGE-REQUEST must be 4 bytes")
    (flags,) = struct.unpack("!I", value)
    return bool(flags & CHANGE_IP), bool(flags & CHANGE_PORT)


def encodeResponsePort(port):
    return struct.pack("!HH", port, 0)


def decodeResponsePort(value):
    if len(value) != 4:
        raise StunParseError("RESPONSE-PORT must be 4 bytes")
    return struct.unpack_from("!H", value)[0]


def encodeUint32(n):
    """LIFETIME, PRIORITY, CACHE-TIMEOUT values."""
    return struct.pack("!I", n)


def decodeUint32(value):
    if len(value) != 4:
        raise StunParseError("expected a 4-byte value")
    return struct.unpack("!I", value)[0]
