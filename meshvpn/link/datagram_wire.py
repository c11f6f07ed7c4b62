"""Byte layouts of the datagram link (first bytes 0x90-0x96 on the node's UDP socket).

Kept apart from the state machine so the parser can be fuzzed on its own: it
takes untrusted bytes and returns a small tuple or raises L{LinkParseError};
it never allocates more than the datagram it was given.  doc/protocol.md has
the table.

    INIT    0x90 | sender index (4) | initiator ephemeral X25519 (32) | cookie (16)
                 | zero padding (107)                                                   = 160
    RESP    0x91 | sender index (4) | receiver index (4) | responder ephemeral (32)
                 | AEAD(responder Ed25519 key (32) | signature (64))                         = 153
    FINISH  0x92 | receiver index (4) | AEAD(initiator Ed25519 key (32) | signature (64))    = 117
    DATA    0x93 | receiver index (4) | counter (8, big endian) | AEAD(channel (1) | body)   >= 30
    COOKIE  0x94 | receiver index (4) | cookie (16)                                         = 21
    INIT_PQ 0x95 | sender index (4) | initiator ephemeral X25519 (32) | cookie (16)
                 | initiator ephemeral ML-KEM-768 encapsulation key (1184) | zero padding (11) = 1248
    RESP_PQ 0x96 | sender index (4) | receiver index (4) | responder ephemeral (32)
                 | ML-KEM-768 ciphertext (1088) | AEAD(responder key | signature)           = 1241

The _PQ pair is the hybrid handshake (meshvpn.link.datagram_crypto): the
same messages with an ML-KEM-768 exchange added.  INIT_PQ is padded past
RESP_PQ for the same reason as INIT.  With IPv4 and UDP headers both stay
under 1,280 bytes; over IPv6 they take 1,296, inside Ethernet's 1,500 but
not IPv6's minimum MTU (an ML-KEM-768 ciphertext and a signed identity do
not fit 1,232 bytes with the no-amplification rule).

INIT is padded so that a spoofed INIT never draws a larger RESP (no
amplification); the padding must be zero so no covert or malformed variant
is accepted.  The cookie is all zero unless a responder under load sent a
COOKIE (a MAC of the initiator's address: proof the initiator receives at
the address it claims, before the responder spends any DH or signature).
"""

import struct

INIT, RESP, FINISH, DATA, COOKIE, INIT_PQ, RESP_PQ = 0x90, 0x91, 0x92, 0x93, 0x94, 0x95, 0x96
LINK_TYPES = (INIT, RESP, FINISH, DATA, COOKIE, INIT_PQ, RESP_PQ)
EK_LEN = 1184  # ML-KEM-768 (meshvpn.hybridkem)
CT_LEN = 1088

KEY_LEN = 32
SIG_LEN = 64
TAG_LEN = 16
IDENTITY_BLOB_LEN = KEY_LEN + SIG_LEN + TAG_LEN  # sealed identity key + signature

INIT_LEN = 160
COOKIE_LEN = 16
NO_COOKIE = bytes(COOKIE_LEN)
INIT_PAD = INIT_LEN - 1 - 4 - KEY_LEN - COOKIE_LEN
COOKIE_MSG_LEN = 1 + 4 + COOKIE_LEN
RESP_HEADER_LEN = 1 + 4 + 4 + KEY_LEN
RESP_LEN = RESP_HEADER_LEN + IDENTITY_BLOB_LEN
FINISH_HEADER_LEN = 1 + 4
FINISH_LEN = FINISH_HEADER_LEN + IDENTITY_BLOB_LEN
INIT_PQ_LEN = 1248
INIT_PQ_PAD = INIT_PQ_LEN - 1 - 4 - KEY_LEN - COOKIE_LEN - EK_LEN
RESP_PQ_HEADER_LEN = RESP_HEADER_LEN + CT_LEN
RESP_PQ_LEN = RESP_PQ_HEADER_LEN + IDENTITY_BLOB_LEN
DATA_HEADER_LEN = 1 + 4 + 8
DATA_MIN_LEN = DATA_HEADER_LEN + 1 + TAG_LEN
# Biggest UDP payload; a DATA datagram can never be larger.
MAX_DATAGRAM = 65507

_ZERO_PAD = bytes(INIT_PAD)
_ZERO_PQ_PAD = bytes(INIT_PQ_PAD)
_IDX = struct.Struct("!I")
_DATA_HEADER = struct.Struct("!BIQ")


class LinkParseError(ValueError):
    """A datagram in the link's byte range is malformed; the message says how."""


def encodeInit(senderIndex, ephemeral, cookie=NO_COOKIE, ek=None):
    """INIT, or INIT_PQ when C{ek} (an ML-KEM-768 encapsulation key) is given."""
    if ek is not None:
        return bytes((INIT_PQ,)) + _IDX.pack(senderIndex) + ephemeral + cookie + ek + _ZERO_PQ_PAD
    return bytes((INIT,)) + _IDX.pack(senderIndex) + ephemeral + cookie + _ZERO_PAD


