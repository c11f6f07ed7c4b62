"""A suspected guard (its link answered no PING in time) on task.Clock: circuits move to the next guard, bounded.

The faults: a guard cut silently or hung (its link is suspected before it
is closed), a suspicion that was wrong (the guard answers again), and a
hostile network that drops packets to whichever guard the client uses, to
make it walk through its guards.
"""

import random

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from meshvpn.circuits.guards import N_PRIMARY, GuardSet
from meshvpn.circuits.manager import CircuitManager
from meshvpn.circuits.test.test_manager import Builder, relay
from meshvpn.interfaces import ILinkLivenessObserver

ROLES = ("guard", "middle", "exit", "packet-exit")


def manager(test, warmBackup=True, spares=1):
    clock = Clock()
    relays = [relay(i, ROLES) for i in range(1, 11)]
    builder = Builder(clock)
    m = CircuitManager(clock, lambda: defer.succeed(relays), builder,
                       guards=GuardSet(test.mktemp(), clock, random.Random(1)),
                       spares=spares, rng=random.Random(2), warmBackup=warmBackup)
    m.startService()
    test.addCleanup(m.stopService)
    for _ in range(4):
        clock.advance(0.3)  # spares, then the backup once the first guard is confirmed
    return clock, builder, m


def circuitFor(test, clock, m, key, packets=False):
    d = m.getCircuit(isolation=key, packets=packets)
    clock.advance(0.01)
    return test.successResultOf(d)


def guardOf(circuit):
    return circuit.path[0].nodeId


class BackupGuardTests(unittest.TestCase):
    def test_interface(self):
        clock, builder, m = manager(self)
        verifyObject(ILinkLivenessObserver, m)

    def test_warmBackupThroughTheNextGuardNotHandedOut(self):
        clock, builder, m = manager(self)
        self.assertIsNotNone(m.backup)
        first = circuitFor(self, clock, m, "a")
        self.assertNotEqual(guardOf(m.backup[0]), guardOf(first))
        for key in "bcdef":
            self.assertEqual(guardOf(circuitFor(self, clock, m, key)), guardOf(first))
        self.assertIsNotNone(m.backup)  # used by nobody while the first guard answers

    def test_suspectedGuardMovesNewStreamsWithNoBuild(self):
        clock, builder, m = manager(self)
        first = circuitFor(self, clock, m, "a")
        backup = m.backup[0]
        builds = len(builder.calls)
        m.peerSuspected(guardOf(first), True)
        d = m.getCircuit(isolation="a")
        self.assertIs(self.successResultOf(d), backup)  # at once: no build
        self.assertEqual(len(builder.calls), builds)
        self.assertEqual(first.closedWith, None)  # a suspicion closes no stream circuit: it may be wrong
        clock.advance(5)  # a new backup is built meanwhile: never through the suspected guard
        self.assertNotIn(guardOf(first), [p[0].nodeId for p in builder.calls[builds:]])

    def test_wrongSuspicionCostsNothing(self):
        """The guard answers again: its circuits are used as before."""
        clock, builder, m = manager(self)
        first = circuitFor(self, clock, m, "a")
        m.peerSuspected(guardOf(first), True)
        m.peerSuspected(guardOf(first), False)
        self.assertIs(circuitFor(self, clock, m, "a"), first)
        self.assertEqual(m.status()["suspected_guards"], [])

    def test_waitingStreamsHearOfTheSuspicion(self):
        clock, builder, m = manager(self)
        first = circuitFor(self, clock, m, "a")
        waiting, answered = m.whenSuspect(first), m.whenSuspect(first)
        answered.cancel()
        self.failureResultOf(answered, defer.CancelledError)
        self.assertNoResult(waiting)
        m.peerSuspected(guardOf(first), True)
        self.successResultOf(waiting)
        self.successResultOf(m.whenSuspect(first))  # already suspected: at once
        self.assertEqual(m._suspectWaiters, {})

    def test_strangersAreNotRemembered(self):
        """Bounded: a suspicion of a peer no circuit of ours enters through is dropped."""
        clock, builder, m = manager(self)
        for n in range(1000):
            m.peerSuspected(n.to_bytes(32, "big"), True)
        self.assertEqual(m._suspects, set())

    def test_coldBackupBuiltAtTheFirstSuspicion(self):
        clock, builder, m = manager(self, warmBackup=False)
        first = circuitFor(self, clock, m, "a")
        self.assertIsNone(m.backup)
        self.assertEqual({guardOf(c) for c in m.circuits()}, {guardOf(first)})
        m.peerSuspected(guardOf(first), True)
        second = circuitFor(self, clock, m, "a")
        self.assertNotEqual(guardOf(second), guardOf(first))


