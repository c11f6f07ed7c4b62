"""New streams avoid a circuit that carries a bulk transfer, within their own isolation key."""

import random

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from meshvpn.circuits.busy import BULK_BYTES_PER_S, MAX_CIRCUITS_PER_KEY, MIN_SPAN_S, BusyCircuits
from meshvpn.circuits.manager import SPARE_REPLACE_DELAY, CircuitManager
from meshvpn.circuits.test.test_manager import Builder, FakeCircuit, relay


class Counters:
    """The stream layer's byte counters, as the manager reads them."""

    def __init__(self):
        self.bytesSent = self.bytesReceived = 0


def counted(circuit):
    circuit.streamHandler = Counters()
    return circuit


class BusyCircuitsTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.busy = BusyCircuits(self.clock)
        self.circuit = counted(FakeCircuit([]))

    def test_firstSightIsQuiet(self):
        self.circuit.streamHandler.bytesReceived = 10 ** 9
        self.assertEqual(self.busy.rate(self.circuit), 0)

    def test_rateBetweenSamples(self):
        self.busy.rate(self.circuit)
        self.clock.advance(0.5)
        self.circuit.streamHandler.bytesReceived += 1_000_000
        self.circuit.streamHandler.bytesSent += 24_000
        self.assertEqual(self.busy.rate(self.circuit), 2_048_000)
        self.assertTrue(self.busy.busy(self.circuit))

    def test_burstOfRequestsKeepsTheLastRate(self):
        """Requests closer together than MIN_SPAN_S read the rate measured last, not a noisy one."""
        self.busy.rate(self.circuit)
        self.clock.advance(1)
        self.circuit.streamHandler.bytesReceived += 10 * BULK_BYTES_PER_S
        first = self.busy.rate(self.circuit)
        self.clock.advance(MIN_SPAN_S / 10)
        self.assertEqual(self.busy.rate(self.circuit), first)

    def test_quietAgainWhenTheTransferEnds(self):
        self.busy.rate(self.circuit)
        self.clock.advance(1)
        self.circuit.streamHandler.bytesReceived += 10 * BULK_BYTES_PER_S
        self.assertTrue(self.busy.busy(self.circuit))
        self.clock.advance(1)
        self.assertFalse(self.busy.busy(self.circuit))

    def test_noStreamLayerIsQuiet(self):
        bare = FakeCircuit([])
        self.busy.rate(bare)
        self.clock.advance(1)
        self.assertFalse(self.busy.busy(bare))

    def test_chooseFirstQuietElseLeastBusy(self):
        a, b, c = (counted(FakeCircuit([])) for _ in range(3))
        pairs = [(a, "pa"), (b, "pb"), (c, "pc")]
        for circuit in (a, b, c):
            self.busy.rate(circuit)
        self.clock.advance(1)
        a.streamHandler.bytesReceived = 3 * BULK_BYTES_PER_S
        b.streamHandler.bytesReceived = 2 * BULK_BYTES_PER_S
        self.assertEqual(self.busy.choose(pairs), ((c, "pc"), False))
        self.clock.advance(1)
        a.streamHandler.bytesReceived += 3 * BULK_BYTES_PER_S
        b.streamHandler.bytesReceived += 2 * BULK_BYTES_PER_S
        c.streamHandler.bytesReceived += 4 * BULK_BYTES_PER_S
        self.assertEqual(self.busy.choose(pairs), ((b, "pb"), True))


class CountingBuilder(Builder):
    def __call__(self, path):
        return super().__call__(path).addCallback(counted)


class ManagerAvoidsBulkTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.relays = [relay(i, ("guard", "middle", "exit", "packet-exit")) for i in range(1, 9)]
        self.builder = CountingBuilder(self.clock)
        self.manager = CircuitManager(self.clock, lambda: defer.succeed(self.relays), self.builder,
                                      spares=2, rng=random.Random(2))
        self.manager.startService()
        self.addCleanup(self.manager.stopService)
        self.clock.advance(0.01)  # the spares are built

    def settle(self):
        """Taken spares are replaced (a moment later, then built)."""
        for _ in range(3):
            self.clock.advance(SPARE_REPLACE_DELAY)
            self.clock.advance(self.builder.delay)

    def get(self, key="alice", packets=False):
        return self.successResultOf(self.manager.getCircuit(isolation=key, packets=packets))

    def download(self, circuit, seconds=1.0):
        """C{circuit} carries a bulk transfer for C{seconds}."""
        self.clock.advance(seconds)
        circuit.streamHandler.bytesReceived += int(4 * BULK_BYTES_PER_S * seconds)

    def test_quietCircuitKeepsItsStreams(self):
        first = self.get()
        self.settle()
        self.clock.advance(1)
        first.streamHandler.bytesReceived += 1000  # interactive traffic
        self.assertIs(self.get(), first)
        self.assertEqual(len(self.manager._spare), 2)

    def test_newStreamTakesASpareBesideABulkTransfer(self):
        bulk = self.get()
        self.download(bulk)
        quiet = self.get()
        self.assertIsNot(quiet, bulk)
        self.assertEqual([c for c, _ in self.manager._assigned["alice"]], [bulk, quiet])
        # Later streams of the key go to the quiet one while the download runs.
        self.download(bulk)
        self.assertIs(self.get(), quiet)
        # The taken spare is replaced, as for any stream.
        self.settle()
        self.assertEqual(len(self.manager._spare), 2)

    def test_neverAnotherKeysCircuit(self):
        """Isolation holds: the quiet circuit is a spare, never a circuit another key uses."""
        bob = self.get("bob")
        bulk = self.get("alice")
        self.settle()
        self.download(bulk)
        quiet = self.get("alice")
        self.assertNotIn(quiet, (bob, bulk))
        self.assertNotIn(quiet, [c for c, _ in self.manager._assigned["bob"]])
        self.assertIs(self.get("bob"), bob)

    def test_boundedCircuitsPerKey(self):
        """Once the key has MAX_CIRCUITS_PER_KEY circuits and all are busy, the least busy one; no spare taken."""
        circuits = [self.get()]
        while len(circuits) < MAX_CIRCUITS_PER_KEY:
            self.settle()
            for c in circuits:
                self.download(c, 0.5)
            circuits.append(self.get())
        self.settle()
        spares = len(self.manager._spare)
        self.clock.advance(1)
        for i, c in enumerate(circuits):
            c.streamHandler.bytesReceived += (i + 2) * BULK_BYTES_PER_S
        self.assertIs(self.get(), circuits[0])
        self.assertEqual(len(self.manager._assigned["alice"]), MAX_CIRCUITS_PER_KEY)
        self.assertEqual(len(self.manager._spare), spares)

    def test_noSpareMeansNoBuild(self):
        """A stream never waits for a build to avoid a busy circuit: without a spare it shares."""
        bulk = self.get()
        self.manager.spares = 0
        self.manager._spare = []
        builds = len(self.builder.calls)
        self.download(bulk)
        self.assertIs(self.get(), bulk)
        self.assertEqual(len(self.builder.calls), builds)

    def test_packetsStayOnOneCircuit(self):
        vpn = self.get(packets=True)
        self.download(vpn)
        self.assertIs(self.get(packets=True), vpn)


class SpareApartTests(unittest.TestCase):
    def test_spareSharingFewestRelaysWithTheBusyCircuit(self):
        clock = Clock()
        manager = CircuitManager(clock, lambda: defer.succeed([]), CountingBuilder(clock), spares=0)
        busy = [relay(1), relay(2), relay(3)]
        near = counted(FakeCircuit([relay(1), relay(2), relay(4)]))
        far = counted(FakeCircuit([relay(1), relay(5), relay(6)]))
        manager._spare = [(near, near.path), (far, far.path)]
        circuit, _ = manager._takeSpare(None, False, set(), apart=busy)
        self.assertIs(circuit, far)
        self.assertEqual(manager._spare, [(near, near.path)])