def encodeCookie(receiverIndex, cookie):
    return bytes((COOKIE,)) + _IDX.pack(receiverIndex) + cookie


def encodeRespHeader(senderIndex, receiverIndex, ephemeral, ct=None):
    """The RESP header, or RESP_PQ's (with the ML-KEM ciphertext C{ct}) when C{ct} is given."""
    if ct is not None:
        return bytes((RESP_PQ,)) + _IDX.pack(senderIndex) + _IDX.pack(receiverIndex) + ephemeral + ct
    return bytes((RESP,)) + _IDX.pack(senderIndex) + _IDX.pack(receiverIndex) + ephemeral


def encodeFinishHeader(receiverIndex):
    return bytes((FINISH,)) + _IDX.pack(receiverIndex)


def encodeDataHeader(receiverIndex, counter):
    return _DATA_HEADER.pack(DATA, receiverIndex, counter)


def parse(data):
    """
    Split a link datagram into its fields.

    @return: one of
        C{(INIT, senderIndex, ephemeral, cookie, ek)},
        C{(COOKIE, receiverIndex, cookie)},
        C{(RESP, senderIndex, receiverIndex, ephemeral, header, sealed, ct)},
        C{(FINISH, receiverIndex, header, sealed)},
        C{(DATA, receiverIndex, counter, header, sealed)};
        C{ek} and C{ct} are C{None} for the classic INIT and RESP, the
        ML-KEM key and ciphertext for INIT_PQ and RESP_PQ (reported as INIT
        and RESP).
    @raise LinkParseError: wrong type, wrong length, or non-zero INIT padding.
    """
    n = len(data)
    if n == 0:
        raise LinkParseError("empty datagram")
    kind = data[0]
    if kind == DATA:
        if n < DATA_MIN_LEN:
            raise LinkParseError(f"DATA of {n} bytes is shorter than {DATA_MIN_LEN}")
        if n > MAX_DATAGRAM:
            raise LinkParseError("DATA larger than a UDP datagram")
        _, receiver, counter = _DATA_HEADER.unpack_from(data)
        return (DATA, receiver, counter, data[:DATA_HEADER_LEN], data[DATA_HEADER_LEN:])
    if kind == INIT:
        if n != INIT_LEN:
            raise LinkParseError(f"INIT must be {INIT_LEN} bytes, got {n}")
        if data[1 + 4 + KEY_LEN + COOKIE_LEN :] != _ZERO_PAD:
            raise LinkParseError("INIT padding is not zero")
        return (INIT, _IDX.unpack_from(data, 1)[0], data[5 : 5 + KEY_LEN], data[5 + KEY_LEN : 5 + KEY_LEN + COOKIE_LEN],
                None)
    if kind == INIT_PQ:
        if n != INIT_PQ_LEN:
            raise LinkParseError(f"INIT_PQ must be {INIT_PQ_LEN} bytes, got {n}")
        at = 5 + KEY_LEN + COOKIE_LEN
        if data[at + EK_LEN :] != _ZERO_PQ_PAD:
            raise LinkParseError("INIT_PQ padding is not zero")
        return (INIT, _IDX.unpack_from(data, 1)[0], data[5 : 5 + KEY_LEN], data[5 + KEY_LEN : at],
                data[at : at + EK_LEN])
    if kind == COOKIE:
        if n != COOKIE_MSG_LEN:
            raise LinkParseError(f"COOKIE must be {COOKIE_MSG_LEN} bytes, got {n}")
        return (COOKIE, _IDX.unpack_from(data, 1)[0], data[5:])
    if kind == RESP:
        if n != RESP_LEN:
            raise LinkParseError(f"RESP must be {RESP_LEN} bytes, got {n}")
        return (
            RESP,
            _IDX.unpack_from(data, 1)[0],
            _IDX.unpack_from(data, 5)[0],
            data[9 : 9 + KEY_LEN],
            data[:RESP_HEADER_LEN],
            data[RESP_HEADER_LEN:],
            None,
        )
    if kind == RESP_PQ:
        if n != RESP_PQ_LEN:
            raise LinkParseError(f"RESP_PQ must be {RESP_PQ_LEN} bytes, got {n}")
        return (
            RESP,
            _IDX.unpack_from(data, 1)[0],
            _IDX.unpack_from(data, 5)[0],
            data[9 : 9 + KEY_LEN],
            data[:RESP_PQ_HEADER_LEN],
            data[RESP_PQ_HEADER_LEN:],
            data[RESP_HEADER_LEN:RESP_PQ_HEADER_LEN],
        )
    if kind == FINISH:
        if n != FINISH_LEN:
            raise LinkParseError(f"FINISH must be {FINISH_LEN} bytes, got {n}")
        return (FINISH, _IDX.unpack_from(data, 1)[0], data[:FINISH_HEADER_LEN], data[FINISH_HEADER_LEN:])
    raise LinkParseError(f"unknown link message type 0x{kind:02x}")
