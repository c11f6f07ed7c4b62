"""The VPN client's IPv6 without root: what goes to the exit, what comes back to the TUN, AAAA answers."""

import ipaddress

from hypothesis import given, settings, strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from meshvpn.client.test.fakes import FakeTun
from meshvpn.client.test.test_vpn import NODE, ClosableCircuit, FakeOpener
from meshvpn.client.vpn import CLIENT_NET6, TunClient, circuitPacketAllowed6, clientAddress6
from meshvpn.client.vpndns import ExitResolverClient
from meshvpn.exit.packetexit import DEFAULT_GATEWAY6
from meshvpn.tun.packets import PROTO_TCP, PROTO_UDP
from meshvpn.tun.packets6 import ICMP6_PACKET_TOO_BIG, PROTO_ICMPV6, icmp6Error, parseIPv6
from meshvpn.tun.test.test_packets6 import SERVER, packet, tcp, udp

ME = ipaddress.IPv6Address(clientAddress6(NODE)).packed
A = lambda text: ipaddress.IPv6Address(text).packed


class _TunWithoutIPv6(FakeTun):
    def configure(self, addresses=(), routes=(), mtu=None):
        if any(":" in a for a in addresses):
            raise OSError("IPv6 is disabled on this host")
        super().configure(addresses, routes, mtu)


class TunClient6Tests(unittest.TestCase):
    def start(self, tunFactory=FakeTun, ipv6=True):
        self.circuit = ClosableCircuit()
        client = TunClient(Clock(), NODE, lambda: defer.succeed(self.circuit), tunFactory=tunFactory, ipv6=ipv6,
                           probe=lambda c: defer.succeed(True))
        client.startService()
        self.addCleanup(lambda: client.running and client.stopService())
        return client

    def test_addressIsOursInTheClientULA(self):
        client = self.start()
        self.assertIn(ipaddress.ip_address(client.address6), CLIENT_NET6)
        self.assertEqual(client.tun.addresses, [f"{client.address6}/128"])
        self.assertEqual(client.status()["address6"], client.address6)

    def test_onlyGlobalDestinationsGoToTheExit(self):
        client = self.start()
        out = packet(PROTO_TCP, tcp(), src=ME, dst=SERVER)
        linkLocal = packet(PROTO_UDP, udp(), src=A("fe80::1"), dst=A("ff02::1"))
        ula = packet(PROTO_UDP, udp(), src=ME, dst=A("fd00::5"))
        client.tun.receiver([out, linkLocal, ula])
        self.assertEqual(self.circuit.sent, [out])
        self.assertEqual((client.counters["ipv6_to_circuit"], client.counters["ipv6_dropped"]), (1, 2))

    def test_hostWithoutIPv6KeepsItBlocked(self):
        client = self.start(tunFactory=_TunWithoutIPv6)
        self.assertFalse(client.ipv6)
        client.tun.receiver([packet(PROTO_TCP, tcp(), src=ME, dst=SERVER)])
        self.assertEqual(self.circuit.sent, [])
        self.assertEqual(client.counters["ipv6_dropped"], 1)

    def test_repliesFiltered(self):
        """The attack: a hostile exit writes packets local apps would trust into our TUN."""
        client = self.start()
        good = packet(PROTO_TCP, tcp(443, 40000), src=SERVER, dst=ME)
        original = packet(PROTO_TCP, tcp(), src=ME, dst=SERVER)
        tooBig = icmp6Error(original, parseIPv6(original), ICMP6_PACKET_TOO_BIG, 0, DEFAULT_GATEWAY6.packed, 1280)
        forged = [
            packet(PROTO_UDP, udp(), src=A("::1"), dst=ME),  # loopback
            packet(PROTO_UDP, udp(), src=A("fe80::1"), dst=ME),  # link-local
            packet(PROTO_UDP, udp(), src=A("fd00::1"), dst=ME),  # another ULA: a local service's
            packet(PROTO_UDP, udp(), src=A("fd6d:6573:6801::1"), dst=ME),  # the exit's net, but not an ICMPv6 error
            packet(PROTO_UDP, udp(), src=SERVER, dst=A("fd6d:6573:6800::9")),  # not to us
        ]
        client._fromCircuit([good, tooBig, *forged])
        self.assertEqual(client.tun.written, [good, tooBig])
        self.assertEqual(client.counters["from_circuit_refused"], len(forged))

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=80), st.booleans())
    def test_filterTakesAnyBytes(self, data, addressed):
        if addressed and len(data) >= 40:
            data = data[:24] + ME + data[40:]
        circuitPacketAllowed6(data, ME)


class AAAATests(unittest.TestCase):
    def test_aaaaFromExitWhenCarried(self):
        opener = FakeOpener(["198.18.0.7", "2001:2::80"])
        answers, _, _ = self.successResultOf(ExitResolverClient(opener, ipv6=True).lookupIPV6Address("example.test"))
        self.assertEqual([str(ipaddress.ip_address(a.payload._address)) for a in answers], ["2001:2::80"])
        answers, _, _ = self.successResultOf(ExitResolverClient(opener, ipv6=True).lookupAddress("example.test"))
        self.assertEqual([a.payload.dottedQuad() for a in answers], ["198.18.0.7"])

    def test_aaaaEmptyWhenBlocked(self):
        opener = FakeOpener(["2001:2::80"])
        self.assertEqual(self.successResultOf(ExitResolverClient(opener).lookupIPV6Address("example.test")), ([], [], []))
        self.assertEqual(opener.asked, [])
