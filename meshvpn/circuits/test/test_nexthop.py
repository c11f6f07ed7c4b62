"""A relay says its next hop is hung (NEXT_HOP_SUSPECTED), on task.Clock: every circuit through it moves, within bounds.

The faults: a hung middle or exit that the relay before it sees (its PING
goes unanswered) while the client's own guard link is fine; a circuit
whose end-to-end probe goes unanswered.  The attack: a hostile hop that
claims honest relays are hung to steer the client's paths.
"""

from twisted.trial import unittest

from meshvpn.circuits import avoid as A
from meshvpn.circuits.manager import HOP_SUSPECT_S
from meshvpn.circuits.test.test_suspicion import circuitFor, manager


def tell(circuit, hop, suspected=True):
    """What the origin circuit does when hop C{hop} sends NEXT_HOP_SUSPECTED."""
    circuit.onNextHopSuspected(circuit, hop, suspected)


def ids(circuit):
    return [r.nodeId for r in circuit.path]


class NextHopSuspectedTests(unittest.TestCase):
    def setUp(self):
        self.clock, self.builder, self.m = manager(self, warmBackup=False, spares=2)

    def test_builtCircuitsListen(self):
        first = circuitFor(self, self.clock, self.m, "a")
        self.assertEqual(first.onNextHopSuspected, self.m._nextHopSuspected)

    def test_everyCircuitThroughTheHungRelayMovesAtOnce(self):
        """The time went here: each circuit through a hung middle waited for a probe of its own."""
        a = circuitFor(self, self.clock, self.m, "a")
        hung = ids(a)[1]
        others = []
        for key in "bcdefghijk":
            c = circuitFor(self, self.clock, self.m, key)
            if hung in ids(c)[1:]:
                others.append((key, c))
        self.assertTrue(others)  # ten keys over ten relays: some share the middle
        waiters = [self.m.whenSuspect(c) for _, c in others]
        tell(a, 0)  # the guard: its link to the middle answers no PING
        for d in waiters:
            self.successResultOf(d)  # waiting streams move now
        self.successResultOf(self.m.whenSuspect(a))
        for key, c in [("a", a), *others]:
            moved = circuitFor(self, self.clock, self.m, key)
            self.assertIsNot(moved, c)
            self.assertNotIn(hung, ids(moved)[1:])  # and never onto another circuit through it
        self.assertEqual(self.m.status()["suspected_relays"], 1)

    def test_sparesThroughItCloseAndAreRebuiltWithoutIt(self):
        self.clock.advance(5.1)
        spares = [c for c, _ in self.m._spare]
        a = circuitFor(self, self.clock, self.m, "a")
        hung = ids(a)[1]
        through = [c for c in spares if hung in ids(c)[1:] and c is not a]
        tell(a, 0)
        for c in through:
            self.assertIsNotNone(c.closedWith)
        self.clock.advance(1)
        for c, path in self.m._spare:
            self.assertNotIn(hung, [r.nodeId for r in path[1:]])

    def test_openStreamsAreNotCut(self):
        """A suspicion may be wrong (a loaded relay): nothing is closed that carries streams."""
        a = circuitFor(self, self.clock, self.m, "a")
        tell(a, 1)
        self.assertIsNone(a.closedWith)
        self.assertIn(a, self.m.circuits())  # retired: closes once idle

    def test_heardAgainEndsTheSuspicion(self):
        a = circuitFor(self, self.clock, self.m, "a")
        b = circuitFor(self, self.clock, self.m, "b")
        tell(a, 1)
        self.assertEqual(self.m.status()["suspected_relays"], 1)
        tell(b, 0, suspected=False)  # another hop cannot clear it (it may not be the one that said it)
        if ids(b)[0] != ids(a)[1]:
            self.assertEqual(self.m.status()["suspected_relays"], 1)
        tell(a, 1, suspected=False)
        self.assertEqual(self.m.status()["suspected_relays"], 0)

    def test_heardAgainTheCircuitsAreUsedAgainWithNoBuild(self):
        """On a loaded machine relays suspect each other for a moment: that must not rebuild every user's circuit."""
        a = circuitFor(self, self.clock, self.m, "a")
        tell(a, 0)
        tell(a, 0, suspected=False)
        self.assertIs(circuitFor(self, self.clock, self.m, "a"), a)  # (idle spares through it were rebuilt)

    def test_suspicionExpires(self):
        a = circuitFor(self, self.clock, self.m, "a")
        tell(a, 0)
        self.clock.advance(HOP_SUSPECT_S + 0.1)
        self.assertEqual(self.m._hopSuspects, {})

    def test_lastHopOrUnknownCircuitIgnored(self):
        a = circuitFor(self, self.clock, self.m, "a")
        tell(a, 2)  # no hop after the exit (the origin refuses this already; the manager too)
        self.m._nextHopSuspected(object(), 0, True)
        self.assertEqual(self.m._hopSuspects, {})

    def test_stopServiceCancelsTheTimers(self):
        a = circuitFor(self, self.clock, self.m, "a")
        tell(a, 0)
        self.m.stopService()
        self.assertEqual(self.m._hopSuspects, {})


