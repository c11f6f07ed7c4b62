"""Packet parsing, rewriting, ICMP errors and the packet exit (no root: fake TUN, fake circuits)."""

import struct

from hypothesis import given, settings, strategies as st
from twisted.internet.task import Clock
from twisted.trial import unittest

from meshvpn.tun import packets as pp
from meshvpn.exit.packetexit import PacketExit, PacketExitEdge
from meshvpn.exit.policy import defaultExitPolicy
from meshvpn.client.test.fakes import FakeCircuit, FakeTun


def udp(src, dst, sport, dport, payload=b"hello", checksum=True):
    s, d = pp.ipBytes(src), pp.ipBytes(dst)
    header = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)
    if checksum:
        pseudo = s + d + struct.pack("!BBH", 0, 17, 8 + len(payload))
        c = pp.checksum(pseudo + header + payload) or 0xFFFF
        header = header[:6] + struct.pack("!H", c)
    return pp.ipv4Header(s, d, 17, 8 + len(payload)) + header + payload


def tcp(src, dst, sport, dport, payload=b""):
    s, d = pp.ipBytes(src), pp.ipBytes(dst)
    header = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 65535, 0, 0)
    pseudo = s + d + struct.pack("!BBH", 0, 6, 20 + len(payload))
    c = pp.checksum(pseudo + header + payload)
    header = header[:16] + struct.pack("!H", c) + header[18:]
    return pp.ipv4Header(s, d, 6, 20 + len(payload)) + header + payload


def transportChecksumOK(packet):
    info = pp.parseIPv4(packet)
    seg = packet[info.ihl:]
    pseudo = info.src + info.dst + struct.pack("!BBH", 0, info.proto, len(seg))
    return pp.checksum(pseudo + seg) == 0


class ParseTests(unittest.TestCase):
    def test_udp(self):
        p = pp.parseIPv4(udp("10.0.0.1", "198.18.0.5", 1234, 53))
        self.assertEqual((pp.ipStr(p.src), pp.ipStr(p.dst), p.proto, p.sport, p.dport), ("10.0.0.1", "198.18.0.5", 17, 1234, 53))

    def test_rejects(self):
        good = udp("10.0.0.1", "198.18.0.5", 1, 2)
        for bad, why in [
            (good[:19], "shorter"),
            (b"\x65" + good[1:], "version"),
            (good + b"x", "total length"),
            (good[:10] + b"\0\0" + good[12:], "checksum"),
            (b"\x4f" + good[1:], "header length"),
        ]:
            self.assertRaisesRegex(pp.PacketError, why, pp.parseIPv4, bad)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=80))
    def test_randomBytes(self, data):
        try:
            pp.parseIPv4(data)
        except pp.PacketError:
            pass

    @settings(max_examples=200, deadline=None)
    @given(st.binary(min_size=20, max_size=60), st.integers(0, 59), st.integers(0, 255))
    def test_mutatedPackets(self, payload, where, value):
        packet = bytearray(udp("10.0.0.1", "198.18.0.5", 1, 2, payload))
        packet[where % len(packet)] = value
        try:
            info = pp.parseIPv4(bytes(packet))
        except pp.PacketError:
            return
        self.assertLessEqual(info.ihl, len(packet))

    @settings(max_examples=100, deadline=None)
    @given(st.binary(max_size=100), st.integers(1, 65535), st.booleans())
    def test_rewriteKeepsChecksums(self, payload, port, isTcp):
        packet = tcp("10.1.2.3", "198.18.0.9", port, 80, payload) if isTcp else udp("10.1.2.3", "198.18.0.9", port, 53, payload)
        info = pp.parseIPv4(packet)
        out = pp.rewrite(packet, info, src=pp.ipBytes("100.64.3.4"))
        info2 = pp.parseIPv4(out)  # IP checksum verified here
        self.assertEqual(pp.ipStr(info2.src), "100.64.3.4")
        self.assertTrue(transportChecksumOK(out))

    @given(st.integers(0, 0xFFFF), st.binary(min_size=4, max_size=4), st.binary(min_size=4, max_size=4))
    def test_addressDeltaIsRfc1624(self, csum, old, new):
        """The per-packet shortcut gives what the word-by-word RFC 1624 update gives, for any checksum and addresses."""
        self.assertEqual(pp._apply(csum, pp._delta4(old, new)), pp._adjust(csum, old, new))

    @settings(max_examples=100, deadline=None)
    @given(st.binary(max_size=100), st.integers(1, 65535), st.booleans(), st.binary(min_size=4, max_size=4))
    def test_rewriteDestinationKeepsChecksums(self, payload, port, isTcp, dst):
        packet = tcp("198.18.0.9", "100.64.3.4", 80, port, payload) if isTcp else udp("198.18.0.9", "100.64.3.4", 53, port, payload)
        out = pp.rewrite(packet, pp.parseIPv4(packet), dst=dst)
        self.assertEqual(pp.parseIPv4(out).dst, dst)
        self.assertTrue(transportChecksumOK(out))

    def test_icmpError(self):
        packet = tcp("10.1.2.3", "198.18.0.9", 5555, 25)
        info = pp.parseIPv4(packet)
        err = pp.icmpError(packet, info, pp.ICMP_UNREACH, pp.UNREACH_ADMIN_PROHIBITED, pp.ipBytes("100.64.0.1"))
        e = pp.parseIPv4(err)
        self.assertEqual((e.proto, e.icmpType, err[e.ihl + 1], pp.ipStr(e.dst)), (1, 3, 13, "10.1.2.3"))
        self.assertEqual(pp.checksum(err[e.ihl:]), 0)
        self.assertEqual(err[e.ihl + 8:], packet[:28])
        self.assertIsNone(pp.icmpError(err, e, 3, 13, pp.ipBytes("100.64.0.1")))


class PacketExitTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.scripts = []
        self.pe = PacketExit(self.clock, defaultExitPolicy(), "abcd1234", pool="100.64.0.0/29", tunFactory=FakeTun,
                             nft=self.scripts.append, forwarding=False)
        self.pe.startService()
        self.tun = self.pe.tun

    def test_rulesNamedPerNodeAndRemoved(self):
        self.assertIn("table ip meshvpn-exit-abcd1234", self.scripts[0])
        self.assertIn("masquerade", self.scripts[0])
        self.assertIn("maxseg size set rt mtu", self.scripts[0])
        self.pe.stopService()
        self.assertIn("delete table ip meshvpn-exit-abcd1234", self.scripts[-1])
        self.assertTrue(self.tun.closed)

    def test_roundTrip(self):
        c1, c2 = FakeCircuit(), FakeCircuit()
        self.pe.circuitPackets(c1, [udp("10.9.0.2", "198.18.0.5", 1000, 53)])
        self.pe.circuitPackets(c2, [udp("10.9.0.2", "198.18.0.5", 1000, 53)])
        a1, a2 = (pp.parseIPv4(p) for p in self.tun.written)
        self.assertEqual((pp.ipStr(a1.src), pp.ipStr(a2.src)), ("100.64.0.2", "100.64.0.3"))
        self.assertTrue(all(transportChecksumOK(p) for p in self.tun.written))
        self.tun.receiver([udp("198.18.0.5", "100.64.0.3", 53, 1000, b"answer")])
        self.assertEqual(c1.sent, [])
        (reply,) = c2.sent
        r = pp.parseIPv4(reply)
        self.assertEqual((pp.ipStr(r.src), pp.ipStr(r.dst)), ("198.18.0.5", "10.9.0.2"))
        self.assertTrue(transportChecksumOK(reply))

    def test_icmpErrorFromInternetRewrittenInside(self):
        c = FakeCircuit()
        out = tcp("10.9.0.2", "198.18.0.5", 1000, 80)
        self.pe.circuitPackets(c, [out])
        sent = self.tun.written[0]
        info = pp.parseIPv4(sent)
        err = pp.icmpError(sent, info, pp.ICMP_UNREACH, pp.UNREACH_PORT, pp.ipBytes("198.18.0.5"))
        self.tun.receiver([err])
        (back,) = c.sent
        b = pp.parseIPv4(back)
        self.assertEqual(pp.ipStr(b.dst), "10.9.0.2")
        self.assertEqual(pp.checksum(back[b.ihl:]), 0)
        quoted = back[b.ihl + 8:]
        self.assertEqual(pp.ipStr(quoted[12:16]), "10.9.0.2")
        self.assertEqual(pp.checksum(quoted[:20]), 0)

    def test_policyRejectsWithIcmp(self):
        c = FakeCircuit()
        self.pe.circuitPackets(c, [tcp("10.9.0.2", "198.18.0.5", 1000, 25), tcp("10.9.0.2", "10.0.0.1", 1000, 80),
                                   tcp("10.9.0.2", "100.64.0.3", 1000, 80)])
        self.assertEqual(self.tun.written, [])
        self.assertEqual(len(c.sent), 3)
        for p in c.sent:
            e = pp.parseIPv4(p)
            self.assertEqual((e.icmpType, p[e.ihl + 1]), (3, 13))

    def test_malformedDroppedOthersPass(self):
        c = FakeCircuit()
        self.pe.circuitPackets(c, [b"\x45garbage", tcp("10.9.0.2", "198.18.0.5", 1000, 80)])
        self.assertEqual(len(self.tun.written), 1)
        self.assertEqual(self.pe.counters["malformed"], 1)

    def test_oversizeFragNeeded(self):
        c = FakeCircuit()
        self.pe.circuitPackets(c, [tcp("10.9.0.2", "198.18.0.5", 1000, 80, b"x" * 1500)])
        (err,) = c.sent
        e = pp.parseIPv4(err)
        self.assertEqual((e.icmpType, err[e.ihl + 1], struct.unpack_from("!H", err, e.ihl + 6)[0]), (3, 4, 1480))

    def test_leasesBoundedAndFreed(self):
        circuits = [FakeCircuit() for _ in range(10)]
        for c in circuits:
            self.pe.circuitPackets(c, [udp("10.9.0.2", "198.18.0.5", 1, 53)])
        self.assertLessEqual(len(self.pe._byAddress), self.pe.maxLeases)
        edge = PacketExitEdge(type("E", (), {"circuitClosed": lambda s, c, r: None})(), self.pe)
        before = len(self.pe._byAddress)
        edge.circuitClosed(circuits[-1], 0)
        self.assertEqual(len(self.pe._byAddress), before - 1)
        self.clock.advance(self.pe.idleTimeout * 2)
        self.assertEqual(len(self.pe._byAddress), 0)
