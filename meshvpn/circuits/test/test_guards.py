"""The client's guards: a persistent bounded sample, primary guards in order, retries, bounded exposure."""

import json
import os
import random
import stat

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from meshvpn.circuits import guards as G
from meshvpn.circuits.guards import GuardSet
from meshvpn.circuits.manager import CircuitBuildFailed, CircuitManager
from meshvpn.circuits.pathselect import RelayInfo
from meshvpn.errors import NoPath


def relay(n, roles=("guard", "middle", "exit")):
    return RelayInfo(nodeId=n.to_bytes(2, "big") * 16, host=f"10.{n % 256}.{n // 256}.1", roles=frozenset(roles))


class GuardSetTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.path = self.mktemp()
        self.relays = [relay(i) for i in range(1, 41)]

    def guards(self, seed=1):
        return GuardSet(self.path, self.clock, random.Random(seed))

    def test_persistsAcrossRestart(self):
        first = self.guards(1).choose(self.relays)
        again = self.guards(99).choose(self.relays)
        self.assertEqual(first, again)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    def test_sampleIsBoundedAndOnlyGuards(self):
        relays = self.relays + [relay(100 + i, roles=("middle", "exit")) for i in range(20)]
        guards = self.guards()
        guards.choose(relays)
        self.assertEqual(len(guards.guardIds()), G.MIN_USABLE_SAMPLE)
        self.assertTrue(set(guards.guardIds()) <= {r.nodeId for r in self.relays})
        with open(self.path) as f:
            self.assertEqual(len(json.load(f)["guards"]), G.MIN_USABLE_SAMPLE)

    def test_firstPrimaryUntilItFails(self):
        guards = self.guards()
        first = guards.choose(self.relays)
        for _ in range(20):
            self.assertEqual(guards.choose(self.relays), first)
        self.assertEqual(guards.guardIds()[0], first.nodeId)

    def test_markDownUsesNextThenReturns(self):
        guards = self.guards()
        first = guards.choose(self.relays)
        guards.markDown(first.nodeId)
        second = guards.choose(self.relays)
        self.assertNotEqual(first, second)
        self.assertEqual(second.nodeId, guards.guardIds()[1])  # the next primary, in order
        self.clock.advance(601)
        self.assertEqual(guards.choose(self.relays), first)

    def test_nonPrimaryOnlyWhenAllPrimariesDown(self):
        guards = self.guards()
        primaries = []
        for _ in range(G.N_PRIMARY):
            g = guards.choose(self.relays)
            primaries.append(g.nodeId)
            guards.markDown(g.nodeId)
        self.assertEqual(primaries, guards.guardIds()[: G.N_PRIMARY])
        fourth = guards.choose(self.relays)
        self.assertNotIn(fourth.nodeId, primaries)
        guards.succeeded(fourth.nodeId)
        # A used guard is confirmed: from now on it is tried before unconfirmed ones.
        self.clock.advance(601)
        self.assertEqual(guards.choose(self.relays), fourth)

    def test_confirmedGuardStaysFirst(self):
        guards = self.guards()
        first = guards.choose(self.relays)
        guards.succeeded(first.nodeId)
        again = self.guards(5)
        self.assertEqual(again.choose(self.relays), first)
        with open(self.path) as f:
            [saved] = [e for e in json.load(f)["guards"] if e["confirmed_idx"] is not None]
        self.assertEqual(saved["node_id"], first.nodeId.hex())

    def test_primaryRetriedSoonAfterAnOutage(self):
        """Every primary failed (the network was down): the first is tried again after 30 s, then 60 s, ..."""
        guards = self.guards()
        first = guards.choose(self.relays)
        guards.markDown(first.nodeId)
        self.clock.advance(G.PRIMARY_FIRST_RETRY_S)
        self.assertEqual(guards.choose(self.relays), first)
        guards.markDown(first.nodeId)
        self.clock.advance(G.PRIMARY_FIRST_RETRY_S)
        self.assertNotEqual(guards.choose(self.relays), first)
        self.clock.advance(G.PRIMARY_FIRST_RETRY_S)
        self.assertEqual(guards.choose(self.relays), first)
        guards.succeeded(first.nodeId)
        guards.markDown(first.nodeId)
        self.clock.advance(G.PRIMARY_FIRST_RETRY_S)  # it worked in between: back to the first delay
        self.assertEqual(guards.choose(self.relays), first)

    def test_retriesSlowDownTheLongerAGuardFails(self):
        guards = self.guards()
        first = guards.choose(self.relays)
        for _ in range(36):  # six hours of failing, retried every ten minutes
            guards.markDown(first.nodeId)
            self.clock.advance(601)
            self.assertEqual(guards.choose(self.relays), first)
        guards.markDown(first.nodeId)
        self.clock.advance(601)
        self.assertNotEqual(guards.choose(self.relays), first)  # now every 90 minutes
        self.clock.advance(5400)
        self.assertEqual(guards.choose(self.relays), first)

    def test_newGuardsPerDayBounded(self):
        guards = self.guards()
        tried = []
        while True:
            g = guards.choose(self.relays)
            if g is None:
                break
            tried.append(g.nodeId)
            guards.markDown(g.nodeId)
        self.assertEqual(len(tried), G.NEW_GUARDS_PER_WINDOW)
        self.assertIn("new guards were already tried", guards.refusal)
        self.clock.advance(601)  # the primaries come back for a retry: not new, so allowed
        self.assertIn(guards.choose(self.relays).nodeId, tried[: G.N_PRIMARY])
        restarted = self.guards(7)  # the window survives a restart
        for g in tried:
            restarted.markDown(g)
        self.assertIsNone(restarted.choose(self.relays, exclude=tried))
        self.clock.advance(G.NEW_GUARD_WINDOW_S)
        fresh = restarted.choose(self.relays, exclude=tried)
        self.assertNotIn(fresh.nodeId, tried)

    def test_unconfirmedRotateAfterLifetime(self):
        guards = self.guards()
        guards.choose(self.relays)
        start = self.clock.seconds()
        self.clock.advance(G.GUARD_LIFETIME_S + 1)
        guards.choose(self.relays)
        self.assertEqual(len(guards.sample), G.MIN_USABLE_SAMPLE)
        # Every entry is a fresh one (its added time set back by at most a tenth of the lifetime).
        self.assertTrue(all(g.added > start for g in guards.sample))

    def test_confirmedOutliveTheLifetime(self):
        guards = self.guards()
        first = guards.choose(self.relays)
        self.clock.advance(G.GUARD_LIFETIME_S - G.CONFIRMED_LIFETIME_S / 2)
        guards.choose(self.relays)
        guards.succeeded(first.nodeId)
        self.clock.advance(G.CONFIRMED_LIFETIME_S / 2 + 1)  # sampled more than a lifetime ago
        self.assertEqual(guards.choose(self.relays), first)
        self.clock.advance(G.CONFIRMED_LIFETIME_S)
        self.assertNotIn(first.nodeId, [g.nodeId for g in [guards.choose(self.relays)]])

    def test_unlistedKeptThenDropped(self):
        guards = self.guards()
        first = guards.choose(self.relays)
        without = [r for r in self.relays if r != first]
        self.assertNotEqual(guards.choose(without), first)
        self.assertIn(first.nodeId, guards.guardIds())  # still counts against the sample
        self.assertEqual(guards.choose(self.relays), first)  # back in the directory: back in use
        guards.choose(without)
        self.clock.advance(G.REMOVE_UNLISTED_AFTER_S)
        guards.choose(without)
        self.assertNotIn(first.nodeId, guards.guardIds())

    def test_damagedFileIsResampledAndSaid(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        for junk in ("{not json", '{"guards": [{"node_id": "zz", "added": 1}]}', '{"guards": 3}', "[]",
                     '{"guards": [{"node_id": "' + "ab" * 32 + '", "added": "yesterday"}]}'):
            with open(self.path, "w") as f:
                f.write(junk)
            self.assertIsNotNone(self.guards().choose(self.relays))
            with open(self.path) as f:
                self.assertEqual(len(json.load(f)["guards"]), G.MIN_USABLE_SAMPLE)
        self.assertEqual(sum("damaged" in formatEvent(e) for e in events), 5)

    def test_oversizedFileRefused(self):
        with open(self.path, "w") as f:
            f.write(" " * (G.MAX_FILE_BYTES + 1))
        guards = self.guards()
        self.assertEqual(guards.guardIds(), [])

    def test_oldFormatLoaded(self):
        old = [{"node_id": r.nodeId.hex(), "added": self.clock.seconds(), "down_until": 0} for r in self.relays[:3]]
        with open(self.path, "w") as f:
            json.dump({"guards": old}, f)
        guards = self.guards()
        self.assertEqual(guards.guardIds()[:3], [r.nodeId for r in self.relays[:3]])
        self.assertEqual(guards.choose(self.relays), self.relays[0])

    def test_inMemory(self):
        guards = GuardSet(None, self.clock, random.Random(1))
        self.assertIsNotNone(guards.choose(self.relays))
        self.assertEqual(guards.status()["tried"], 1)


class Circuit:
    def whenClosed(self):
        return defer.Deferred()

    def close(self, reason):
        pass


class ManagerGuardTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.relays = [relay(i) for i in range(1, 41)]
        self.guards = GuardSet(self.mktemp(), self.clock, random.Random(1))
        self.failing = set()
        self.calls = []

    def build(self, path):
        self.calls.append(path)
        if path[0].nodeId in self.failing:
            return defer.fail(CircuitBuildFailed("guard unreachable", hop=0))
        return defer.succeed(Circuit())

    def manager(self):
        return CircuitManager(self.clock, lambda: defer.succeed(self.relays), self.build, guards=self.guards,
                              spares=0, rng=random.Random(2))

    def test_builtThroughPrimaryConfirmsIt(self):
        self.successResultOf(self.manager().getCircuit(isolation="a"))
        first = self.calls[0][0].nodeId
        self.assertEqual(self.guards.guardIds()[0], first)
        self.assertEqual(self.guards.sample[0].confirmedIdx, 0)
        self.assertEqual(self.manager().status()["guards"]["tried"], 1)

    def test_noUsableGuardFailsTheBuild(self):
        self.failing = {r.nodeId for r in self.relays}
        manager = self.manager()
        self.failureResultOf(manager.getCircuit(isolation="a"), CircuitBuildFailed)  # four guards tried
        f = self.failureResultOf(manager.getCircuit(isolation="b"), NoPath)  # the fifth, then none is allowed
        self.assertIn("no usable guard", f.getErrorMessage())
        self.assertIn("new guards were already tried", f.getErrorMessage())
        self.assertEqual(len({p[0].nodeId for p in self.calls}), len(self.calls))  # each guard tried once
        self.assertLessEqual(len(self.calls), G.NEW_GUARDS_PER_WINDOW)

    def test_guardFailureMovesToNextPrimaryWithinOneRequest(self):
        manager = self.manager()
        self.successResultOf(manager.getCircuit(isolation="a"))
        first = self.calls[0][0]
        self.failing = {first.nodeId}
        self.successResultOf(manager.getCircuit(isolation="b"))
        self.assertEqual(self.calls[-1][0].nodeId, self.guards.guardIds()[1])


class NoGuardSpareTests(unittest.TestCase):
    def test_sparesDoNotSpinWhenNoGuardIsUsable(self):
        """
        With every guard down a spare build fails at once, without waiting
        on anything; the maintenance loop must start the missing spares once,
        not loop for ever (the client then ignored SIGTERM).
        """
        clock = Clock()
        relays = [relay(i) for i in range(1, 41)]
        guards = GuardSet(None, clock, random.Random(1))
        for _ in range(G.NEW_GUARDS_PER_WINDOW):
            guards.markDown(guards.choose(relays).nodeId)
        calls = []

        def source():
            calls.append(1)
            if len(calls) > 50:
                return defer.Deferred()  # stops a spinning loop, so the test can fail instead of hang
            return defer.succeed(relays)

        manager = CircuitManager(clock, source, lambda path: defer.Deferred(), guards=guards, spares=2)
        manager.startService()
        self.addCleanup(manager.stopService)
        self.assertEqual(len(calls), 2)
        clock.advance(manager.maintainEvery)
        self.assertEqual(len(calls), 4)