class PacketCircuitTests(unittest.TestCase):
    def test_vpnCircuitMovedWhenAnotherIsReady(self):
        """The VPN holds its packet circuit until it closes: closed at the suspicion, its next one is the backup."""
        clock, builder, m = manager(self)
        vpn = circuitFor(self, clock, m, "tun", packets=True)
        clock.advance(5.01)  # the backup is rebuilt to carry packets
        clock.advance(0.01)
        if m.backup is None or "packet-exit" not in m.backup[1][-1].roles:
            self.fail("no packet backup")
        backup = m.backup[0]
        m.peerSuspected(guardOf(vpn), True)
        self.assertEqual(vpn.closedWith, "guard suspected")
        self.assertIs(circuitFor(self, clock, m, "tun", packets=True), backup)

    def test_vpnCircuitKeptWhenNothingIsReady(self):
        """No other circuit ready: the VPN keeps waiting for the verdict rather than have none at all."""
        clock, builder, m = manager(self, warmBackup=False, spares=0)
        vpn = circuitFor(self, clock, m, "tun", packets=True)
        builder.hang = True
        m.peerSuspected(guardOf(vpn), True)
        self.assertIsNone(vpn.closedWith)


class HostileNetworkTests(unittest.TestCase):
    def test_droppingPacketsNeverWalksTheGuardList(self):
        """
        The attack: the network drops packets to whichever guard the client
        uses, over and over.  Suspicion moves it within its primary guards
        only: never more than those three carry its circuits, and never a
        guard outside them (no new guard is exposed).
        """
        clock, builder, m = manager(self)
        used = set()
        for round in range(30):
            c = circuitFor(self, clock, m, f"k{round}")
            used.add(guardOf(c))
            m.peerSuspected(guardOf(c), True)
            if round % 3 == 2:  # sometimes both are suspected at once
                for g in list(used):
                    m.peerSuspected(g, True)
            clock.advance(5)
            if round % 2:
                for g in list(used):
                    m.peerSuspected(g, False)
        used |= {p[0].nodeId for p in builder.calls}
        self.assertLessEqual(len(used), N_PRIMARY, used)
        self.assertTrue(all(m.guards.isPrimary(g) for g in used))

    def test_secondGuardSuspectedTooMovesToTheThirdPrimary(self):
        """Two of the primary guards cut at once (the chaos bench cuts both clients' guards): the third carries on."""
        clock, builder, m = manager(self)
        first = circuitFor(self, clock, m, "a")
        second = m.backup[0]
        m.peerSuspected(guardOf(first), True)
        m.peerSuspected(guardOf(second), True)
        third = circuitFor(self, clock, m, "a")
        self.assertNotIn(guardOf(third), (guardOf(first), guardOf(second)))
        self.assertTrue(m.guards.isPrimary(guardOf(third)))


    def test_rebuildsSpreadOverTheOtherPrimaries(self):
        """
        The first guard suspected: rebuilds go through both other primary
        guards, not all through the next one (which the same cut may have
        silenced: its dial would hold them all until it timed out).
        """
        clock, builder, m = manager(self, warmBackup=False)
        first = circuitFor(self, clock, m, "a")
        m.peerSuspected(guardOf(first), True)
        chosen = {m._chooseGuard([relay(i, ROLES) for i in range(1, 11)], []).nodeId for _ in range(40)}
        self.assertEqual(len(chosen), N_PRIMARY - 1, chosen)
        self.assertNotIn(guardOf(first), chosen)
        self.assertTrue(all(m.guards.isPrimary(g) for g in chosen))
        m.rng = None  # as nodes run: the system's randomness
        self.assertIn(m._chooseGuard([relay(i, ROLES) for i in range(1, 11)], []).nodeId, chosen)


    def test_silentFallbackGuardIsPassedOverWithinSeconds(self):
        """
        The chaos bench's fault: two of the three primary guards cut
        silently.  The first is suspected; a build through the second hangs
        (its SYNs are dropped) and is given up after the short fallback
        deadline, not the build timeout; the third carries the stream.
        """
        clock, builder, m = manager(self, warmBackup=False)
        relays = [relay(i, ROLES) for i in range(1, 11)]
        first = circuitFor(self, clock, m, "a")
        second = m.guards.choose(relays, exclude=[guardOf(first)])
        builder.hangThrough = {guardOf(first), second.nodeId}
        m.peerSuspected(guardOf(first), True)
        d = m.getCircuit(isolation="b")
        for _ in range(25):
            clock.advance(0.1)  # 2.5 s: the fallback deadline (2 s here) and a build, far below the build timeout
        c = self.successResultOf(d)
        self.assertNotIn(guardOf(c), (guardOf(first), second.nodeId))
        self.assertTrue(m.guards.isPrimary(guardOf(c)))
        self.assertLessEqual(m.fallbackGuardsTimedOut, 1)


class LostGuardLinkTests(unittest.TestCase):
    def test_killedGuardMovesToTheBackupWithNoBuild(self):
        """The fault: the guard is killed (its link resets).  The retried streams take the warm backup at once."""
        from meshvpn.circuits.manager import LOST_GUARD_S
        from meshvpn.onion.cells import DestroyReason
        from meshvpn.onion.destroy import CircuitDestroyed

        clock, builder, m = manager(self)
        first = circuitFor(self, clock, m, "a")
        backup = m.backup[0]
        first.close(CircuitDestroyed(DestroyReason.CHANNEL_CLOSED, "guard link closed", hop=0))
        self.assertIs(self.successResultOf(m.getCircuit(isolation="b")), backup)
        clock.advance(LOST_GUARD_S)
        self.assertEqual(m.status()["suspected_guards"], [])  # then chosen again as usual
