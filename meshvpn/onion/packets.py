"""Packet mode framing: IP packets in RELAY PACKET cells.

Packets are written as a byte stream of C{length(2) | packet} records, cut
into cell bodies of the circuit's data size (494 bytes, 488 to a CGO hop); a batch ends on a packet boundary (the last
cell is short) unless the circuit window cuts it, so nothing waits for more traffic.  Small packets (TCP ACKs)
share cells; a 1420-byte packet takes 2.88 cells on average.  The reader
reassembles across cells; its buffer never exceeds one maximum-size packet.
"""

from meshvpn.onion.cells import RELAY_DATA_LEN, CellError

MAX_PACKET = 65535


def packetCellCount(packets, size=RELAY_DATA_LEN):
    """Cells of C{size} data bytes needed to carry C{packets} in one batch."""
    total = sum(2 + len(p) for p in packets)
    return -(-total // size)


def packetRecords(packets):
    """
    @return: the byte stream of C{length(2) | packet} records carrying C{packets}.
    @raise CellError: a packet is empty or larger than 65535 bytes.
    """
    parts = []
    for p in packets:
        n = len(p)
        if not 0 < n <= MAX_PACKET:
            raise CellError(f"packet of {n} bytes cannot be framed")
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
    """Reassembles packets from the bodies of successive PACKET cells of one circuit."""

    __slots__ = ("_buf",)

    def __init__(self):
        self._buf = b""

    def feed(self, body):
        """
        @return: the list of complete packets.
        @raise CellError: a zero-length record (only a broken or hostile peer sends one).
        """
        buf = self._buf + body if self._buf else body
        packets, pos, n = [], 0, len(buf)
        while pos + 2 <= n:
            size = int.from_bytes(buf[pos:pos + 2], "big")
            if size == 0:
                raise CellError("zero-length packet record")
            if pos + 2 + size > n:
                break
            packets.append(buf[pos + 2:pos + 2 + size])
            pos += 2 + size
        self._buf = buf[pos:]
        return packets
