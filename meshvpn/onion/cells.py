"""The binary formats of the onion plane: cells, relay cell headers and the
bodies of every cell and circuit-level relay command (doc/protocol.md, "Onion
cells"); the stream message bodies are L{meshvpn.onion.streammsgs}.

Everything here is a pure codec: C{encode*} builds bytes, C{decode*}/C{parse*}
checks every length and value and raises L{CellError} naming what is wrong.
The relay hot path does not use these classes: it slices cells directly
(see L{meshvpn.onion.channel}); these are for everything that is not DATA.
"""

import ipaddress
import struct

import attrs

from meshvpn.errors import MeshVPNError
from meshvpn.link.cellsize import CELL_SIZE

CIRCID_LEN = 4
HEADER_LEN = CIRCID_LEN + 1
PAYLOAD_LEN = CELL_SIZE - HEADER_LEN  # 509
INITIATOR_BIT = 0x80000000
CIRCID_MASK = 0x7FFFFFFF

# Relay payload layout (after every layer is removed), offsets into the 509 bytes.
TAG_LEN = 8
TAG_END = TAG_LEN                 # tag: bytes 0..8
RECOGNIZED_AT = 8                 # recognized: bytes 8..10, zero
RELAY_CMD_AT = 10                 # relay command: byte 10
STREAM_AT = 11                    # stream id: bytes 11..13
LENGTH_AT = 13                    # length: bytes 13..15
RELAY_HEADER_LEN = 15
RELAY_DATA_LEN = PAYLOAD_LEN - RELAY_HEADER_LEN  # 494
# A hop using CGO relay crypto (meshvpn.onion.cgo): a 16-byte tag and a 493-byte
# body holding the same header without tag and recognized: command | stream | length.
CGO_TAG_LEN = 16
CGO_BODY_AT = 10                  # the body is bytes 10..503 of the common relay payload layout
CGO_BODY_LEN = 493
CGO_RELAY_DATA_LEN = CGO_BODY_LEN - (RELAY_HEADER_LEN - CGO_BODY_AT)  # 488
# What every hop carries whatever its relay crypto (multipath bodies, which may change legs).
MIN_RELAY_DATA_LEN = CGO_RELAY_DATA_LEN

MAX_RELAY_EARLY = 8


class CellError(MeshVPNError):
    """A cell or relay message is malformed; the message says what and where."""


class Command:
    """Cell commands (the same numbers as Tor's where Tor has them)."""

    PADDING = 0
    RELAY = 3
    DESTROY = 4
    RELAY_EARLY = 9
    CREATE2 = 10
    CREATED2 = 11
    # The rest of a CREATE2 or CREATED2 body longer than one cell (meshvpn.onion.fragments).
    CREATE2_MORE = 16
    CREATED2_MORE = 17

    ALL = frozenset((PADDING, RELAY, DESTROY, RELAY_EARLY, CREATE2, CREATED2, CREATE2_MORE, CREATED2_MORE))
    NAMES = {0: "PADDING", 3: "RELAY", 4: "DESTROY", 9: "RELAY_EARLY", 10: "CREATE2", 11: "CREATED2",
             16: "CREATE2_MORE", 17: "CREATED2_MORE"}


