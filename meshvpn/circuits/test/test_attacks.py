"""Attacks on path selection and guards from a hostile directory: each one a hole that once worked.

A hostile relay announces whatever it likes about itself (bandwidth,
addresses in any order, no family); a hostile network makes guards fail or
vanish from the directory.  None of it may buy the attacker more than its
share of relays by count, or make the client try guard after guard.
"""

import os
import random

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from meshvpn.circuits.manager import CircuitBuildFailed, CircuitManager
from meshvpn.circuits.guards import NEW_GUARDS_PER_WINDOW, GuardSet, MAX_SAMPLE_SIZE
from meshvpn.circuits.pathselect import RelayInfo, choosePath, related
from meshvpn.circuits.relayinfo import relayInfo
from meshvpn.dht.descriptor import makeDescriptor
from meshvpn.errors import MeshVPNError
from meshvpn.identity import NodeIdentity

NOW = 1_800_000_000


def relay(n, host, roles=("guard", "middle", "exit"), bandwidth=0):
    return RelayInfo(nodeId=n.to_bytes(2, "big") * 16, host=host, roles=frozenset(roles), bandwidth=bandwidth)


def described(addresses, flags=("guard", "middle", "exit"), bandwidth=0):
    d = makeDescriptor(NodeIdentity.generate(), addresses, flags, NOW, exitPolicy="accept 1-65535", bandwidth=bandwidth)
    return relayInfo(d)


class ClaimedBandwidthTests(unittest.TestCase):
    def test_claimedBandwidthBuysNothing(self):
        """3 relays claiming 10^15 B/s among 200 that claim 0 get about their share by count, not every path."""
        honest = [relay(i, f"10.{i}.0.1") for i in range(200)]
        liars = [relay(1000 + i, f"11.{i}.0.1", bandwidth=10**15) for i in range(3)]
        rng = random.Random(7)
        paths = [choosePath(honest + liars, rng=rng) for _ in range(2000)]
        for position in range(3):
            share = sum(p[position] in liars for p in paths) / len(paths)
            self.assertLess(share, 0.04, f"hop {position}: liars got {share:.1%} (3 of 203 relays is 1.5%)")


class DecoyAddressTests(unittest.TestCase):
    def test_decoyFirstAddressDoesNotHideSubnet(self):
        """Two relays in one /16 that list decoys in other /16s first are still one /16."""
        a = described({"aaa": "198.51.1.1:1", "tls": "203.0.113.5:9001"})
        b = described({"aaa": "198.52.1.1:1", "tls": "203.0.113.6:9001"})
        self.assertTrue(related(a, b))

    def test_sharedSubnetOnAnyDialedAddress(self):
        """A relay is in every /16 the client may dial it at: a second transport counts too."""
        a = described({"obfs": "198.51.1.1:443", "tls": "203.0.113.5:9001"})
        b = described({"tls": "203.0.113.6:9001"})
        self.assertTrue(related(a, b))

    def test_unplaceableAddressDoesNotBreakPaths(self):
        """A hostname (it resolves wherever its owner likes) is never a /16: that relay is skipped, paths still work."""
        honest = [described({"tls": f"10.{i}.0.1:9001"}) for i in range(3)]
        odd = described({"tls": "relay.example:9001"})
        relays = [r for r in honest + [odd] if r is not None]
        for seed in range(30):
            path = choosePath(relays, rng=random.Random(seed))
            self.assertNotIn(odd, path)


class AlwaysFails:
    """A hostile network: no guard ever answers."""

    def __init__(self):
        self.calls = []

    def __call__(self, path):
        self.calls.append(path)
        return defer.fail(CircuitBuildFailed("guard unreachable", hop=0))


class GuardExposureTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.relays = [relay(i, f"10.{i}.0.1") for i in range(200)]
        self.path = os.path.join(self.mktemp())

    def test_exposureBoundedWhileGuardsFail(self):
        """Two days of every guard failing: the client has tried a bounded few guards, not the whole directory."""
        builder = AlwaysFails()
        manager = CircuitManager(
            self.clock, lambda: defer.succeed(self.relays), builder,
            guards=GuardSet(self.path, self.clock, random.Random(1)), spares=0, rng=random.Random(2),
        )
        for n in range(2 * 24 * 10):  # a request every 6 minutes
            self.failureResultOf(manager.getCircuit(isolation=n), MeshVPNError)
            self.clock.advance(360)
        tried = {p[0].nodeId for p in builder.calls}
        self.assertLessEqual(len(tried), 2 * NEW_GUARDS_PER_WINDOW, f"{len(tried)} distinct guards tried in two days")

    def test_vanishingGuardsDoNotGrowTheSample(self):
        """A directory that shows a fresh set of guards every time cannot make the client sample without bound."""
        guards = GuardSet(self.path, self.clock, random.Random(1))
        returned = set()
        for round in range(100):
            view = [relay(10_000 + round * 10 + i, f"10.{i}.{round}.1") for i in range(10)]
            chosen = guards.choose(view)
            if chosen is not None:
                returned.add(chosen.nodeId)
            self.clock.advance(60)
        self.assertLessEqual(len(guards.guardIds()), MAX_SAMPLE_SIZE)
        self.assertLessEqual(len(returned), MAX_SAMPLE_SIZE)

    def test_leftoverTempFileDoesNotBreakGuards(self):
        """A crash left C{.guards.json.<pid>.tmp}, and pid 1 comes back: guards still save and builds go on."""
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        directory, name = os.path.split(os.path.abspath(self.path))
        with open(os.path.join(directory, f".{name}.{os.getpid()}.tmp"), "w") as f:
            f.write("half a file")
        guards = GuardSet(self.path, self.clock, random.Random(1))
        self.assertIsNotNone(guards.choose(self.relays))
        self.assertEqual(len(GuardSet(self.path, self.clock).guardIds()), len(guards.guardIds()))


