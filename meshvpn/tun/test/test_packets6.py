"""IPv6 packet parsing and rewriting: strict on every length, refusing what an exit must not carry."""

import ipaddress
import struct

from hypothesis import given, settings, strategies as st
from twisted.trial import unittest

from meshvpn.tun.packets import PROTO_TCP, PROTO_UDP, PacketError
from meshvpn.tun.packets6 import (
    DEST_OPTIONS, FRAGMENT, ICMP6_ECHO, ICMP6_PACKET_TOO_BIG, PROTO_ICMPV6, ROUTING, icmp6Error, parseIPv6,
    rewrite6, upperChecksum,
)

CLIENT = ipaddress.IPv6Address("fd6d:6573:6800::2").packed
SERVER = ipaddress.IPv6Address("2001:2::80").packed  # RFC 5180 benchmarking space: the made-up internet
POOL = ipaddress.IPv6Address("fd6d:6573:6801::7").packed


def packet(proto, upper, src=CLIENT, dst=SERVER, extensions=b"", first=None):
    """A well-formed packet with a correct upper-layer checksum."""
    body = bytearray(upper)
    at = {PROTO_TCP: 16, PROTO_UDP: 6, PROTO_ICMPV6: 2}.get(proto)
    if at is not None:
        struct.pack_into("!H", body, at, 0)
        csum = upperChecksum(src, dst, proto, bytes(body))
        struct.pack_into("!H", body, at, csum or 0xFFFF)
    payload = extensions + bytes(body)
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), first if first is not None else proto, 64, src, dst) + payload


def udp(data=b"hello", sport=5353, dport=53):
    return struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data


def tcp(sport=40000, dport=443):
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 65535, 0, 0)


class ParseTests(unittest.TestCase):
    def test_udpTcpIcmp(self):
        p = parseIPv6(packet(PROTO_UDP, udp()))
        self.assertEqual((p.proto, p.sport, p.dport, p.src, p.dst), (PROTO_UDP, 5353, 53, CLIENT, SERVER))
        p = parseIPv6(packet(PROTO_TCP, tcp()))
        self.assertEqual((p.proto, p.dport), (PROTO_TCP, 443))
        p = parseIPv6(packet(PROTO_ICMPV6, struct.pack("!BBHHH", ICMP6_ECHO, 0, 0, 1, 1)))
        self.assertEqual(p.icmpType, ICMP6_ECHO)

    def test_destinationOptionsSkipped(self):
        options = bytes([PROTO_UDP, 0, 1, 4, 0, 0, 0, 0])  # next UDP, 8 bytes, PadN
        p = parseIPv6(packet(PROTO_UDP, udp(), extensions=options, first=DEST_OPTIONS))
        self.assertEqual((p.proto, p.upper, p.dport), (PROTO_UDP, 48, 53))

    def test_routingHeaderRefused(self):
        """The attack: a type-0 routing header asking the exit to bounce the packet on (RFC 5095)."""
        routing = bytes([PROTO_UDP, 2, 0, 1, 0, 0, 0, 0]) + SERVER
        e = self.assertRaises(PacketError, parseIPv6, packet(PROTO_UDP, udp(), extensions=routing, first=ROUTING))
        self.assertIn("routing header", str(e))

    def test_fragmentRefused(self):
        """The attack: ports hidden in a second fragment, past the exit's policy check."""
        frag = bytes([PROTO_TCP, 0, 0, 1, 0, 0, 0, 7])
        e = self.assertRaises(PacketError, parseIPv6, packet(PROTO_TCP, tcp(), extensions=frag, first=FRAGMENT))
        self.assertIn("fragment", str(e))

    def test_extensionChainBounded(self):
        """The attack: a long chain of options headers pushing the ports out of reach (RFC 7112)."""
        one = lambda nxt: bytes([nxt, 0, 1, 4, 0, 0, 0, 0])
        chain = b"".join(one(DEST_OPTIONS) for _ in range(5)) + one(PROTO_UDP)
        e = self.assertRaises(PacketError, parseIPv6, packet(PROTO_UDP, udp(), extensions=chain, first=DEST_OPTIONS))
        self.assertIn("extension headers", str(e))

    def test_lengthsChecked(self):
        good = packet(PROTO_UDP, udp())
        for bad in (good[:39], good[:-1], good + b"x", b"\x40" + good[1:]):
            self.assertRaises(PacketError, parseIPv6, bad)
        zeroUdpSum = bytearray(good)
        struct.pack_into("!H", zeroUdpSum, 46, 0)
        self.assertRaises(PacketError, parseIPv6, bytes(zeroUdpSum))

    @settings(max_examples=500, deadline=None)
    @given(st.binary(max_size=120))
    def test_garbageOnlyPacketError(self, data):
        try:
            parseIPv6(data)
        except PacketError:
            pass

    @settings(max_examples=300, deadline=None)
    @given(st.binary(min_size=40, max_size=120), st.integers(0, 255))
    def test_garbageBehindAValidHeader(self, data, nxt):
        raw = bytearray(data)
        raw[0] = 0x60
        struct.pack_into("!H", raw, 4, len(raw) - 40)
        raw[6] = nxt
        try:
            p = parseIPv6(bytes(raw))
        except PacketError:
            return
        self.assertLessEqual(p.upper, len(raw))


class RewriteTests(unittest.TestCase):
    def assertChecksumRight(self, raw):
        p = parseIPv6(raw)
        upper = raw[p.upper:]
        self.assertEqual(upperChecksum(p.src, p.dst, p.proto, upper), 0)

    def test_sourceRewriteKeepsChecksumsRight(self):
        for proto, upper in ((PROTO_UDP, udp(b"x" * 33)), (PROTO_TCP, tcp()),
                             (PROTO_ICMPV6, struct.pack("!BBHHH", ICMP6_ECHO, 0, 0, 1, 1))):
            raw = packet(proto, upper)
            self.assertChecksumRight(raw)
            out = rewrite6(raw, parseIPv6(raw), src=POOL)
            self.assertEqual(parseIPv6(out).src, POOL)
            self.assertChecksumRight(out)
            back = rewrite6(out, parseIPv6(out), dst=CLIENT, src=SERVER)
            self.assertChecksumRight(back)

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=200), st.binary(min_size=16, max_size=16))
    def test_anyPayloadAnyAddress(self, data, address):
        raw = packet(PROTO_UDP, udp(data))
        out = rewrite6(raw, parseIPv6(raw), src=address)
        self.assertChecksumRight(out)

    def test_packetTooBig(self):
        raw = packet(PROTO_TCP, tcp() + b"z" * 1500)
        err = icmp6Error(raw, parseIPv6(raw), ICMP6_PACKET_TOO_BIG, 0, POOL, mtu=1280)
        self.assertLessEqual(len(err), 1280)
        p = parseIPv6(err)
        self.assertEqual((p.proto, p.icmpType, p.dst), (PROTO_ICMPV6, ICMP6_PACKET_TOO_BIG, CLIENT))
        self.assertEqual(struct.unpack_from("!I", err, 44)[0], 1280)
        self.assertChecksumRight(err)
        # Never an error about an error (RFC 4443 2.4 e).
        self.assertIsNone(icmp6Error(err, p, ICMP6_PACKET_TOO_BIG, 0, POOL, mtu=1280))
