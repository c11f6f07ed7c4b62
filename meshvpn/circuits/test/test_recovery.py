"""The circuit manager under the chaos bench's faults, on task.Clock: a dead exit, a hung guard, a slow machine, dead middles.

Each test runs the fault against the manager with fake circuits (the real
processes run in L{meshvpn.circuits.test.test_processes} and the chaos bench).
"""

import random

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from meshvpn.circuits import avoid as A
from meshvpn.circuits import manager as M
from meshvpn.circuits.guards import GuardSet
from meshvpn.circuits.manager import CircuitManager
from meshvpn.circuits.test.test_manager import Builder, relay
from meshvpn.onion.cells import DestroyReason
from meshvpn.onion.destroy import CircuitDestroyed


def manager(test, spares=0, relays=None, guards=True, seed=2):
    clock = Clock()
    relays = relays or [relay(i) for i in range(1, 11)]
    builder = Builder(clock)
    m = CircuitManager(clock, lambda: defer.succeed(relays), builder,
                       guards=GuardSet(test.mktemp(), clock, random.Random(1)) if guards else None,
                       spares=spares, rng=random.Random(seed))
    m.startService()
    test.addCleanup(m.stopService)
    return clock, builder, m, relays


def circuitFor(test, clock, m, key, target=None):
    d = m.getCircuit(target=target, isolation=key)
    clock.advance(0.01)
    return test.successResultOf(d)


class DeadExitTests(unittest.TestCase):
    def test_replacementAvoidsMiddleAndExit(self):
        """A DESTROY from the network names no relay: either hop may be the dead one, so the replacement avoids both."""
        for seed in range(10):
            clock, builder, m, _ = manager(self, seed=seed)
            first = circuitFor(self, clock, m, "k")
            first.close(CircuitDestroyed(DestroyReason.CHANNEL_CLOSED, "destroyed by the network"))
            clock.advance(0.01)
            second = self.successResultOf(m.getCircuit(isolation="k"))
            self.assertNotIn(first.path[2].nodeId, [r.nodeId for r in second.path[1:]])
            self.assertNotIn(first.path[1].nodeId, [r.nodeId for r in second.path[1:]])
            self.assertEqual(second.path[0].nodeId, first.path[0].nodeId)  # the guard is kept

    def test_suspectsUsedWhenNothingElseFits(self):
        """Soft: with one exit in the directory the replacement still goes through it (no NoPath)."""
        relays = [relay(1, ("guard",)), relay(2, ("middle",)), relay(3, ("middle",)), relay(4, ("exit",))]
        clock, builder, m, _ = manager(self, relays=relays)
        first = circuitFor(self, clock, m, "k")
        first.close(CircuitDestroyed(DestroyReason.CHANNEL_CLOSED))
        clock.advance(0.01)
        second = self.successResultOf(m.getCircuit(isolation="k"))
        self.assertEqual(second.path[2].nodeId, relays[3].nodeId)

    def test_deadMiddleStillAvoidedWhenTheExitCannotBe(self):
        """
        Two exits, and the dead circuit's middle was one of them (exits are
        middles too): avoiding both its middle and its exit leaves no exit,
        so the exit suspicion is given up first and the dead one still is not used.
        """
        relays = [relay(1, ("guard",)), relay(2, ("middle",)), relay(3, ("exit", "middle")), relay(4, ("exit", "middle"))]
        for seed in range(10):
            clock, builder, m, _ = manager(self, relays=relays, seed=seed)
            builder.failExtendTo = set()
            first = circuitFor(self, clock, m, "k")
            if first.path[1].nodeId != relays[2].nodeId:
                continue
            first.close(CircuitDestroyed(DestroyReason.CHANNEL_CLOSED))
            clock.advance(0.01)
            second = self.successResultOf(m.getCircuit(isolation="k"))
            self.assertNotIn(relays[2].nodeId, [r.nodeId for r in second.path])
            return
        self.fail("no seed chose relay 3 as the middle")

    def test_streamRetryWaitsForTheReplacement(self):
        """The dead circuit's stream, retried at once, rides the replacement: one build, not two."""
        clock, builder, m, _ = manager(self)
        first = circuitFor(self, clock, m, "k")
        before = len(builder.calls)
        first.close(CircuitDestroyed(DestroyReason.CHANNEL_CLOSED))
        retry = m.getCircuit(isolation="k")
        self.assertNoResult(retry)
        clock.advance(0.01)
        second = self.successResultOf(retry)
        self.assertIsNot(second, first)
        self.assertEqual(len(builder.calls), before + 1)

    def test_sparesUseDistinctExits(self):
        clock, builder, m, relays = manager(self, spares=3)
        clock.advance(0.01)
        exits = [path[-1].nodeId for _, path in m._spare]
        self.assertEqual(len(exits), 3)
        self.assertEqual(len(set(exits)), 3)

    def test_deadExitLeavesAWarmSpare(self):
        """The exit of one spare dies: another spare, through another exit, takes the stream at once."""
        clock, builder, m, relays = manager(self, spares=2)
        clock.advance(0.01)
        (a, pathA), (b, pathB) = m._spare
        a.close(CircuitDestroyed(DestroyReason.CHANNEL_CLOSED))
        got = self.successResultOf(m.getCircuit(isolation="k"))
        self.assertIs(got, b)
        self.assertNotEqual(pathB[-1].nodeId, pathA[-1].nodeId)


