"""Fuzz target: every relay message body, the first input byte choosing which.

EXTEND2, EXTENDED2, TRUNCATED, SENDME, FLOW_NEGOTIATE(D) (onion/cells.py), BEGIN, CONNECTED,
END, RESOLVE, RESOLVED (onion/streammsgs.py), PACKET (onion/packets.py's
reader, fed in two pieces so reassembly across cells is exercised),
PAYMENT (payments/paymsg.py), the multipath bodies MP_LINK, MP_LINKED,
MP_SWITCH, MP_ACK (onion/multipathmsgs.py) and FRAGMENT: a long EXTEND2 or
EXTENDED2 cut into FRAGMENT bodies and put together again by
onion/fragments.py's MessageAssembler before it is decoded.  What a relay,
an exit or a client decodes once a cell's layers are off.
"""

from meshvpn.fuzz.target import FuzzTarget
from meshvpn.onion.cells import (
    RELAY_BODY_TYPES, RELAY_DATA_LEN, CellError, Create2, Created2, Extend2, Extended2, FlowNegotiate, HTYPE_NTOR,
    RelayCommand, Sendme, Truncated,
)
from meshvpn.onion.fragments import MessageAssembler
from meshvpn.onion.multipathmsgs import MpAck, MpLink, MpSwitch
from meshvpn.onion import nexthop
from meshvpn.onion.packets import PacketReader, framePackets
from meshvpn.onion.streammsgs import STREAM_BODY_TYPES, Begin, Connected, End, Resolve, Resolved
from meshvpn.payments.paymsg import Needed, Receipt, parsePayment

# Taken from the protocol's own tables, so a body added there is fuzzed without a change here
# (SENDME's entry is None there: its authenticated form is Sendme).
BODY_TYPES = {
    **{command: (kind or Sendme).decode for command, kind in RELAY_BODY_TYPES.items()},
    **{command: kind.decode for command, kind in STREAM_BODY_TYPES.items()},
    RelayCommand.PAYMENT: parsePayment,
    RelayCommand.MP_LINK: MpLink.decode,
    RelayCommand.MP_LINKED: MpLink.decode,
    RelayCommand.MP_SWITCH: MpSwitch.decode,
    RelayCommand.MP_ACK: MpAck.decode,
    RelayCommand.NEXT_HOP_SUSPECTED: nexthop.decode,
}
# Multipath commands whose body must be empty (MP_LINKED_ACK, MP_REFUSED) or is
# stream data (MP_DATA, MP_FIN) have no codec: the multipath target fuzzes their handling.
_ORDER = sorted(BODY_TYPES) + [RelayCommand.PACKET, RelayCommand.FRAGMENT]


def decodeBody(command, body):
    """Decode C{body} as the relay command C{command}'s body (unknown commands carry none)."""
    if command == RelayCommand.PACKET:
        reader = PacketReader()
        half = len(body) // 2
        reader.feed(body[:half])
        reader.feed(body[half:])
        return
    decode = BODY_TYPES.get(command)
    if decode is not None:
        decode(body)


def _fragmented(data):
    """C{data}: the last piece's command, then pieces each led by its length (at most one cell's data)."""
    if not data:
        return
    last = (RelayCommand.EXTEND2, RelayCommand.EXTENDED2, RelayCommand.BEGIN)[data[0] % 3]
    assembler, pos, pieces = MessageAssembler(), 1, []
    while pos < len(data):
        n = min(data[pos], RELAY_DATA_LEN)
        pieces.append(data[pos + 1 : pos + 1 + n])
        pos += 1 + n
    if not pieces:
        return
    for piece in pieces[:-1]:
        assembler.fragment(piece)
    whole = assembler.finish(last, pieces[-1])
    if assembler.busy:
        raise AssertionError("the assembler still holds a message it handed up")
    BODY_TYPES[last](whole)


def _run(data):
    if not data:
        return
    command = _ORDER[data[0] % len(_ORDER)]
    if command == RelayCommand.FRAGMENT:
        return _fragmented(data[1:])  # a fragmented message spans cells: longer than one body
    decodeBody(command, data[1 : 1 + RELAY_DATA_LEN])


def bodySeeds():
    """C{(command, body)} for real messages of every kind."""
    create = Create2(HTYPE_NTOR, bytes(range(96)))
    return [
        (RelayCommand.EXTEND2, Extend2(bytes(32), (("127.0.0.1", 9001), ("::1", 9002)), ("tls 127.0.0.1:9001",),
                                       create).encode()),
        (RelayCommand.EXTENDED2, Extended2(Created2(bytes(64))).encode()),
        (RelayCommand.TRUNCATED, Truncated(8).encode()),
        (RelayCommand.SENDME, Sendme(bytes(range(8))).encode()),
        (RelayCommand.FLOW_NEGOTIATE, FlowNegotiate(3).encode()),
        (RelayCommand.FLOW_NEGOTIATED, FlowNegotiate(1).encode()),
        (RelayCommand.BEGIN, Begin("example.com", 443).encode()),
        (RelayCommand.BEGIN, Begin("2001:db8::1", 80, 1).encode()),
        (RelayCommand.CONNECTED, Connected("198.18.0.80", 300).encode()),
        (RelayCommand.CONNECTED, Connected("2001:db8::1", 300).encode()),
        (RelayCommand.END, End(6).encode()),
        (RelayCommand.RESOLVE, Resolve("www.example.org").encode()),
        (RelayCommand.RESOLVED, Resolved.fitting([(4, bytes([198, 18, 0, 80]), 60), (6, bytes(16), 60)]).encode()),
        (RelayCommand.RESOLVED, Resolved.error(True).encode()),
        (RelayCommand.PAYMENT, Receipt(0, 1 << 20).encode()),
        (RelayCommand.PAYMENT, Needed(1 << 20, 4096, (bytes(32),)).encode()),
        (RelayCommand.PACKET, framePackets([bytes(range(40)), bytes(100)])[0]),
        (RelayCommand.MP_LINK, MpLink(bytes(range(32)), 0, 0).encode()),
        (RelayCommand.MP_LINKED, MpLink(bytes(range(32)), 1200, 77).encode()),
        (RelayCommand.MP_SWITCH, MpSwitch(1201).encode()),
        (RelayCommand.MP_ACK, MpAck(1200).encode()),
        (RelayCommand.NEXT_HOP_SUSPECTED, nexthop.encode(True)),
        (RelayCommand.NEXT_HOP_SUSPECTED, nexthop.encode(False)),
    ]


def _longExtend2():
    """An EXTEND2 carrying a hybrid handshake's onionskin: longer than one cell, so it travels as FRAGMENTs."""
    return Extend2(bytes(32), (("198.18.0.9", 9001),), (), Create2(3, bytes(range(256)) * 5 + bytes(39))).encode()


def _fragments(command, body):
    pieces = [body[i : i + 250] for i in range(0, len(body), 250)]
    return bytes([(RelayCommand.EXTEND2, RelayCommand.EXTENDED2).index(command)]) + b"".join(
        bytes([len(p)]) + p for p in pieces)


def _seeds():
    fragmented = bytes([_ORDER.index(RelayCommand.FRAGMENT)]) + _fragments(RelayCommand.EXTEND2, _longExtend2())
    return [bytes([_ORDER.index(command)]) + body for command, body in bodySeeds()] + [fragmented]


TARGET = FuzzTarget("relay-body", "every relay message body (onion/cells.py, streammsgs.py, packets.py, payments/paymsg.py)",
                    (CellError,), _run, _seeds)
