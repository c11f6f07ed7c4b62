"""From descriptors to RelayInfo: the /16 rule sees every link address; host names make a relay unusable."""

from types import SimpleNamespace

from twisted.trial import unittest

from meshvpn.circuits.relayinfo import relayInfo


def descriptor(*links, flags=("guard",), handshakes=()):
    return SimpleNamespace(
        nodeId=bytes(32), linkAddresses=tuple(("tcp", a) for a in links), flags=frozenset(flags),
        family=(), bandwidth=0, exitPolicy="accept 443", handshakes=handshakes,
    )


class RelayInfoTests(unittest.TestCase):
    def test_hostOfFirstLinkAddress(self):
        self.assertEqual(relayInfo(descriptor("198.18.0.1:9001", "198.20.0.1:9001")).host, "198.18.0.1")
        info = relayInfo(descriptor("[2001:db8::1]:9001"))
        self.assertEqual(info.host, "2001:db8::1")
        self.assertEqual({str(n) for n in info.networks}, {"2001:db8::/32"})
        both = relayInfo(descriptor("198.18.0.1:9001", "198.20.0.1:9001"))
        self.assertEqual({str(n) for n in both.networks}, {"198.18.0.0/16", "198.20.0.0/16"})

    def test_unusableRelays(self):
        self.assertIsNone(relayInfo(descriptor()))
        self.assertIsNone(relayInfo(descriptor("198.18.0.1:9001", "relay.example:9001")))
        for bad in ("relay.example:9001", "198.18.0.1", "198.18.0.1:0", "2001:db8::1:9001"):
            self.assertIsNone(relayInfo(descriptor(bad)), bad)

    def test_exitPolicySummary(self):
        info = relayInfo(descriptor("198.18.0.1:9001", flags=("exit",)))
        self.assertTrue(info.exitAccepts(("198.51.100.1", 443)))
        self.assertFalse(info.exitAccepts(("198.51.100.1", 25)))

    def test_ipv6TargetsOnlyToExitsCarryingIPv6(self):
        from meshvpn.dht.descriptor import IPV6_EXIT

        plain = relayInfo(descriptor("198.18.0.1:9001", flags=("exit",)))
        self.assertFalse(plain.exitAccepts(("2001:2::1", 443)))
        self.assertTrue(plain.exitAccepts(("example.org", 443)))  # a name: the exit resolves it
        six = relayInfo(descriptor("198.18.0.1:9001", flags=("exit",), handshakes=("ntor", IPV6_EXIT)))
        self.assertTrue(six.exitAccepts(("2001:2::1", 443)))
        self.assertTrue(six.exitAccepts(("198.51.100.1", 443)))
        self.assertFalse(six.exitAccepts(("2001:2::1", 25)))

    def test_pathToAnIPv6TargetEndsAtAnIPv6Exit(self):
        from meshvpn.circuits.pathselect import choosePath
        from meshvpn.dht.descriptor import IPV6_EXIT
        from meshvpn.errors import NoPath

        def relay(i, *roles, handshakes=()):
            d = descriptor(f"198.{18 + i}.0.1:9001", flags=roles, handshakes=handshakes)
            d.nodeId = bytes([i]) * 32
            return relayInfo(d)

        relays = [relay(1, "guard"), relay(2, "middle"), relay(3, "exit"), relay(4, "exit", handshakes=(IPV6_EXIT,))]
        for _ in range(20):
            self.assertEqual(choosePath(relays, target=("2001:2::1", 443))[2].nodeId, bytes([4]) * 32)
        self.assertRaises(NoPath, choosePath, relays[:3], target=("2001:2::1", 443))
