"""The packet exit's IPv6 (no root: fake TUN, fake circuits; the real path is in the VPN namespace tests)."""

import ipaddress

from twisted.internet.task import Clock
from twisted.trial import unittest

from meshvpn.client.test.fakes import FakeCircuit, FakeTun
from meshvpn.exit.packetexit import DEFAULT_GATEWAY6, PacketExit, parsePool6
from meshvpn.exit.policy import defaultExitPolicy
from meshvpn.tun.packets import PROTO_TCP, PROTO_UDP
from meshvpn.tun.packets6 import ICMP6_PACKET_TOO_BIG, ICMP6_UNREACH, PROTO_ICMPV6, parseIPv6, upperChecksum
from meshvpn.tun.test.test_packets6 import CLIENT, SERVER, packet, tcp, udp

A = lambda text: ipaddress.IPv6Address(text).packed


class PacketExit6Tests(unittest.TestCase):
    def start(self, pool6="fd6d:6573:6801::/120", policy=""):
        self.scripts = []
        pe = PacketExit(Clock(), defaultExitPolicy(policy), "abcd1234", pool="100.64.0.0/29", tunFactory=FakeTun,
                        nft=self.scripts.append, forwarding=False, pool6=pool6)
        pe.startService()
        self.addCleanup(pe.stopService)
        return pe

    def assertChecksumRight(self, raw):
        p = parseIPv6(raw)
        self.assertEqual(upperChecksum(p.src, p.dst, p.proto, raw[p.upper:]), 0)

    def test_roundTripPerCircuit(self):
        pe = self.start()
        self.assertIn("table ip6 meshvpn-exit-abcd1234", self.scripts[1])
        self.assertIn("ip6 saddr fd6d:6573:6801::/120 oifname != \"mvpn0\" masquerade", self.scripts[1])
        self.assertIn("fd6d:6573:6801::1/120", pe.tun.addresses)
        c1, c2 = FakeCircuit(), FakeCircuit()
        pe.circuitPackets(c1, [packet(PROTO_UDP, udp())])
        pe.circuitPackets(c2, [packet(PROTO_TCP, tcp())])
        first, second = (parseIPv6(p) for p in pe.tun.written)
        # The same offset in both pools: 100.64.0.2 <-> fd6d:6573:6801::2.
        self.assertEqual((first.src, second.src), (A("fd6d:6573:6801::2"), A("fd6d:6573:6801::3")))
        for p in pe.tun.written:
            self.assertChecksumRight(p)
        reply = packet(PROTO_TCP, tcp(443, 40000), src=SERVER, dst=A("fd6d:6573:6801::3"))
        pe.tun.receiver([reply])
        self.assertEqual(c1.sent, [])
        (back,) = c2.sent
        self.assertEqual(parseIPv6(back).dst, CLIENT)
        self.assertChecksumRight(back)
        pe.stopService()
        self.assertIn("delete table ip6 meshvpn-exit-abcd1234", "".join(self.scripts))

    def test_policyAppliesToIPv6(self):
        pe = self.start(policy="reject6 [2001:2::]/48:*")
        c = FakeCircuit()
        pe.circuitPackets(c, [packet(PROTO_TCP, tcp())])
        self.assertEqual(pe.tun.written, [])
        (err,) = c.sent
        p = parseIPv6(err)
        self.assertEqual((p.proto, p.icmpType, p.dst), (PROTO_ICMPV6, ICMP6_UNREACH, CLIENT))
        self.assertChecksumRight(err)

    def test_withoutPoolRefusedFast(self):
        pe = self.start(pool6=None)
        c = FakeCircuit()
        pe.circuitPackets(c, [packet(PROTO_TCP, tcp())])
        self.assertEqual(pe.tun.written, [])
        (err,) = c.sent
        self.assertEqual(parseIPv6(err).src, DEFAULT_GATEWAY6.packed)
        self.assertEqual(pe.status()["rejected6"], 1)

    def test_oversizeTooBig(self):
        pe = self.start()
        c = FakeCircuit()
        pe.circuitPackets(c, [packet(PROTO_TCP, tcp() + b"x" * 1500)])
        (err,) = c.sent
        self.assertEqual(parseIPv6(err).icmpType, ICMP6_PACKET_TOO_BIG)

    def test_routingHeaderNeverLeaves(self):
        """The attack: a circuit asks the exit to source-route its packet."""
        pe = self.start()
        c = FakeCircuit()
        routing = bytes([PROTO_UDP, 2, 0, 1, 0, 0, 0, 0]) + SERVER
        pe.circuitPackets(c, [packet(PROTO_UDP, udp(), extensions=routing, first=43)])
        self.assertEqual(pe.tun.written, [])
        self.assertEqual(pe.status()["malformed6"], 1)

    def test_unsolicitedFromTheInternetGoesNowhere(self):
        pe = self.start()
        pe.tun.receiver([packet(PROTO_UDP, udp(), src=SERVER, dst=A("fd6d:6573:6801::5"))])
        self.assertEqual(pe.status()["no_lease"], 1)

    def test_pool6Setting(self):
        self.assertIsNone(parsePool6("none"))
        self.assertEqual(parsePool6("fd6d:6573:6801::/112"), "fd6d:6573:6801::/112")
        for bad in ("2001:2::/64", "100.64.0.0/16", "x"):
            self.assertRaises(ValueError, parsePool6, bad)
        self.assertRaises(ValueError, PacketExit, Clock(), defaultExitPolicy(), "t", pool="100.64.0.0/16",
                          pool6="fd00::/120")