class HungGuardTests(unittest.TestCase):
    def test_silentGuardLinkMarksTheGuardDownOnce(self):
        """Every circuit on a hung guard's link closes at once: the guard is down once, retried after 30 s, not hours."""
        clock, builder, m, _ = manager(self)
        circuits = [circuitFor(self, clock, m, f"k{i}") for i in range(5)]
        guard = circuits[0].path[0].nodeId
        self.assertTrue(all(c.path[0].nodeId == guard for c in circuits))
        for c in circuits:
            c.close(CircuitDestroyed(DestroyReason.CHANNEL_CLOSED, "guard link closed: the guard answered no PING",
                                     hop=0, silent=True))
        clock.advance(0.01)
        entry = next(g for g in m.guards.sample if g.nodeId == guard)
        self.assertEqual(entry.failures, 1)
        fresh = self.successResultOf(m.getCircuit(isolation="k0"))
        self.assertNotEqual(fresh.path[0].nodeId, guard)
        # nor is it a replacement's middle or exit: the next guard's link to it may not know yet
        self.assertIn(guard, m.avoid.avoided())
        for i in range(10):
            c = circuitFor(self, clock, m, f"n{i}")
            self.assertNotIn(guard, [r.nodeId for r in c.path])

    def test_closedGuardLinkIsNotMarkedDown(self):
        """A link that just closed (a restart, an idle close) proves nothing: the next build tries the guard again."""
        clock, builder, m, _ = manager(self)
        c = circuitFor(self, clock, m, "k")
        c.close(CircuitDestroyed(DestroyReason.CHANNEL_CLOSED, "guard link closed", hop=0))
        clock.advance(0.01)
        self.assertEqual(m.guards.status()["down"], 0)

    def test_unansweredStreamRetiresTheCircuit(self):
        clock, builder, m, _ = manager(self)
        c = circuitFor(self, clock, m, "k")
        self.assertTrue(m.streamTimedOut(c))
        other = circuitFor(self, clock, m, "k")
        self.assertIsNot(other, c)
        self.assertEqual(m.status()["stream_timeouts"], 1)
        self.assertFalse(m.streamTimedOut(object()))


class SlowMachineTests(unittest.TestCase):
    def test_slowBuildsDoNotCountGuardsDown(self):
        """
        The fault: a starved machine where every build takes 14 s (over the
        10 s timeout).  Timeouts used to be charged to the guard until the
        client refused to build (NETWORK_UNREACHABLE); now they are charged
        to nobody and the timeout stretches until builds fit.
        """
        clock, builder, m, _ = manager(self)
        builder.delay = 14.0
        d = m.getCircuit(isolation="k")
        for _ in range(30):
            clock.advance(1)
        self.successResultOf(d)
        self.assertEqual(m.guards.status()["down"], 0)
        # Once it has seen enough slow builds, the timeout fits them from the start.
        for i in range(6):
            d = m.getCircuit(isolation=f"s{i}")
            for _ in range(40):
                clock.advance(1)
            self.successResultOf(d)
        self.assertGreaterEqual(m.timeouts.current(), 3 * 14.0)
        self.assertEqual(m.guards.status()["down"], 0)


