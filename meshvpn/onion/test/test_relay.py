"""The relay side: per-peer limits, CREATE2 rate, bounded queues with
backpressure across links, and hostile cells that close only their circuit."""

from hypothesis import given, settings, strategies as st
from twisted.internet import task
from twisted.trial import unittest

from meshvpn.onion import cells as C
from meshvpn.onion.cells import DestroyReason
from meshvpn.onion.origin import OriginCircuit
from meshvpn.onion.switch import SwitchLimits
from meshvpn.tools.onionfakes import MemoryNetwork, TestRelay
from meshvpn.onion.test.test_circuit import EchoEdge, Net


class Limits(unittest.TestCase):
    def _world(self, limits):
        clock = task.Clock()
        net = MemoryNetwork(clock)
        d = {}
        relay = TestRelay(net, clock, "relay", limits=limits, directory=d)
        client = TestRelay(net, clock, "client", directory=d)
        link = client.linkTo(relay.nodeId)
        return clock, net, relay, client, link

    def _build(self, net, relay, client, link, count):
        results = []
        for i in range(count):
            circ = OriginCircuit(client.switch, link, [relay.hopSpec()])
            circ.build().addBoth(results.append)
        net.pump()
        return results

    def test_circuitsPerPeer(self):
        clock, net, relay, client, link = self._world(SwitchLimits(maxCircuitsPerPeer=3, createBurst=100))
        results = self._build(net, relay, client, link, 5)
        ok = [r for r in results if isinstance(r, OriginCircuit)]
        refused = [r for r in results if not isinstance(r, OriginCircuit)]
        self.assertEqual(len(ok), 3)
        self.assertEqual(len(refused), 2)
        for f in refused:
            self.assertEqual(f.value.reason, DestroyReason.RESOURCELIMIT)
        # closing one frees a slot
        ok[0].close()
        net.pump()
        self.assertEqual(len([r for r in self._build(net, relay, client, link, 1) if isinstance(r, OriginCircuit)]), 1)

    def test_createRate(self):
        clock, net, relay, client, link = self._world(SwitchLimits(createRate=2.0, createBurst=4))
        results = self._build(net, relay, client, link, 6)
        self.assertEqual(len([r for r in results if isinstance(r, OriginCircuit)]), 4)
        self.assertEqual(relay.switch.counters["create_refused"], 2)
        clock.advance(1.0)  # two more tokens
        results = self._build(net, relay, client, link, 3)
        self.assertEqual(len([r for r in results if isinstance(r, OriginCircuit)]), 2)

    def test_switchingIsATableLookup(self):
        """Cells are switched by each channel's dict: circuit id -> circuit end."""
        n = Net(self)
        circs = []
        for i in range(50):
            c, d = n.circuit()
            circs.append(self.successResultOf(d))
        for channel in n.middle.switch.channels():
            self.assertEqual(len(channel.circuits), 50)
            self.assertIsInstance(channel.circuits, dict)