class RelayCommand:
    """Relay commands (Tor's numbers; PACKET is MeshVPN's packet mode, PAYMENT its bandwidth
    tokens, FLOW_NEGOTIATE(D) its congestion-control negotiation, MP_* its multipath)."""

    BEGIN = 1
    DATA = 2
    END = 3
    CONNECTED = 4
    SENDME = 5
    TRUNCATE = 8
    TRUNCATED = 9
    DROP = 10
    RESOLVE = 11
    RESOLVED = 12
    EXTEND2 = 14
    EXTENDED2 = 15
    XOFF = 43
    XON = 44
    PACKET = 128
    PAYMENT = 129  # body: meshvpn.payments.paymsg; client <-> exit only, stream id 0
    FLOW_NEGOTIATE = 130
    FLOW_NEGOTIATED = 131
    FRAGMENT = 132  # the first pieces of a long EXTEND2/EXTENDED2 (meshvpn.onion.fragments); stream id 0
    # Multipath (doc/protocol.md, "Multipath"); bodies: meshvpn.onion.multipathmsgs.
    MP_LINK = 133
    MP_LINKED = 134
    MP_LINKED_ACK = 135
    MP_SWITCH = 136
    MP_ACK = 137
    MP_DATA = 138
    MP_FIN = 139
    MP_REFUSED = 140
    # A relay tells the origin its link to the circuit's next hop is suspected of hanging, or heard
    # again (body: meshvpn.onion.nexthop); stream id 0, from any hop but the last.
    NEXT_HOP_SUSPECTED = 146
    # Directory through circuits (meshvpn.onion.dhtmsgs): one DHT datagram per message run, stream id 0,
    # between the origin and the circuit's last hop, which sends it from its own DHT socket.
    DHT_SEND = 147
    DHT_RECEIVED = 148
    DHT_REFUSED = 149

    NAMES = {
        1: "BEGIN", 2: "DATA", 3: "END", 4: "CONNECTED", 5: "SENDME", 8: "TRUNCATE",
        9: "TRUNCATED", 10: "DROP", 11: "RESOLVE", 12: "RESOLVED", 14: "EXTEND2",
        15: "EXTENDED2", 43: "XOFF", 44: "XON", 128: "PACKET", 129: "PAYMENT",
        130: "FLOW_NEGOTIATE", 131: "FLOW_NEGOTIATED", 132: "FRAGMENT",
        133: "MP_LINK", 134: "MP_LINKED", 135: "MP_LINKED_ACK", 136: "MP_SWITCH", 137: "MP_ACK",
        138: "MP_DATA", 139: "MP_FIN", 140: "MP_REFUSED", 146: "NEXT_HOP_SUSPECTED",
        147: "DHT_SEND", 148: "DHT_RECEIVED", 149: "DHT_REFUSED",
    }
    ALL = frozenset(NAMES)
    # Commands that count against circuit (and, with a stream id, stream) windows.
    FLOW_CONTROLLED = frozenset((DATA, PACKET, MP_DATA))
    # Multipath messages: edge to edge only, for the stream layer's multipath sets.
    MULTIPATH = frozenset((MP_LINK, MP_LINKED, MP_LINKED_ACK, MP_SWITCH, MP_ACK, MP_DATA, MP_FIN, MP_REFUSED))


class DestroyReason:
    """DESTROY / TRUNCATED / END-independent circuit teardown reasons (Tor's numbers)."""

    NONE = 0
    PROTOCOL = 1
    INTERNAL = 2
    REQUESTED = 3
    HIBERNATING = 4
    RESOURCELIMIT = 5
    CONNECTFAILED = 6
    OR_IDENTITY = 7
    CHANNEL_CLOSED = 8
    FINISHED = 9
    TIMEOUT = 10
    DESTROYED = 11
    NOSUCHSERVICE = 12

    NAMES = {
        0: "NONE", 1: "PROTOCOL", 2: "INTERNAL", 3: "REQUESTED", 4: "HIBERNATING",
        5: "RESOURCELIMIT", 6: "CONNECTFAILED", 7: "OR_IDENTITY", 8: "CHANNEL_CLOSED",
        9: "FINISHED", 10: "TIMEOUT", 11: "DESTROYED", 12: "NOSUCHSERVICE",
    }

    @classmethod
    def name(cls, reason):
        return cls.NAMES.get(reason, f"UNKNOWN({reason})")


HTYPE_NTOR = 0x0002
HTYPE_NTOR3 = 0x0003
HTYPE_NTOR3_MLKEM768 = 0x0103
NTOR_ONIONSKIN_LEN = 96   # ID(32) | B(32) | X(32)
NTOR_REPLY_LEN = 64       # Y(32) | AUTH(32)
NTOR3_MIN_ONIONSKIN = 128  # ID | B | X | MAC, then the client's message
MAX_HANDSHAKE_BODY = 2048  # a CREATE2/CREATED2 body over several cells (meshvpn.onion.fragments)
# Per handshake type: (shortest, longest) CREATE2 body.
_ONIONSKIN_LENS = {HTYPE_NTOR: (NTOR_ONIONSKIN_LEN, NTOR_ONIONSKIN_LEN),
                   HTYPE_NTOR3: (NTOR3_MIN_ONIONSKIN, MAX_HANDSHAKE_BODY),
                   HTYPE_NTOR3_MLKEM768: (NTOR3_MIN_ONIONSKIN, MAX_HANDSHAKE_BODY)}


