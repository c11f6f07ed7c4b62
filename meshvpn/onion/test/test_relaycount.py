"""Cells relayed: a relay's count of the cells it passed on along circuits through it, exact.

The middle of a 3-hop circuit over in-memory links carries only that
circuit, and after the build every cell of it is the exit's or the
client's, none the middle's: so the cells the guard sent it are exactly
the cells it relayed forward, and the cells the exit sent it exactly those
it relayed backward.  Each path of the relay is driven: one cell at a
time, runs of many cells, and a run with a cell for the middle itself in
the middle of it (not relayed, not counted).
"""

from twisted.trial import unittest

from meshvpn.onion.cells import RelayCommand
from meshvpn.onion.test.test_circuit import Net


class RelayedCells(unittest.TestCase):
    def setUp(self):
        self.n = n = Net(self)
        self.circuit = n.built(self)
        self.got = []
        self.circuit.setPacketReceiver(self.got.extend)
        # the middle's links: what the guard sends it and what it sends the guard, likewise toward the exit
        self.fromGuard = n.channel(n.middle, n.guard).link.peer
        self.toGuard = n.channel(n.middle, n.guard).link
        self.fromExit = n.channel(n.middle, n.exit).link.peer
        self.toExit = n.channel(n.middle, n.exit).link
        self.mark()

    def mark(self):
        self.links = [link.cellsSent for link in (self.fromGuard, self.toExit, self.fromExit, self.toGuard)]
        self.counted = self.relayed(self.n.middle)

    def relayed(self, relay):
        c = relay.switch.counters
        return c["cells_relayed_forward"], c["cells_relayed_backward"]

    def deltas(self):
        now = [link.cellsSent for link in (self.fromGuard, self.toExit, self.fromExit, self.toGuard)]
        fromGuard, toExit, fromExit, toGuard = (a - b for a, b in zip(now, self.links))
        forward, backward = (a - b for a, b in zip(self.relayed(self.n.middle), self.counted))
        return fromGuard, toExit, fromExit, toGuard, forward, backward

    def test_oneCellAtATime(self):
        for i in range(300):  # one packet, one cell each; SENDMEs flow both ways among them
            self.circuit.sendPacket(i.to_bytes(4, "big") * 100)
            self.n.net.pump()
        self.assertEqual(len(self.got), 300)
        fromGuard, toExit, fromExit, toGuard, forward, backward = self.deltas()
        self.assertGreaterEqual(fromGuard, 300)
        self.assertEqual(forward, fromGuard)
        self.assertEqual(forward, toExit)
        self.assertGreaterEqual(fromExit, 300)
        self.assertEqual(backward, fromExit)
        self.assertEqual(backward, toGuard)

    def test_runs(self):
        """A bulk transfer: runs of cells through the middle, counted once per run, still exact."""
        packets = [bytes([i % 251]) * 1400 for i in range(400)]  # 1402-byte records: about 2.8 cells each
        for k in range(0, len(packets), 40):
            self.circuit.sendPackets(packets[k:k + 40])
            self.n.net.pump()
        self.assertEqual(len(self.got), 400)
        fromGuard, toExit, fromExit, toGuard, forward, backward = self.deltas()
        self.assertGreaterEqual(forward, 400 * 1402 // 494)
        self.assertEqual((forward, backward), (fromGuard, fromExit))
        self.assertEqual((forward, backward), (toExit, toGuard))
        # the guard relays the same cells; the exit, where the circuit ends, relays none
        self.assertEqual(self.relayed(self.n.exit), (0, 0))
        guardForward, guardBackward = self.relayed(self.n.guard)
        self.assertGreaterEqual(guardForward, forward)
        self.assertGreaterEqual(guardBackward, backward)

    def test_cellForTheMiddleInARun(self):
        """A DROP for the middle between packets for the exit, in one turn: every cell but that one is relayed."""
        self.circuit.sendPackets([b"a" * 400] * 5)
        self.circuit.sendRelay(RelayCommand.DROP, 0, b"", hop=1)
        self.circuit.sendPackets([b"b" * 400] * 5)
        self.n.net.pump()
        self.assertEqual(len(self.got), 10)
        fromGuard, toExit, fromExit, toGuard, forward, backward = self.deltas()
        self.assertEqual(forward, fromGuard - 1)
        self.assertEqual(forward, toExit)
        self.assertEqual((backward, backward), (fromExit, toGuard))
