"""From descriptors to RelayInfo: the /16 rule sees every link address; host names make a relay unusable."""

from types import SimpleNamespace

from twisted.trial import unittest

from meshvpn.circuits.relayinfo import relayInfo


def descriptor(*links, flags=("guard",)):
    return SimpleNamespace(
        nodeId=bytes(32), linkAddresses=tuple(("tcp", a) for a in links), flags=frozenset(flags),
        family=(), bandwidth=0, exitPolicy="accept 443",
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