# --------------------------------------------------------------------------
# cells


@attrs.frozen
class Cell:
    """One fixed-size cell: circuit id (with its initiator bit), command, 509-byte payload."""

    circId: int
    command: int
    payload: bytes = attrs.field(default=b"")

    def encode(self):
        if not 0 <= self.circId <= 0xFFFFFFFF:
            raise CellError(f"circuit id {self.circId} out of range")
        if len(self.payload) > PAYLOAD_LEN:
            raise CellError(f"payload of {len(self.payload)} bytes exceeds {PAYLOAD_LEN}")
        return encodeCell(self.circId, self.command, self.payload)


def encodeCell(circId, command, payload):
    """Build a cell; C{payload} is zero-padded to 509 bytes."""
    return struct.pack(">IB", circId, command) + payload + bytes(PAYLOAD_LEN - len(payload))


def parseCell(data):
    """
    Parse one cell.

    @raise CellError: wrong size or unknown command.
    """
    if len(data) != CELL_SIZE:
        raise CellError(f"cell is {len(data)} bytes, expected {CELL_SIZE}")
    circId, command = struct.unpack_from(">IB", data)
    if command not in Command.ALL:
        raise CellError(f"unknown cell command {command}")
    if circId == 0 and command != Command.PADDING:
        raise CellError(f"{Command.NAMES[command]} cell on circuit id 0")
    return Cell(circId, command, bytes(data[HEADER_LEN:]))


# --------------------------------------------------------------------------
# cell bodies


@attrs.frozen
class Create2:
    htype: int
    hdata: bytes

    def encode(self):
        return struct.pack(">HH", self.htype, len(self.hdata)) + self.hdata

    @classmethod
    def decode(cls, payload):
        if len(payload) < 4:
            raise CellError("CREATE2 shorter than its header")
        htype, hlen = struct.unpack_from(">HH", payload)
        lens = _ONIONSKIN_LENS.get(htype)
        if lens is None:
            raise CellError(f"CREATE2 handshake type {htype:#06x} not supported")
        if not lens[0] <= hlen <= lens[1] or 4 + hlen > len(payload):
            raise CellError(f"CREATE2 handshake type {htype:#06x} of length {hlen}, expected {lens[0]}..{lens[1]}")
        return cls(htype, bytes(payload[4:4 + hlen]))


@attrs.frozen
class Created2:
    hdata: bytes

    def encode(self):
        return struct.pack(">H", len(self.hdata)) + self.hdata

    @classmethod
    def decode(cls, payload):
        if len(payload) < 2:
            raise CellError("CREATED2 shorter than its header")
        (hlen,) = struct.unpack_from(">H", payload)
        if not NTOR_REPLY_LEN <= hlen <= MAX_HANDSHAKE_BODY or 2 + hlen > len(payload):
            raise CellError(f"CREATED2 handshake length {hlen}, expected {NTOR_REPLY_LEN}..{MAX_HANDSHAKE_BODY}")
        return cls(bytes(payload[2:2 + hlen]))


@attrs.frozen
class Destroy:
    reason: int

    def encode(self):
        return bytes([self.reason])

    @classmethod
    def decode(cls, payload):
        if len(payload) < 1:
            raise CellError("DESTROY without a reason")
        return cls(payload[0])


# --------------------------------------------------------------------------
# relay messages: header (after every layer is removed)


@attrs.frozen
class RelayHeader:
    """The parsed header of a relay payload whose layers are all removed."""

    command: int
    streamId: int
    data: bytes


def packRelay(command, streamId, data):
    """
    The 509-byte relay payload with a zero tag (the crypto layer fills it in).

    @raise CellError: C{data} longer than one cell can carry.
    """
    n = len(data)
    if n > RELAY_DATA_LEN:
        raise CellError(f"relay data of {n} bytes exceeds {RELAY_DATA_LEN}")
    return bytes(10) + struct.pack(">BHH", command, streamId, n) + data + bytes(RELAY_DATA_LEN - n)


_NEEDS_STREAM = frozenset((RelayCommand.DATA, RelayCommand.BEGIN, RelayCommand.END, RelayCommand.CONNECTED,
                           RelayCommand.RESOLVE, RelayCommand.RESOLVED, RelayCommand.XON, RelayCommand.XOFF))