class HostileReporterTests(unittest.TestCase):
    """
    A hostile guard claims honest middles are hung, to push its client's
    circuits toward relays it chooses.  It gets no more than a false
    "cannot extend" already gives it: three relays for a minute.
    """

    def test_oneReporterRemovesAtMostItsBudget(self):
        clock, builder, m = manager(self, warmBackup=False, spares=0)
        reported = set()
        for n in range(40):
            c = circuitFor(self, clock, m, f"k{n}")
            reported.add(ids(c)[1])
            tell(c, 0)  # the guard lies about every middle it is asked to extend to
        self.assertGreater(len(reported), A.PER_REPORTER)
        self.assertLessEqual(len(m._hopSuspects), A.PER_REPORTER)
        self.assertLessEqual(len(m.avoid.avoided()), A.MAX_AVOIDED)
        self.assertGreater(m.avoid.ignored, 0)

    def test_overTheBudgetOnlyTheReportingCircuitIsRetired(self):
        clock, builder, m = manager(self, warmBackup=False, spares=0)
        circuits = [circuitFor(self, clock, m, f"k{n}") for n in range(12)]
        for c in circuits:
            tell(c, 0)
        told = [c for c in circuits if ids(c)[1] not in m._hopSuspects]
        self.assertTrue(told)
        for c in told:
            self.assertNotIn(c, [p[0] for pairs in m._assigned.values() for p in pairs])  # retired
            self.assertIsNone(c.closedWith)

    def test_neverTheGuard(self):
        clock, builder, m = manager(self, warmBackup=False, spares=0)
        c = circuitFor(self, clock, m, "a")
        guard = ids(c)[0]
        for hop in (0, 1):
            tell(c, hop)
        self.assertNotIn(guard, m._hopSuspects)
        self.assertNotIn(guard, m.avoid.avoided())
        self.assertEqual(ids(circuitFor(self, clock, m, "b"))[0], guard)  # the guard is kept

    def test_avoidanceIsSoftAndShortLived(self):
        clock, builder, m = manager(self, warmBackup=False, spares=0)
        c = circuitFor(self, clock, m, "a")
        hung = ids(c)[1]
        tell(c, 0)
        self.assertIn(hung, m.avoid.avoided())
        clock.advance(A.AVOID_S + 0.1)
        self.assertEqual(m.avoid.avoided(), [])
        self.assertEqual(m._hopSuspects, {})


class ProbeUnansweredTests(unittest.TestCase):
    def test_middleAndExitAvoided(self):
        clock, builder, m = manager(self, warmBackup=False, spares=0)
        c = circuitFor(self, clock, m, "a")
        self.assertTrue(m.circuitUnanswered(c))
        self.assertEqual(set(m.avoid.avoided()), set(ids(c)[1:]))
        moved = circuitFor(self, clock, m, "a")
        self.assertIsNot(moved, c)
        self.assertFalse(set(ids(moved)[1:]) & set(ids(c)[1:]))

    def test_probeBudgetIsItsOwn(self):
        """Probes that fail (a hostile guard drops them) cannot starve the client's own sightings."""
        clock, builder, m = manager(self, warmBackup=False, spares=0)
        for key in "abcd":
            m.circuitUnanswered(circuitFor(self, clock, m, key))
        self.assertLessEqual(len(m.avoid.avoided()), A.MAX_AVOIDED)
        self.assertNotIn(b"", m.avoid._reports)


class NotWatchedTests(unittest.TestCase):
    def test_aCircuitWithoutTheHookIsFine(self):
        clock, builder, m = manager(self, warmBackup=False, spares=0)

        class Sealed:
            __slots__ = ()

        m._watchNextHops(Sealed())  # no attribute to set: nothing breaks
