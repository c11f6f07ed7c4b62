"""The bodies of the multipath relay commands (doc/protocol.md, "Multipath").

Two circuits to one exit become the legs of one linked set by each sending
MP_LINK with the set's nonce; the exit answers MP_LINKED, the origin closes
the exchange with an empty MP_LINKED_ACK.  Sequenced cells (MP_DATA, MP_FIN)
carry no sequence number: each leg counts them from the number its last
MP_SWITCH named.  MP_ACK tells the sender how far the receiver has delivered
in order, so it may forget what it kept for a leg that dies.

A pure codec, like L{meshvpn.onion.cells}: every length and value is checked
and a bad body raises L{CellError} naming what is wrong.
"""

import struct

import attrs

from meshvpn.onion.cells import CellError

MP_VERSION = 1
NONCE_LEN = 32
SEQ_MAX = (1 << 63) - 1  # sequence numbers stay far below the u64 range: no wrap to reason about

_LINK = struct.Struct(">B32sQQB")  # version | nonce | last seq sent | last seq received | flags
_U64 = struct.Struct(">Q")

LINK_LEN = _LINK.size  # 50
SWITCH_LEN = ACK_LEN = _U64.size


def _seq(value, what):
    if not 0 <= value <= SEQ_MAX:
        raise CellError(f"{what} {value} out of range")
    return value


@attrs.frozen
class MpLink:
    """
    The body of MP_LINK (origin to exit) and MP_LINKED (exit's answer).

    @ivar nonce: 32 random bytes naming the set; every leg of a set sends the same.
    @ivar lastSeqSent: the highest sequence number the sender has sent on any leg.
    @ivar lastSeqRecv: the highest sequence number the sender has delivered in order.
    @ivar flags: reserved, zero (a future scheduler preference).
    """

    nonce: bytes
    lastSeqSent: int = 0
    lastSeqRecv: int = 0
    flags: int = 0

    def encode(self):
        if len(self.nonce) != NONCE_LEN:
            raise CellError(f"multipath nonce of {len(self.nonce)} bytes, expected {NONCE_LEN}")
        _seq(self.lastSeqSent, "last sequence number sent")
        _seq(self.lastSeqRecv, "last sequence number received")
        return _LINK.pack(MP_VERSION, self.nonce, self.lastSeqSent, self.lastSeqRecv, self.flags)

    @classmethod
    def decode(cls, body):
        if len(body) != LINK_LEN:
            raise CellError(f"multipath link body of {len(body)} bytes, expected {LINK_LEN}")
        version, nonce, sent, recv, flags = _LINK.unpack(body)
        if version != MP_VERSION:
            raise CellError(f"multipath version {version} not supported")
        if flags != 0:
            raise CellError(f"multipath link flags {flags:#04x} not understood")
        return cls(nonce, _seq(sent, "last sequence number sent"), _seq(recv, "last sequence number received"), flags)


@attrs.frozen
class MpSwitch:
    """
    The body of MP_SWITCH: the absolute sequence number of the next
    sequenced cell on this leg.  Conflux sends a relative jump; an absolute
    number also lets a sender resend, on a surviving leg, what it had sent
    on a leg that died (a jump backward), and is checked just as easily.
    """

    seq: int

    def encode(self):
        if not 1 <= self.seq <= SEQ_MAX:
            raise CellError(f"switch sequence number {self.seq} out of range")
        return _U64.pack(self.seq)

    @classmethod
    def decode(cls, body):
        if len(body) != SWITCH_LEN:
            raise CellError(f"MP_SWITCH body of {len(body)} bytes, expected {SWITCH_LEN}")
        (seq,) = _U64.unpack(body)
        if not 1 <= seq <= SEQ_MAX:
            raise CellError(f"switch sequence number {seq} out of range")
        return cls(seq)


@attrs.frozen
class MpAck:
    """The body of MP_ACK: every sequenced cell up to C{delivered} was delivered in order."""

    delivered: int

    def encode(self):
        return _U64.pack(_seq(self.delivered, "acknowledged sequence number"))

    @classmethod
    def decode(cls, body):
        if len(body) != ACK_LEN:
            raise CellError(f"MP_ACK body of {len(body)} bytes, expected {ACK_LEN}")
        (delivered,) = _U64.unpack(body)
        return cls(_seq(delivered, "acknowledged sequence number"))