_CIRCUIT_ONLY = frozenset((RelayCommand.EXTEND2, RelayCommand.EXTENDED2, RelayCommand.TRUNCATE, RelayCommand.TRUNCATED,
                           RelayCommand.PACKET, RelayCommand.PAYMENT, RelayCommand.FLOW_NEGOTIATE, RelayCommand.FLOW_NEGOTIATED,
                           RelayCommand.FRAGMENT,
                           *(RelayCommand.MULTIPATH - {RelayCommand.MP_LINK})))  # MP_LINK names the stream a set takes over


def unpackRelay(payload):
    """
    Parse a recognized relay payload.

    @raise CellError: unknown command or a length past the cell.
    """
    command, streamId, n = struct.unpack_from(">BHH", payload, RELAY_CMD_AT)
    if command not in RelayCommand.ALL:
        raise CellError(f"unknown relay command {command}")
    if n > RELAY_DATA_LEN:
        raise CellError(f"relay length {n} exceeds {RELAY_DATA_LEN}")
    if command in _NEEDS_STREAM and streamId == 0:
        raise CellError(f"relay {RelayCommand.NAMES[command]} needs a stream id")
    if command in _CIRCUIT_ONLY and streamId != 0:
        raise CellError(f"relay {RelayCommand.NAMES[command]} must use stream id 0")
    return RelayHeader(command, streamId, bytes(payload[RELAY_HEADER_LEN:RELAY_HEADER_LEN + n]))


# --------------------------------------------------------------------------
# relay message bodies


class LinkSpec:
    """EXTEND2 link specifier types."""

    IPV4 = 0x00       # 4-byte address + 2-byte port
    IPV6 = 0x01       # 16-byte address + 2-byte port
    NODE_ID = 0x80    # 32-byte MeshVPN node id (required)
    TRANSPORT = 0x81  # UTF-8 "<transport name> <transport address>", <= 200 bytes


@attrs.frozen
class Extend2:
    """Where to extend to (link specifiers) and the CREATE2 body to send there."""

    nodeId: bytes
    addresses: tuple = ()          # ((host, port), ...)
    transports: tuple = ()         # ("tls 127.0.0.1:9001", ...)
    create: Create2 = None

    def encode(self):
        specs = [(LinkSpec.NODE_ID, self.nodeId)]
        for host, port in self.addresses:
            ip = ipaddress.ip_address(host)
            kind = LinkSpec.IPV4 if ip.version == 4 else LinkSpec.IPV6
            specs.append((kind, ip.packed + struct.pack(">H", port)))
        for t in self.transports:
            specs.append((LinkSpec.TRANSPORT, t.encode("utf-8")))
        out = [bytes([len(specs)])]
        for kind, value in specs:
            if len(value) > 255:
                raise CellError("link specifier longer than 255 bytes")
            out.append(bytes([kind, len(value)]) + value)
        out.append(self.create.encode())
        body = b"".join(out)
        if len(body) > MAX_HANDSHAKE_BODY:
            raise CellError(f"EXTEND2 of {len(body)} bytes exceeds {MAX_HANDSHAKE_BODY}")
        return body

    @classmethod
    def decode(cls, data):
        if not data:
            raise CellError("empty EXTEND2")
        count, pos = data[0], 1
        nodeId, addresses, transports = None, [], []
        for _ in range(count):
            if pos + 2 > len(data):
                raise CellError("EXTEND2 link specifier truncated")
            kind, n = data[pos], data[pos + 1]
            value = data[pos + 2:pos + 2 + n]
            if len(value) != n:
                raise CellError("EXTEND2 link specifier truncated")
            pos += 2 + n
            if kind == LinkSpec.NODE_ID:
                if n != 32 or nodeId is not None:
                    raise CellError("EXTEND2 needs exactly one 32-byte node id")
                nodeId = bytes(value)
            elif kind == LinkSpec.IPV4:
                if n != 6:
                    raise CellError("EXTEND2 IPv4 specifier must be 6 bytes")
                addresses.append((str(ipaddress.IPv4Address(bytes(value[:4]))), struct.unpack(">H", value[4:])[0]))
            elif kind == LinkSpec.IPV6:
                if n != 18:
                    raise CellError("EXTEND2 IPv6 specifier must be 18 bytes")
                addresses.append((str(ipaddress.IPv6Address(bytes(value[:16]))), struct.unpack(">H", value[16:])[0]))
            elif kind == LinkSpec.TRANSPORT:
                try:
                    transports.append(bytes(value).decode("utf-8"))
                except UnicodeDecodeError:
                    raise CellError("EXTEND2 transport specifier is not UTF-8") from None
            # unknown specifier types are skipped, as Tor does, so new ones can be added
        if nodeId is None:
            raise CellError("EXTEND2 without a node id")
        create = Create2.decode(data[pos:])
        return cls(nodeId, tuple(addresses), tuple(transports), create)


