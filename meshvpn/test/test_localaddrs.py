"""This host's own addresses: read from the kernel, refreshed, and what counts as internal."""

import ipaddress

from twisted.internet import task
from twisted.trial import unittest

from meshvpn.localaddrs import LocalAddresses, interfaceAddresses, isInternal


class FakeInterfaces:
    def __init__(self, *addresses):
        self.addresses = list(addresses)
        self.fail = False

    def __call__(self):
        if self.fail:
            raise OSError("netlink went away")
        return list(self.addresses)


class LocalAddressesTests(unittest.TestCase):
    def test_everyInterfaceAddressBothFamilies(self):
        fake = FakeInterfaces("192.0.2.2", "fd00::2", "fe80::fc:ff:fe00:1%eth0", "127.0.0.1", "::1")
        local = LocalAddresses(task.Clock(), fake, configured=["0.0.0.0"])
        for a in ("192.0.2.2", "fd00::2", "fe80::fc:ff:fe00:1", "127.0.0.1", "::1", "::ffff:192.0.2.2"):
            self.assertIn(a, local)
            self.assertIn(ipaddress.ip_address(a.replace("::ffff:", "")), local)
        self.assertNotIn("0.0.0.0", local)  # the wildcard bind address is no address
        self.assertNotIn("192.0.2.3", local)
        self.assertNotIn("not an address", local)

    def test_refreshedWhileRunning(self):
        clock = task.Clock()
        fake = FakeInterfaces("192.0.2.2")
        local = LocalAddresses(clock, fake, interval=60)
        changes = []
        local.onChange.append(changes.append)
        local.startService()
        self.addCleanup(local.stopService)
        fake.addresses.append("203.0.113.9")  # DHCP gave the host a new address
        self.assertNotIn("203.0.113.9", local)
        clock.advance(60)
        self.assertIn("203.0.113.9", local)
        self.assertEqual(len(changes), 1)
        fake.fail = True  # a failing read keeps what was known
        clock.advance(60)
        self.assertIn("203.0.113.9", local)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_learnedPublicAddressAndRefresh(self):
        """The STUN-learned address is refused too, and a change re-reads the interfaces at once."""
        clock = task.Clock()
        fake = FakeInterfaces("10.0.0.5")
        local = LocalAddresses(clock, fake)
        reads = local.refreshes
        local.learn(["198.51.100.20"])
        self.assertIn("198.51.100.20", local)
        self.assertEqual(local.refreshes, reads + 1)
        local.learn(["198.51.100.20"])  # unchanged: no re-read
        self.assertEqual(local.refreshes, reads + 1)
        local.learn(["198.51.100.21"])
        self.assertNotIn("198.51.100.20", local)
        self.assertIn("198.51.100.21", local)

    def test_kernelAddresses(self):
        """pyroute2 reads this host's real addresses (no root needed): loopback of both families at least."""
        found = {ipaddress.ip_address(a.split("%")[0]) for a in interfaceAddresses()}
        self.assertIn(ipaddress.ip_address("127.0.0.1"), found)
        self.assertIn(ipaddress.ip_address("::1"), found)

    def test_internal(self):
        for a in ("127.0.0.1", "10.0.0.1", "172.31.255.255", "192.168.0.1", "169.254.169.254", "100.64.0.1",
                  "0.0.0.0", "224.0.0.1", "255.255.255.255", "::1", "::", "fe80::1", "fd12::1", "ff02::1",
                  "::ffff:127.0.0.1", "::ffff:10.0.0.1"):
            self.assertTrue(isInternal(a), a)
        for a in ("8.8.8.8", "198.18.0.1", "192.0.2.2", "2001:db8::1", "2a00::1", "::ffff:8.8.8.8"):
            self.assertFalse(isInternal(a), a)
