"""The circuit manager with fake circuits on task.Clock: spares, isolation, retries, rebuilds."""

import random

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from meshvpn.errors import NoPath
from meshvpn.circuits.manager import RECENT_TIMES, CircuitBuildFailed, CircuitManager
from meshvpn.circuits.guards import GuardSet
from meshvpn.circuits.pathselect import RelayInfo


def relay(n, roles=("guard", "middle", "exit"), accepts=None):
    return RelayInfo(nodeId=bytes([n]) * 32, host=f"198.{18 + n}.0.1", roles=frozenset(roles), bandwidth=1000,
                     exitAccepts=accepts)


class FakeCircuit:
    streamHandler = None

    def __init__(self, path):
        self.path = path
        self._closed = defer.Deferred()
        self.closedWith = None

    def whenClosed(self):
        d = defer.Deferred()
        self._closed.addBoth(lambda r: (d.callback(r), r)[1])
        return d

    def close(self, reason):
        if self.closedWith is None:
            self.closedWith = reason
            self._closed.callback(reason)


class Builder:
    def __init__(self, clock):
        self.clock = clock
        self.calls = []
        self.failHop = {}  # node id -> hop index to fail at
        self.failExtendTo = set()  # node ids an extension to fails (a TRUNCATED, charged to no hop)
        self.hang = False
        self.hangThrough = set()  # guard node ids whose builds never finish (a dial to a host that drops SYNs)
        self.delay = 0.01

    def __call__(self, path):
        self.calls.append(path)
        for hop, r in enumerate(path):
            if r.nodeId in self.failHop:
                return defer.fail(CircuitBuildFailed("hop refused", hop=hop))
            if hop and r.nodeId in self.failExtendTo:
                return defer.fail(CircuitBuildFailed("TRUNCATED: CONNECTFAILED", extending=hop))
        if self.hang or path[0].nodeId in self.hangThrough:
            return defer.Deferred()
        d = defer.Deferred()
        self.clock.callLater(self.delay, d.callback, FakeCircuit(path))
        return d


class CircuitManagerTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.relays = [relay(i) for i in range(1, 9)]
        self.builder = Builder(self.clock)
        self.manager = CircuitManager(
            self.clock, lambda: defer.succeed(self.relays), self.builder,
            guards=GuardSet(self.mktemp(), self.clock, random.Random(1)), spares=2, rng=random.Random(2),
        )
        self.manager.startService()
        self.addCleanup(self.manager.stopService)

    def test_sparesBuiltAhead(self):
        self.clock.advance(0.01)
        self.clock.advance(5)
        self.clock.advance(0.01)
        self.assertEqual(len(self.manager._spare), 2)
        d = self.manager.getCircuit(("198.18.0.9", 80))
        self.assertIsInstance(self.successResultOf(d), FakeCircuit)
        self.assertEqual(len(self.manager._spare), 1)

    def test_takenSpareReplacedAMomentLater(self):
        """The replacement for a taken spare is not built in the same turn (it would compete with the new stream)."""
        from meshvpn.circuits.manager import SPARE_REPLACE_DELAY

        self.clock.advance(0.01)
        self.assertEqual(len(self.manager._spare), 2)
        builds = len(self.builder.calls)
        self.successResultOf(self.manager.getCircuit(("198.18.0.9", 80)))
        self.clock.advance(0)
        self.assertEqual(len(self.builder.calls), builds)
        self.clock.advance(SPARE_REPLACE_DELAY)
        self.assertEqual(len(self.builder.calls), builds + 1)
        self.clock.advance(0.01)
        self.assertEqual(len(self.manager._spare), 2)

    def test_isolationKeysGetDifferentCircuits(self):
        a = self.manager.getCircuit(isolation="alice")
        b = self.manager.getCircuit(isolation="bob")
        self.clock.advance(0.01)
        ca, cb = self.successResultOf(a), self.successResultOf(b)
        self.assertIsNot(ca, cb)
        self.assertIs(self.successResultOf(self.manager.getCircuit(isolation="alice")), ca)

    def test_exitMustFitTarget(self):
        self.relays = [relay(1, ("guard",)), relay(2, ("middle",)), relay(3, ("exit",), accepts=lambda t: t[1] == 443),
                       relay(4, ("exit",), accepts=lambda t: t[1] == 80), relay(5, ("middle",))]
        # A manager without spares, so every circuit comes from these relays.
        self.manager = CircuitManager(self.clock, lambda: defer.succeed(self.relays), self.builder, spares=0)
        d = self.manager.getCircuit(("198.18.0.9", 80))
        self.clock.advance(0.01)
        self.assertEqual(self.successResultOf(d).path[2].nodeId, bytes([4]) * 32)
        self.failureResultOf(self.manager.getCircuit(("198.18.0.9", 25)), NoPath)

    def test_failedHopExcludedOnRetry(self):
        self.builder.failHop = {r.nodeId: 0 for r in self.relays[:3]}
        d = self.manager.getCircuit()
        for _ in range(5):
            self.clock.advance(0.01)
        circuit = self.successResultOf(d)
        self.assertFalse({r.nodeId for r in circuit.path} & set(self.builder.failHop))

    def test_timeoutThenGiveUp(self):
        """Four attempts, each allowed half as long again as the last (10, 15, 22.5, 33.75 s), then a clear failure."""
        self.builder.hang = True
        d = self.manager.getCircuit(isolation="x")
        for step in (10, 15, 22.5):
            self.clock.advance(step)
            self.assertNoResult(d)
        self.clock.advance(33.75)
        self.assertIn("timed out after 33.8s", self.failureResultOf(d, CircuitBuildFailed).getErrorMessage())
        self.assertEqual(self.manager.guards.status()["down"], 0)  # a timeout is charged to no guard

    def test_deadCircuitIsReplacedAndTimed(self):
        d = self.manager.getCircuit(isolation="k")
        self.clock.advance(0.01)
        first = self.successResultOf(d)
        first.close("middle died")
        self.clock.advance(0.01)
        second = self.successResultOf(self.manager.getCircuit(isolation="k"))
        self.assertIsNot(first, second)
        self.assertNotEqual(second.path[1].nodeId, first.path[1].nodeId)  # the dead middle is avoided
        self.assertEqual(len(self.manager.rebuildTimes), 1)
        self.assertIn("rebuild_times_s", self.manager.status())

    def test_buildTimesKeptBounded(self):
        """A client that builds without end keeps only the recent build times (what status shows)."""
        for i in range(RECENT_TIMES + 15):
            d = self.manager.getCircuit(isolation=f"k{i}")
            self.clock.advance(0.01)
            self.successResultOf(d)
        self.assertEqual(len(self.manager.buildTimes), RECENT_TIMES)
        self.assertEqual(len(self.manager.status()["build_times_s"]), RECENT_TIMES)

    def test_stopClosesEverything(self):
        d = self.manager.getCircuit()
        self.clock.advance(0.01)
        circuit = self.successResultOf(d)
        self.manager.stopService()
        self.assertEqual(circuit.closedWith, "finished")


class SpareTests(unittest.TestCase):
    def test_deadSpareIsDroppedAndReplaced(self):
        clock = Clock()
        relays = [relay(i) for i in range(1, 9)]
        builder = Builder(clock)
        manager = CircuitManager(clock, lambda: defer.succeed(relays), builder, spares=3, rng=random.Random(3))
        manager.startService()
        self.addCleanup(manager.stopService)
        self.assertEqual(manager._building, 3)  # all three started at once
        clock.advance(0.01)
        self.assertEqual(len(manager._spare), 3)
        dead = manager._spare[0][0]
        dead.close("guard link closed")
        self.assertNotIn(dead, manager.circuits())
        clock.advance(0)
        clock.advance(0.01)
        self.assertEqual(len(manager._spare), 3)
        self.assertNotIn(dead, [self.successResultOf(manager.getCircuit(isolation=k)) for k in "abc"])


class PacketModeTests(unittest.TestCase):
    def test_packetCircuitsUsePacketExits(self):
        clock = Clock()
        relays = [relay(1, ("guard",)), relay(2, ("middle",)), relay(3, ("exit",)), relay(4, ("exit", "packet-exit"))]
        manager = CircuitManager(clock, lambda: defer.succeed(relays), Builder(clock), spares=0, rng=random.Random(1))
        streams = manager.getCircuit(isolation="k")
        clock.advance(0.01)
        packets = manager.getCircuit(isolation="k", packets=True)
        clock.advance(0.01)
        streamCircuit, packetCircuit = self.successResultOf(streams), self.successResultOf(packets)
        self.assertIn("packet-exit", packetCircuit.path[2].roles)
        if "packet-exit" not in streamCircuit.path[2].roles:
            self.assertIsNot(streamCircuit, packetCircuit)
