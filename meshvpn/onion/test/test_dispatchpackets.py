"""Runs of PACKET cells at a circuit's edge: parsed in place and reassembled as one byte stream.

The dispatcher checks each PACKET cell of a run as unpackRelay would (stream
id 0, a length within the cell) without building a header per cell; these
tests hold it to that for any packets and any damage to one cell's header.
"""

from hypothesis import given, settings, strategies as st
from twisted.internet import task
from twisted.trial import unittest

from meshvpn.onion.cells import RELAY_DATA_LEN, CellError, Command, RelayCommand, packRelay
from meshvpn.onion.dispatch import RelayDispatcher
from meshvpn.onion.packets import framePackets


class Edge(RelayDispatcher):
    """A circuit end that records what it delivers and sends."""

    def __init__(self):
        super().__init__(task.Clock())
        self.delivered = []
        self.batches = 0
        self.sent = []

    def sendRelay(self, command, streamId, data):
        self.sent.append((command, streamId, data))
        return True

    def _packetsArrived(self, packets):
        self.batches += 1
        self.delivered.extend(packets)

    def _streamArrived(self, command, streamId, data):
        self.sent.append(("stream", command, streamId, data))


def _run(packets, size=RELAY_DATA_LEN):
    return [(0, packRelay(RelayCommand.PACKET, 0, body), bytes(8)) for body in framePackets(packets, size)]


_packets = st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=12)


class PacketRuns(unittest.TestCase):
    @given(_packets, st.sampled_from([RELAY_DATA_LEN, 488]))
    def test_everyPacketOnceInOrderInOneBatch(self, packets, size):
        edge = Edge()
        edge._dispatchRun(Command.RELAY, _run(packets, size), 0)
        self.assertEqual(edge.delivered, packets)
        self.assertEqual(edge.batches, 1)
        self.assertEqual(edge.packetReader._buf, b"")

    def test_aSendmeEveryHundredCells(self):
        edge = Edge()
        entries = _run([b"x" * 1400] * 40)  # 115 cells
        edge._dispatchRun(Command.RELAY, entries, 0)
        self.assertEqual(len(edge.delivered), 40)
        self.assertEqual([c for c, _, _ in edge.sent], [RelayCommand.SENDME])

    @settings(max_examples=200)
    @given(_packets, st.data())
    def test_damagedHeaderIsRefused(self, packets, data):
        entries = _run(packets)
        k = data.draw(st.integers(0, len(entries) - 1))
        hop, plain, tag = entries[k]
        if data.draw(st.booleans()):
            damaged = plain[:11] + data.draw(st.integers(1, 65535)).to_bytes(2, "big") + plain[13:]  # a stream id
        else:
            damaged = plain[:13] + data.draw(st.integers(RELAY_DATA_LEN + 1, 65535)).to_bytes(2, "big") + plain[15:]
        entries[k] = (hop, damaged, tag)
        edge = Edge()
        self.assertRaises(CellError, edge._dispatchRun, Command.RELAY, entries, 0)
