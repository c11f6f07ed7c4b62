"""Packet mode framing: IP packets in RELAY PACKET cells.

Packets are written as a byte stream of C{length(2) | packet} records, cut
into cell bodies of the circuit's data size (494 bytes, 488 to a CGO hop); a batch ends on a packet boundary (the last
cell is short) unless the circuit window cuts it, so nothing waits for more traffic.  Small packets (TCP ACKs)
share cells; a 1420-byte packet takes 2.88 cells on average.  The reader
reassembles across cells; its buffer never exceeds one maximum-size record.

On a circuit that negotiated C{FLOW_GSO} (L{meshvpn.onion.flow}) a record
may also be an offload record, C{0x0000 | flags(1) | gso_size(2) |
length(2) | packet}: one packet as a TUN with offload reads and writes it
(L{OffloadPacket}): its transport checksum left for the receiving kernel
to finish (C{OFFLOAD_CSUM}: the field holds the pseudo-header sum), and
with C{OFFLOAD_TCP} a TCP segment of up to 64 KB that the receiving kernel
cuts into C{gso_size}-byte segments.  One such record replaces ~40
full-size packets, each a pass through Python at both circuit ends.  A
zero length is an error on any other circuit, so an older peer never sees
one.
"""

from meshvpn.onion.cells import RELAY_DATA_LEN, CellError

MAX_PACKET = 65535
OFFLOAD_CSUM = 0x01  # the transport checksum holds only the pseudo-header sum; the receiver's kernel completes it
OFFLOAD_TCP = 0x02  # a TCP segment to be cut into gso_size-byte segments (needs OFFLOAD_CSUM)
_OFFLOAD_KINDS = (OFFLOAD_CSUM, OFFLOAD_CSUM | OFFLOAD_TCP)
OFFLOAD_OVERHEAD = 5  # the extra bytes of an offload record
# The smallest gso_size carried (IPv4's default MSS): smaller would let 64 KB of cells become
# thousands of packets on the far side's wire; an edge cuts such segments itself instead.
MIN_GSO_SIZE = 536
_OFFLOAD_HEAD = 7


class OffloadPacket(bytes):
    """
    An IP packet with the offload a TUN gave it (C{bytes}, plus C{offload}:
    C{OFFLOAD_*} flags, C{gsoSize}: the segment payload size or 0).  Only
    the edges make them (L{meshvpn.tun.offload}); a circuit carries them
    only when C{FLOW_GSO} is in force.
    """

    def __new__(cls, data, offload, gsoSize=0):
        p = super().__new__(cls, data)
        p.offload = offload
        p.gsoSize = gsoSize
        return p

    def __repr__(self):
        return f"<OffloadPacket {len(self)} bytes, offload {self.offload:#x}, gso_size {self.gsoSize}>"


def recordSize(p):
    """The bytes C{p}'s record takes in the stream."""
    return 2 + len(p) + OFFLOAD_OVERHEAD if type(p) is OffloadPacket else 2 + len(p)


def packetCellCount(packets, size=RELAY_DATA_LEN):
    """Cells of C{size} data bytes needed to carry C{packets} in one batch."""
    total = sum(recordSize(p) for p in packets)
    return -(-total // size)


def packetRecords(packets):
    """
    @return: the byte stream of records carrying C{packets} (an
        L{OffloadPacket} as an offload record: the caller sends one only
        on a circuit with C{FLOW_GSO}).
    @raise CellError: a packet is empty or larger than 65535 bytes, or its offload is malformed.
    """
    parts = []
    for p in packets:
        n = len(p)
        if not 0 < n <= MAX_PACKET:
            raise CellError(f"packet of {n} bytes cannot be framed")
        if type(p) is OffloadPacket:
            kind, gso = p.offload, p.gsoSize
            if kind not in _OFFLOAD_KINDS or not (MIN_GSO_SIZE <= gso <= MAX_PACKET if kind & OFFLOAD_TCP else gso == 0):
                raise CellError(f"offload {kind:#x} with gso_size {gso} cannot be framed")
            parts.append(bytes((0, 0, kind, gso >> 8, gso & 0xFF, n >> 8, n & 0xFF)))
        else:
            parts.append(n.to_bytes(2, "big"))
        parts.append(p)
    return b"".join(parts)


def framePackets(packets, size=RELAY_DATA_LEN):
    """
    @return: a list of cell bodies (each <= C{size} bytes) carrying C{packets}.
    @raise CellError: a packet is empty or larger than 65535 bytes.
    """
    stream = packetRecords(packets)
    return [stream[i:i + size] for i in range(0, len(stream), size)]


class PacketReader:
    """
    Reassembles packets from the bodies of successive PACKET cells of one
    circuit.  C{offload} (set once C{FLOW_GSO} is in force) lets offload
    records through as L{OffloadPacket}s.
    """

    __slots__ = ("_buf", "offload")

    def __init__(self, offload=False):
        self._buf = b""
        self.offload = offload

    def feed(self, body):
        """
        @return: the list of complete packets.
        @raise CellError: a zero-length record, or (with C{offload}) a
            malformed offload record: only a broken or hostile peer sends one.
        """
        buf = self._buf + body if self._buf else body
        packets, pos, n = [], 0, len(buf)
        while pos + 2 <= n:
            size = (buf[pos] << 8) | buf[pos + 1]
            if size == 0:
                if not self.offload:
                    raise CellError("zero-length packet record")
                if pos + _OFFLOAD_HEAD > n:
                    break
                kind, gso = buf[pos + 2], (buf[pos + 3] << 8) | buf[pos + 4]
                size = (buf[pos + 5] << 8) | buf[pos + 6]
                if kind not in _OFFLOAD_KINDS:
                    raise CellError(f"offload record of kind {kind:#04x}")
                if not (gso >= MIN_GSO_SIZE if kind & OFFLOAD_TCP else gso == 0):
                    raise CellError(f"offload record of kind {kind:#04x} with gso_size {gso}")
                if size == 0:
                    raise CellError("zero-length offload record")
                start = pos + _OFFLOAD_HEAD
                if start + size > n:
                    break
                packets.append(OffloadPacket(buf[start:start + size], kind, gso))
                pos = start + size
                continue
            if pos + 2 + size > n:
                break
            packets.append(buf[pos + 2:pos + 2 + size])
            pos += 2 + size
        self._buf = buf[pos:]
        return packets