class DeadMiddleTests(unittest.TestCase):
    def test_failedExtensionAvoidsTheRelayForAWhile(self):
        """
        The fault: a killed middle still listed in the directory.  Its
        guard's TRUNCATED (CONNECTFAILED) used to leave it choosable, five
        failed builds in 25 s; now it is avoided for AVOID_S.
        """
        clock, builder, m, relays = manager(self)
        dead = relays[5].nodeId
        builder.failExtendTo = {dead}
        for i in range(20):
            c = circuitFor(self, clock, m, f"k{i}")
            self.assertNotIn(dead, [r.nodeId for r in c.path])
        tries = [p for p in builder.calls if dead in [r.nodeId for r in p[1:]]]
        self.assertLessEqual(len(tries), 1)
        self.assertEqual(m.avoid.avoided(), [dead] if tries else [])

    def test_hostileGuardCannotAvoidMoreThanAFew(self):
        """
        The attack: a guard answers TRUNCATED to extensions toward every
        relay but its friends.  It gets at most PER_REPORTER relays avoided
        per window, at most MAX_AVOIDED at once; the client keeps building.
        """
        clock, builder, m, relays = manager(self)
        guard = circuitFor(self, clock, m, "first").path[0]
        friends = {relays[8].nodeId, relays[9].nodeId}
        builder.failExtendTo = {r.nodeId for r in relays if r.nodeId not in friends and r.nodeId != guard.nodeId}
        outcomes = []
        for i in range(30):
            m.getCircuit(isolation=f"k{i}").addBoth(outcomes.append)
            clock.advance(1)
        self.assertEqual(len(outcomes), 30)
        self.assertLessEqual(len(m.avoid.avoided()), A.MAX_AVOIDED)
        self.assertGreater(m.avoid.ignored, 0)
        clock.advance(A.AVOID_S)
        self.assertEqual(m.avoid.avoided(), [])


class SmallDirectoryTests(unittest.TestCase):
    def test_noPathClearOfAvoidedRelaysAsksForMore(self):
        """
        The fault (MiddleDiesTests, flaky): the client knew 4 relays, one
        the killed middle; every path ran through it, so every rebuild
        chose it again for a minute, while the relay finder, content that
        one path fitted, sampled again only at its next backed-off round.
        Now a choice that has to take an avoided relay asks for more.
        """
        relays = [relay(i) for i in range(1, 4)]

        class Source:
            asked = 0

            def __call__(self):
                return defer.succeed(relays)

            def refreshSoon(self):
                self.asked += 1

        source = Source()
        clock = Clock()
        m = CircuitManager(clock, source, Builder(clock), spares=0, rng=random.Random(1))
        m.startService()
        self.addCleanup(m.stopService)
        circuitFor(self, clock, m, "a")
        self.assertEqual(source.asked, 0)
        m.avoid.failed(b"r" * 32, relays[1].nodeId)
        circuitFor(self, clock, m, "b")
        self.assertGreater(source.asked, 0)


    def onePathKnown(self):
        """A manager whose directory holds one path (C{relays}, which the test may grow)."""
        relays = [relay(1, ("guard",)), relay(2, ("middle",)), relay(3, ("exit",))]
        clock = Clock()
        builder = Builder(clock)
        m = CircuitManager(clock, lambda: defer.succeed(list(relays)), builder, spares=0, rng=random.Random(1))
        m.startService()
        self.addCleanup(m.stopService)
        return clock, builder, m, relays

    def test_failedReplacementIsTriedAgainOnceTheDirectoryGrows(self):
        """
        The fault (MiddleDiesTests, flaky in CI): the killed middle was in
        every path the client knew, so the replacement's four attempts all
        failed in a second and it was given up; the relay finder learned
        more relays 20 s later, but nothing asked for a replacement again.
        Now it is tried again after 2, 4, 8, 16 and 30 s.
        """
        clock, builder, m, relays = self.onePathKnown()
        guard, middle, exit = relays
        first = circuitFor(self, clock, m, "k")
        builder.failExtendTo = {middle.nodeId}
        first.close(CircuitDestroyed(DestroyReason.CHANNEL_CLOSED, "destroyed by the network"))
        clock.advance(0.01)
        self.assertEqual(list(m.rebuildTimes), [])
        self.assertNotIn("k", m._assigned)
        relays.append(relay(4, ("middle",)))  # the directory's next sampling
        clock.advance(M.REPLACE_RETRY_S[0])
        clock.advance(0.01)
        [(second, path)] = m._assigned["k"]
        self.assertEqual([r.nodeId for r in path], [guard.nodeId, relays[3].nodeId, exit.nodeId])
        self.assertEqual(len(m.rebuildTimes), 1)

    def test_replacementRetriesAreBounded(self):
        """Nothing ever fits: the replacement is tried len(REPLACE_RETRY_S) more times, then left to the next stream."""
        clock, builder, m, relays = manager(self, guards=False)
        first = circuitFor(self, clock, m, "k")
        builder.failHop = {r.nodeId: 0 for r in relays}
        before = len(builder.calls)
        first.close(CircuitDestroyed(DestroyReason.CHANNEL_CLOSED))
        for delay in [0.01, *M.REPLACE_RETRY_S, 120]:
            clock.advance(delay)
        rounds = (len(builder.calls) - before) / m.attempts
        self.assertEqual(rounds, 1 + len(M.REPLACE_RETRY_S))
        self.assertEqual(m._replaceLater, {})
        self.assertEqual([c for c in clock.getDelayedCalls() if c.func == m._replace], [])

    def test_aStreamsOwnCircuitEndsTheRetries(self):
        """A stream built its own circuit for the key while the retry waited: the retry builds nothing."""
        clock, builder, m, relays = self.onePathKnown()
        guard, middle, exit = relays
        first = circuitFor(self, clock, m, "k")
        builder.failExtendTo = {middle.nodeId}
        first.close(CircuitDestroyed(DestroyReason.CHANNEL_CLOSED))
        clock.advance(0.01)
        relays.append(relay(4, ("middle",)))
        circuitFor(self, clock, m, "k")
        before = len(builder.calls)
        clock.advance(M.REPLACE_RETRY_S[0] + 0.01)
        self.assertEqual(len(builder.calls), before)
        self.assertEqual(len(m._assigned["k"]), 1)


