"""Packet mode records with offload (FLOW_GSO): round trips, what the reader refuses, its bounded buffer."""

from hypothesis import given, settings, strategies as st
from twisted.trial import unittest

from meshvpn.onion.cells import RELAY_DATA_LEN, CellError
from meshvpn.onion.packets import (
    MIN_GSO_SIZE,
    OFFLOAD_CSUM,
    OFFLOAD_TCP,
    OffloadPacket,
    PacketReader,
    framePackets,
    packetCellCount,
    packetRecords,
)

packet = st.binary(min_size=1, max_size=3000)
offloaded = st.builds(lambda p, tcp, gso: OffloadPacket(p, OFFLOAD_CSUM | OFFLOAD_TCP, gso) if tcp
                      else OffloadPacket(p, OFFLOAD_CSUM), packet, st.booleans(), st.integers(MIN_GSO_SIZE, 65535))


class OffloadRecordTests(unittest.TestCase):
    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.one_of(packet, offloaded), max_size=12), st.integers(1, RELAY_DATA_LEN))
    def test_roundTrip(self, packets, size):
        bodies = framePackets(packets, size)
        self.assertEqual(len(bodies), packetCellCount(packets, size))
        reader = PacketReader(offload=True)
        out = []
        for b in bodies:
            out += reader.feed(b)
        self.assertEqual(out, packets)
        self.assertEqual([type(p) for p in out], [type(p) for p in packets])
        for mine, theirs in zip(out, packets):
            if type(theirs) is OffloadPacket:
                self.assertEqual((mine.offload, mine.gsoSize), (theirs.offload, theirs.gsoSize))

    def test_olderReaderRefusesOffloadRecords(self):
        """Without FLOW_GSO an offload record is the zero-length record it always refused."""
        stream = packetRecords([OffloadPacket(b"x" * 50, OFFLOAD_CSUM)])
        self.assertRaises(CellError, PacketReader().feed, stream)

    def test_malformedOffloadRecords(self):
        for bad in (b"\0\0\x04\0\0\0\x05xxxxx",  # unknown kind
                    b"\0\0\x02\x05\0\0\x05xxxxx",  # segmentation without the checksum left open
                    b"\0\0\x03\0\0\0\x05xxxxx",  # segmentation with gso_size 0
                    b"\0\0\x03\x02\x17\0\x05xxxxx",  # gso_size 535: 64 KB would be 120+ packets on the far wire
                    b"\0\0\x01\x05\0\0\x05xxxxx",  # gso_size without segmentation
                    b"\0\0\x01\0\0\0\0"):  # empty
            self.assertRaises(CellError, PacketReader(offload=True).feed, bad)
        for kind, gso in ((0x04, 0), (OFFLOAD_CSUM, 3), (OFFLOAD_CSUM | OFFLOAD_TCP, 0), (OFFLOAD_CSUM | OFFLOAD_TCP, 100)):
            self.assertRaises(CellError, packetRecords, [OffloadPacket(b"x", kind, gso)])

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.binary(max_size=RELAY_DATA_LEN), max_size=40))
    def test_anyBodiesBounded(self, bodies):
        """Whatever a hostile peer sends: packets or CellError, and a buffer of at most one record and a cell."""
        reader = PacketReader(offload=True)
        for b in bodies:
            try:
                for p in reader.feed(b):
                    self.assertTrue(0 < len(p) <= 65535)
            except CellError:
                return
            self.assertLessEqual(len(reader._buf), 7 + 65535 + RELAY_DATA_LEN)


class OffloadOnCircuitTests(unittest.TestCase):
    """A circuit of this release carries offload records whole; one without FLOW_GSO never frames them."""

    def test_carriedWhole(self):
        from meshvpn.onion.flow import FLOW_GSO
        from meshvpn.onion.test.test_circuit import Net

        n = Net(self)
        circ = n.built(self)
        n.net.pump()
        self.assertTrue(circ.flowFlags & FLOW_GSO)
        self.assertTrue(n.relayCircuit(n.exit).packetReader.offload)
        big = OffloadPacket(b"\x45" + bytes(64_000), OFFLOAD_CSUM | OFFLOAD_TCP, 1440)
        small = OffloadPacket(b"\x45" + b"a" * 51, OFFLOAD_CSUM)
        packets = [b"plain", big, small, big, b"tail"]
        self.assertEqual(circ.sendPackets(packets), 5)
        for _ in range(10):
            n.net.pump()
            n.clock.advance(0.1)
        self.assertEqual(n.edge.packets, packets)
        self.assertEqual([(type(p), getattr(p, "gsoSize", None)) for p in n.edge.packets],
                         [(bytes, None), (OffloadPacket, 1440), (OffloadPacket, 0), (OffloadPacket, 1440), (bytes, None)])
        self.assertEqual(circ.packetsDropped, 0)

    def test_neverFramedWithoutTheFlag(self):
        from meshvpn.onion import cells
        from meshvpn.onion.flow import FLOW_CC, FLOW_EARLY, FLOW_XON
        from meshvpn.onion.test.test_circuit import Net

        self.patch(cells, "FLOW_KNOWN_FLAGS", FLOW_CC | FLOW_XON | FLOW_EARLY)  # an exit before circuit version 3
        n = Net(self)
        circ, d = n.circuit([n.guard.hopSpec(), n.middle.hopSpec(), n.exit.hopSpec(handshakes=("ntor", "ntor3",
                                                                                              "circuit-2"))])
        self.assertIs(self.successResultOf(d), circ)
        n.net.pump()
        circ.sendPackets([b"one", OffloadPacket(b"\x45" + bytes(3000), OFFLOAD_CSUM | OFFLOAD_TCP, 1000), b"two"])
        n.net.pump()
        self.assertFalse(circ.closed)
        self.assertEqual(n.edge.packets, [b"one", b"two"])
        self.assertEqual(circ.packetsDropped, 1)

    def test_tinySegmentsFromAHostileOriginKillTheCircuit(self):
        """The amplification attack: 64 KB cut at gso_size 1 would leave the exit as 65,000 packets."""
        from meshvpn.onion.test.test_circuit import Net

        n = Net(self)
        circ = n.built(self)
        n.net.pump()
        packet = b"\x45" + bytes(20000)
        # Framed by hand, past packetRecords' own check, as a hostile client would.
        circ._sendPacketStream(b"\0\0\x03\0\x01" + len(packet).to_bytes(2, "big") + packet)
        for _ in range(5):
            n.net.pump()
            n.clock.advance(0.1)
        self.assertEqual(n.edge.packets, [])
        self.assertTrue(circ.closed)