class Backpressure(unittest.TestCase):
    def test_slowReaderDoesNotGrowQueuesWithoutBound(self):
        """
        The middle's link to the exit stops taking cells.  Its queue fills to
        the high-water mark, the guard's link into the middle is paused, and
        the middle's queue never exceeds the hard limit; when the exit reads
        again, everything flows and the pause is lifted.
        """
        limits = SwitchLimits(queueHigh=50, queueLow=10, queueLimit=400, extendAllowPrivate=True)
        n = Net(self)
        n.middle.switch.limits = limits
        circ = n.built(self)
        middleToExit = n.channel(n.middle, n.exit)
        middleFromGuard = n.channel(n.middle, n.guard)
        middleToExit.link.blockWrites()
        peak = 0
        for i in range(30):
            circ.sendPackets([b"w" * 1400] * 5)
            n.net.pump()
            peak = max(peak, middleToExit.queued())
        self.assertTrue(middleFromGuard.link.readPaused)
        self.assertLessEqual(peak, limits.queueLimit)
        self.assertGreaterEqual(n.middle.switch.counters["link_pauses"], 1)
        self.assertFalse(circ.closed)
        middleToExit.link.unblockWrites()
        n.net.pump()
        self.assertFalse(middleFromGuard.link.readPaused)
        self.assertEqual(middleToExit.queued(), 0)
        self.assertGreater(len(n.edge.packets), 0)
        self.assertFalse(circ.closed)

    def test_queueLimitDestroysTheOverfillingCircuit(self):
        """A peer that ignores the pause gets its circuit destroyed, not the relay's memory."""
        limits = SwitchLimits(queueHigh=5, queueLow=1, queueLimit=20, extendAllowPrivate=True)
        n = Net(self)
        n.middle.switch.limits = limits
        circ = n.built(self)
        middleToExit = n.channel(n.middle, n.exit)
        middleFromGuard = n.channel(n.middle, n.guard)
        middleToExit.link.blockWrites()
        middleFromGuard.link.pauseProducing = lambda: None  # ignores the pause
        for i in range(10):
            circ.sendPackets([b"w" * 1400] * 5)
            n.net.pump()
        self.assertLessEqual(middleToExit.queued(), limits.queueLimit + 1)
        self.assertGreater(n.middle.switch.counters["queue_overflows"], 0)
        closed = self.successResultOf(circ.whenClosed())
        self.assertEqual(closed.reason, DestroyReason.RESOURCELIMIT)


class Hostile(unittest.TestCase):
    """Malformed cells on a link close only the circuit they name."""

    def setUp(self):
        self.n = Net(self)
        self.victim = self.n.built(self)
        self.bystander = OriginCircuit(self.n.client.switch, self.n.guardLink,
                                       [self.n.guard.hopSpec(), self.n.middle.hopSpec(), self.n.exit.hopSpec()])
        d = self.bystander.build()
        self.n.net.pump()
        self.successResultOf(d)

    def _bystanderWorks(self):
        before = len(self.n.edge.packets)
        self.assertEqual(self.bystander.sendPackets([b"still fine"]), 1)
        self.n.net.pump()
        self.assertEqual(self.n.edge.packets[before:], [b"still fine"])

    def _guardEnd(self):
        return self.n.channel(self.n.guard, self.n.client).circuits.get(self.victim.circId)

    @settings(max_examples=150, deadline=None)
    @given(st.integers(0, 255), st.binary(min_size=0, max_size=600), st.booleans())
    def test_randomCellsOnTheVictimsCircuit(self, command, body, exactSize):
        if self.victim.closed or self._guardEnd() is None:
            self.setUp()
        cell = self.victim.prefix + bytes([command]) + body
        if exactSize:
            cell = (cell + bytes(514))[:514]
        if command == C.Command.CREATE2 or (command == C.Command.PADDING and len(cell) == 514):
            return  # a CREATE2 here is a new (refused) circuit, PADDING is ignored: neither is malformed
        self.n.guardLink.sendCells([cell])
        self.n.net.pump()
        self._bystanderWorks()
        self.assertFalse(self.bystander.closed)
        # the victim's circuit is gone at the guard (and, unless the origin
        # itself sent DESTROY, the origin was told)
        self.assertIsNone(self._guardEnd())
        if command != C.Command.DESTROY:
            self.assertTrue(self.victim.closed)

    @settings(max_examples=100, deadline=None)
    @given(st.binary(min_size=514, max_size=514))
    def test_randomCellsAnywhere(self, cell):
        if cell[:4] == self.bystander.prefix:
            return
        self.n.guardLink.sendCells([cell])
        self.n.net.pump()
        self._bystanderWorks()

    def test_garbageRelayBodyAtExit(self):
        """A recognized cell with a malformed body closes the circuit at the exit."""
        self.victim.sendRelay(C.RelayCommand.BEGIN, 0, b"no stream id")  # stream id 0 is illegal
        self.n.net.pump()
        closed = self.successResultOf(self.victim.whenClosed())
        self.assertEqual(closed.reason, DestroyReason.PROTOCOL)
        self._bystanderWorks()