class AvoidanceBoundsTests(unittest.TestCase):
    def test_bounds(self):
        clock = Clock()
        a = A.ExtendAvoidance(clock)
        guard = b"g" * 32
        targets = [bytes([i]) * 32 for i in range(10)]
        got = [a.failed(guard, t) for t in targets]
        self.assertEqual(got.count(True), min(A.PER_REPORTER, A.MAX_AVOIDED))
        clock.advance(A.AVOID_S)
        self.assertEqual(a.avoided(), [])
        # the same guard is still over its budget for the window
        self.assertFalse(a.failed(guard, targets[0]))
        clock.advance(A.REPORTER_WINDOW_S)
        self.assertTrue(a.failed(guard, targets[0]))

    def test_reportersRememberedBounded(self):
        a = A.ExtendAvoidance(Clock())
        for i in range(A.MAX_REPORTERS * 3):
            a.failed(i.to_bytes(32, "big"), b"t" * 32)
        self.assertLessEqual(len(a._reports), A.MAX_REPORTERS)


class CancelledBuildTests(unittest.TestCase):
    def test_cancelledBuildLeavesNoHalfCircuit(self):
        """The manager's timeout cancels a build that stalls (a guard swallowing EXTEND2): the circuit is torn down."""
        from meshvpn.circuits.builder import CircuitBuilder
        from meshvpn.circuits.test.test_attacks import _MemoryDescriptor, _MemoryLinks
        from meshvpn.circuits.pathselect import RelayInfo
        from meshvpn.onion.test.hostile import HostileNet

        n = HostileNet(guard="extend=drop")
        path = [RelayInfo(nodeId=r.nodeId, host=f"198.{18 + i}.0.1", roles=frozenset(("guard", "middle", "exit")),
                          descriptor=_MemoryDescriptor(r)) for i, r in enumerate((n.guard, n.middle, n.exit))]
        d = CircuitBuilder(n.clock, n.client.switch, _MemoryLinks(n))(path)
        n.pump()
        self.assertNoResult(d)
        [channel] = [c for c in n.client.switch.channels() if c.circuits]
        [circuit] = channel.circuits.values()
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        n.pump()
        self.assertTrue(circuit.closed)
        self.assertEqual(channel.circuits, {})
        self.assertEqual(n.hops(n.guard), [])  # the DESTROY reached the guard