class _MemoryDescriptor:
    """What the builder reads of a descriptor, for a relay of the in-memory hostile network."""

    def __init__(self, relay):
        self.nodeId = relay.nodeId
        self.linkAddresses = (("tls", "127.0.0.1:9001"),)
        self._key = relay.keyRing.publicKeys()["current"]
        self.handshakes = relay.switch.advertisedHandshakes()

    def currentOnionKey(self, now):
        return self._key


class _MemoryLinks:
    """The client's link manager on the in-memory network: a fresh link to each guard asked for."""

    def __init__(self, net):
        self.net = net

    def getLink(self, descriptor):
        return defer.succeed(self.net.client.linkTo(descriptor.nodeId, anonymous=True))


class HostileGuardSteeringTests(unittest.TestCase):
    """A guard must not choose the client's middles and exits by claiming it cannot reach the others."""

    def test_refusedExtendDoesNotExcludeTheMiddle(self):
        """
        A directory of one guard, one middle and one exit.  The hostile
        guard answers the first EXTEND2 to the middle with TRUNCATED.  The
        client used to believe it and exclude the middle, and so could build
        no circuit at all (with more middles: one the guard did not refuse,
        perhaps its own); now the retry may use the middle again, and works.
        """
        from meshvpn.circuits.builder import CircuitBuilder
        from meshvpn.onion.test.hostile import HostileNet

        n = HostileNet(guard="extend=truncated;circuits=1")
        roles = {n.guard: ("guard",), n.middle: ("middle",), n.exit: ("exit",)}
        relays = [
            RelayInfo(nodeId=r.nodeId, host=f"198.{18 + i}.0.1", roles=frozenset(roles[r]), bandwidth=0,
                      descriptor=_MemoryDescriptor(r))
            for i, r in enumerate((n.guard, n.middle, n.exit))
        ]
        builder = CircuitBuilder(n.clock, n.client.switch, _MemoryLinks(n))

        def build(path):
            d = builder(path)
            n.pump()
            return d

        manager = CircuitManager(n.clock, lambda: defer.succeed(relays), build, spares=0, rng=random.Random(3))
        circuit = self.successResultOf(manager.getCircuit())
        self.assertEqual([h.nodeId for h in circuit.path], [r.nodeId for r in relays])
        self.assertEqual(n.guard.hostility.status()["actions"], {"truncated": 1})
        self.assertEqual(manager.status()["failed_past_guard"], 1)

    def test_guardKillingACircuitDoesNotExcludeItsMiddle(self):
        """
        The guard kills a circuit in use with a TRUNCATED nobody asked for.
        The replacement used to avoid the dead circuit's middle whatever
        killed it, so with one middle there was none; a violation the guard
        provably committed now excludes no one else, and the replacement is built.
        """
        from meshvpn.circuits.builder import CircuitBuilder
        from meshvpn.onion.cells import RelayCommand, Truncated
        from meshvpn.onion.test.hostile import HostileNet

        n = HostileNet()
        roles = {n.guard: ("guard",), n.middle: ("middle",), n.exit: ("exit",)}
        relays = [
            RelayInfo(nodeId=r.nodeId, host=f"198.{18 + i}.0.1", roles=frozenset(roles[r]), bandwidth=0,
                      descriptor=_MemoryDescriptor(r))
            for i, r in enumerate((n.guard, n.middle, n.exit))
        ]
        builder = CircuitBuilder(n.clock, n.client.switch, _MemoryLinks(n))
        built = []

        def build(path):
            d = builder(path)
            n.clock.callLater(0, n.pump)
            d.addCallback(lambda c: built.append(c) or c)
            return d

        manager = CircuitManager(n.clock, lambda: defer.succeed(relays), build, spares=0, rng=random.Random(3))
        manager.startService()
        self.addCleanup(manager.stopService)
        d = manager.getCircuit()
        n.clock.advance(0)
        first = self.successResultOf(d)
        [guardHop] = n.hops(n.guard)
        guardHop.sendRelay(RelayCommand.TRUNCATED, 0, Truncated(6).encode())
        n.pump()
        self.assertTrue(first.closed)
        self.assertEqual(first.closeReason.hop, 0)
        n.clock.advance(0)
        self.assertEqual(len(built), 2)
        self.assertFalse(built[1].closed)
        self.assertEqual([c for c, _ in manager._assigned[None]], [built[1]])