@attrs.frozen
class Extended2:
    created: Created2

    def encode(self):
        return self.created.encode()

    @classmethod
    def decode(cls, data):
        return cls(Created2.decode(data))


@attrs.frozen
class Truncated:
    reason: int

    def encode(self):
        return bytes([self.reason])

    @classmethod
    def decode(cls, data):
        if len(data) != 1:
            raise CellError("TRUNCATED must carry exactly one reason byte")
        return cls(data[0])


SENDME_VERSION = 1


@attrs.frozen
class Sendme:
    """
    An authenticated SENDME: the tag of the cell that closed the acknowledged
    window (8 bytes from a hop with the original relay crypto, 16 with CGO).
    """

    tag: bytes

    def encode(self):
        return struct.pack(">BH", SENDME_VERSION, len(self.tag)) + self.tag

    @classmethod
    def decode(cls, data):
        if len(data) < 3:
            raise CellError("SENDME shorter than its header")
        version, n = struct.unpack_from(">BH", data)
        if version != SENDME_VERSION:
            raise CellError(f"SENDME version {version} not supported")
        if n not in (TAG_LEN, CGO_TAG_LEN) or len(data) != 3 + n:
            raise CellError(f"SENDME tag must be {TAG_LEN} or {CGO_TAG_LEN} bytes")
        return cls(bytes(data[3:]))


FLOW_VERSION = 1
FLOW_KNOWN_FLAGS = 0x0F  # meshvpn.onion.flow: FLOW_CC | FLOW_XON | FLOW_EARLY | FLOW_GSO


@attrs.frozen
class FlowNegotiate:
    """
    The body of FLOW_NEGOTIATE (origin to last hop) and FLOW_NEGOTIATED (its
    answer): version (1) = 1, flags (1).  The last hop accepts exactly the
    flags proposed or refuses the circuit; a flag it does not know is a
    protocol error, so both ends always agree on what is in force.
    """

    flags: int

    def encode(self):
        return struct.pack(">BB", FLOW_VERSION, self.flags)

    @classmethod
    def decode(cls, data):
        if len(data) != 2:
            raise CellError(f"flow negotiation body of {len(data)} bytes, expected 2")
        version, flags = data[0], data[1]
        if version != FLOW_VERSION:
            raise CellError(f"flow negotiation version {version} not supported")
        if flags & ~FLOW_KNOWN_FLAGS:
            raise CellError(f"flow negotiation flags {flags:#04x} not understood")
        return cls(flags)


RELAY_BODY_TYPES = {
    RelayCommand.EXTEND2: Extend2,
    RelayCommand.EXTENDED2: Extended2,
    RelayCommand.TRUNCATED: Truncated,
    RelayCommand.SENDME: None,  # empty body = unauthenticated, refused (see flow.py)
    RelayCommand.FLOW_NEGOTIATE: FlowNegotiate,
    RelayCommand.FLOW_NEGOTIATED: FlowNegotiate,
}
# The stream message bodies (BEGIN, CONNECTED, END, RESOLVE, RESOLVED) are
# meshvpn.onion.streammsgs's (with its STREAM_BODY_TYPES).

_MOVED_TO_STREAMMSGS = frozenset(("Begin", "End", "Connected", "Resolve", "Resolved", "AnswerType"))


def __getattr__(name):
    # Old importers of the stream bodies from here (the relay's NullEdge)
    # get the one definition; streammsgs imports this module, so the forward
    # is lazy to keep the import order free.
    if name in _MOVED_TO_STREAMMSGS:
        from meshvpn.onion import streammsgs

        return getattr(streammsgs, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
