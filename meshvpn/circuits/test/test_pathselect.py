"""Path selection rules: distinct relays, networks and families, exit policy, uniform choice."""

import random

from twisted.trial import unittest

from meshvpn.errors import NoExitForTarget, NoPath
from meshvpn.circuits.pathselect import RelayInfo, choosePath, networksOf, related


def relay(n, host, roles=("guard", "middle", "exit"), family=(), bandwidth=1000, accepts=None):
    return RelayInfo(
        nodeId=bytes([n]) * 32, host=host, roles=frozenset(roles), family=frozenset(family),
        bandwidth=bandwidth, exitAccepts=accepts,
    )


class PathTests(unittest.TestCase):
    def test_distinctSubnetsAndFamilies(self):
        relays = [relay(i, f"198.{18 + i // 2}.{i}.1") for i in range(1, 9)]  # pairs share a /16
        relays += [relay(20, "198.40.0.1", family=[bytes([1]) * 32])]
        rng = random.Random(1)
        for _ in range(200):
            path = choosePath(relays, rng=rng)
            self.assertEqual(len({r.nodeId for r in path}), 3)
            for i in range(3):
                for j in range(i + 1, 3):
                    self.assertFalse(related(path[i], path[j]), path)

    def test_onlyTwoSubnetsMeansNoPath(self):
        relays = [relay(i, f"198.18.{i}.1") for i in range(1, 5)] + [relay(9, "198.19.0.1")]
        self.assertRaises(NoPath, choosePath, relays, rng=random.Random(2))

    def test_exitMustAcceptTarget(self):
        only443 = lambda target: target[1] == 443
        relays = [
            relay(1, "198.18.0.1", roles=("guard",)),
            relay(2, "198.20.0.1", roles=("middle",)),
            relay(3, "198.22.0.1", roles=("exit",), accepts=only443),
            relay(4, "198.24.0.1", roles=("exit",), accepts=lambda t: False),
        ]
        path = choosePath(relays, target=("198.51.100.1", 443), rng=random.Random(3))
        self.assertEqual(path[2].nodeId, bytes([3]) * 32)
        e = self.assertRaises(NoExitForTarget, choosePath, relays, target=("198.51.100.1", 25))
        self.assertIn("198.51.100.1:25", str(e))
        e = self.assertRaises(NoExitForTarget, choosePath, relays, target=("2001:db8::1", 25))
        self.assertIn("[2001:db8::1]:25", str(e))
        noExits = [r for r in relays if "exit" not in r.roles]
        e = self.assertRaises(NoPath, choosePath, noExits, target=("198.51.100.1", 443))
        self.assertNotIsInstance(e, NoExitForTarget)

    def test_givenGuardAndExclusion(self):
        relays = [relay(i, f"198.{18 + i}.0.1") for i in range(1, 6)]
        path = choosePath(relays, guard=relays[0], exclude=[relays[1].nodeId], rng=random.Random(4))
        self.assertIs(path[0], relays[0])
        self.assertNotIn(relays[1], path)

    def test_announcedBandwidthIgnored(self):
        honest = [relay(i, f"198.{18 + i}.0.1", roles=("middle",), bandwidth=10_000_000) for i in range(1, 5)]
        liar = relay(9, "198.30.0.1", roles=("middle",), bandwidth=10**15)
        ends = [relay(20, "198.40.0.1", roles=("guard",)), relay(21, "198.41.0.1", roles=("exit",))]
        rng = random.Random(5)
        picks = [choosePath(honest + [liar] + ends, rng=rng)[1] for _ in range(2000)]
        share = sum(p is liar for p in picks) / len(picks)
        self.assertLess(abs(share - 0.2), 0.04)  # one middle of five, whatever it claims


class NetworkTests(unittest.TestCase):
    def test_everyHostCounts(self):
        a = RelayInfo(nodeId=b"a" * 32, host="10.1.0.1", roles=frozenset(), hosts=("10.1.0.1", "172.20.0.1"))
        b = RelayInfo(nodeId=b"b" * 32, host="172.20.9.9", roles=frozenset())
        self.assertTrue(related(a, b))

    def test_mappedAndTunnelledIPv4(self):
        self.assertEqual(networksOf(["::ffff:10.1.2.3"]), networksOf(["10.1.9.9"]))
        self.assertIn(next(iter(networksOf(["10.1.0.1"]))), networksOf(["2002:a01:203::1"]))
        self.assertEqual(len(networksOf(["2001:db8:1::1", "2001:db8:2::1"])), 1)

    def test_namesCannotBePlaced(self):
        self.assertIsNone(networksOf(["relay.example"]))
        self.assertIsNone(networksOf(["10.1.0.1", "relay.example"]))
        self.assertIsNone(networksOf([]))
        odd = RelayInfo(nodeId=b"o" * 32, host="relay.example", roles=frozenset({"guard", "middle", "exit"}))
        self.assertFalse(odd.placeable)
        self.assertTrue(related(odd, relay(1, "10.1.0.1")))


class PacketExitTests(unittest.TestCase):
    def test_packetModeNeedsPacketExit(self):
        relays = [relay(1, "198.18.0.1", roles=("guard",)), relay(2, "198.20.0.1", roles=("middle",)),
                  relay(3, "198.22.0.1", roles=("exit",)), relay(4, "198.24.0.1", roles=("exit", "packet-exit"))]
        for seed in range(20):
            self.assertEqual(choosePath(relays, packets=True, rng=random.Random(seed))[2].nodeId, bytes([4]) * 32)
        e = self.assertRaises(NoPath, choosePath, relays[:3], packets=True)
        self.assertIn("packet-exit", str(e))
