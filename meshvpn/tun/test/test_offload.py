"""TUN offload in software: 64 KB segments cut as the kernel would, unfinished checksums, and the exit's
address rewrite on them, each checked against a reference (cut first, rewrite each plain packet)."""

import struct

from hypothesis import given, settings, strategies as st
from twisted.trial import unittest

from meshvpn.onion.packets import OFFLOAD_CSUM, OFFLOAD_TCP, OffloadPacket
from meshvpn.tun import offload as ol
from meshvpn.tun import packets as pp
from meshvpn.tun import packets6 as p6

ACK, PSH, FIN, CWR = 0x10, 0x08, 0x01, 0x80


def _sum(data):
    if len(data) & 1:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def pseudo(version, src, dst, proto, length):
    if version == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!I3xB", length, proto)


def transportValid(p):
    """The packet's TCP/UDP checksum is complete and right."""
    version, at, proto = ol.layout(p)
    src, dst = (p[12:16], p[16:20]) if version == 4 else (p[8:24], p[24:40])
    return pp.checksum(pseudo(version, src, dst, proto, len(p) - at) + p[at:]) == 0


def build(version, proto, payload, src, dst, flags=ACK, seq=1000, options=b"", ident=7, partial=True):
    """A TCP or UDP packet; with C{partial} its checksum unfinished (the pseudo-header sum), as a TUN reads it."""
    if proto == 6:
        l4 = bytearray(struct.pack("!HHIIBBHHH", 443, 40001, seq, 99, (5 + len(options) // 4) << 4, flags, 501, 0, 0)
                       + options + payload)
        at = 16
    else:
        l4 = bytearray(struct.pack("!HHHH", 53, 40001, 8 + len(payload), 0) + payload)
        at = 6
    ps = pseudo(version, src, dst, proto, len(l4))
    if partial:
        l4[at:at + 2] = _sum(ps).to_bytes(2, "big")
    else:
        c = pp.checksum(ps + bytes(l4))
        l4[at:at + 2] = (c or (0xFFFF if proto == 17 else 0)).to_bytes(2, "big")
    if version == 4:
        ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), ident, 0x4000, 64, proto, 0, src, dst))
        ip[10:12] = pp.checksum(bytes(ip)).to_bytes(2, "big")
    else:
        ip = bytearray(struct.pack("!IHBB16s16s", 0x60000000, len(l4), proto, 64, src, dst))
    return bytes(ip) + bytes(l4)


def finishWhole(p):
    """The packet with its unfinished checksum finished (what the kernel does to a non-segmented one)."""
    version, at, proto = ol.layout(p)
    out = []
    ol.fromRead(ol.VNET_HDR.pack(ol.NEEDS_CSUM, 0, 0, 0, at, 16 if proto == 6 else 6) + p + b"", out)
    (whole,) = out
    if type(whole) is OffloadPacket:
        return ol.segment(whole)[0]
    return whole


def masked(p):
    """C{p} with its transport checksum zeroed (0 and 0xFFFF are the same one's complement zero)."""
    version, at, proto = ol.layout(p)
    at += 16 if proto == 6 else 6
    return p[:at] + b"\0\0" + p[at + 2:]


addr4 = st.binary(min_size=4, max_size=4)
addr6 = st.binary(min_size=16, max_size=16)


def rewriteAny(p, version, src=None, dst=None, partial=False):
    if version == 4:
        return pp.rewrite(p, pp.parseIPv4(p), src=src, dst=dst, partial=partial)
    return p6.rewrite6(p, p6.parseIPv6(p), src=src, dst=dst, partial=partial)


class SegmentTests(unittest.TestCase):
    @settings(max_examples=150, deadline=None)
    @given(version=st.sampled_from([4, 6]), size=st.integers(1, 20000), mss=st.integers(1, 1460),
           flags=st.sampled_from([ACK, ACK | PSH, ACK | PSH | FIN, ACK | CWR]),
           options=st.sampled_from([b"", b"\x01\x01\x08\x0a" + bytes(range(8))]), seq=st.integers(0, 2**32 - 1),
           data=st.data())
    def test_cutAsTheKernelWould(self, version, size, mss, flags, options, seq, data):
        a, b = (data.draw(addr4), data.draw(addr4)) if version == 4 else (data.draw(addr6), data.draw(addr6))
        payload = bytes(i * 7 & 0xFF for i in range(size))
        big = OffloadPacket(build(version, 6, payload, a, b, flags, seq, options, ident=65530), OFFLOAD_CSUM | OFFLOAD_TCP,
                            mss)
        pieces = ol.segment(big)
        hl = (20 if version == 4 else 40) + 20 + len(options)
        self.assertEqual(len(pieces), -(-size // mss))
        self.assertEqual(b"".join(p[hl:] for p in pieces), payload)
        for i, p in enumerate(pieces):
            self.assertTrue(transportValid(p))
            self.assertLessEqual(len(p), hl + mss)
            l4 = 20 if version == 4 else 40
            self.assertEqual(int.from_bytes(p[l4 + 4:l4 + 8], "big"), (seq + i * mss) & 0xFFFFFFFF)
            last = i == len(pieces) - 1
            expect = flags & ~(0 if last else PSH | FIN) & ~(0 if i == 0 else CWR)
            self.assertEqual(p[l4 + 13], expect)
            if version == 4:
                info = pp.parseIPv4(p)  # checks the header checksum and length
                self.assertEqual(int.from_bytes(p[4:6], "big"), (65530 + i) & 0xFFFF)
                self.assertEqual(info.total, len(p))
            else:
                p6.parseIPv6(p)

    @settings(max_examples=150, deadline=None)
    @given(version=st.sampled_from([4, 6]), size=st.integers(1, 9000), mss=st.integers(200, 1460), data=st.data(),
           which=st.sampled_from(["src", "dst", "both"]))
    def test_rewriteThenCutIsCutThenRewrite(self, version, size, mss, data, which):
        """The exit's rewrite of an unfinished GSO segment against the reference: cut it, rewrite each packet."""
        draw = addr4 if version == 4 else addr6
        a, b, new1, new2 = (data.draw(draw) for _ in range(4))
        src, dst = {"src": (new1, None), "dst": (None, new2), "both": (new1, new2)}[which]
        payload = data.draw(st.binary(min_size=size, max_size=size))
        big = OffloadPacket(build(version, 6, payload, a, b), OFFLOAD_CSUM | OFFLOAD_TCP, mss)
        rewritten = OffloadPacket(rewriteAny(big, version, src, dst, partial=True), big.offload, mss)
        reference = [rewriteAny(p, version, src, dst) for p in ol.segment(big)]
        mine = ol.segment(rewritten)
        self.assertEqual([masked(p) for p in mine], [masked(p) for p in reference])
        for p in mine + reference:
            self.assertTrue(transportValid(p))
        # The field itself (what the kernel cuts with) is the new pseudo-header sum: finished whole, it checks.
        self.assertTrue(transportValid(finishWhole(rewritten)))

    @settings(max_examples=150, deadline=None)
    @given(version=st.sampled_from([4, 6]), proto=st.sampled_from([6, 17]), payload=st.binary(max_size=3000),
           data=st.data())
    def test_unfinishedChecksumRewrite(self, version, proto, payload, data):
        """TCP and UDP without segmentation: finish(rewrite partial) == rewrite(finish)."""
        draw = addr4 if version == 4 else addr6
        a, b, new = (data.draw(draw) for _ in range(3))
        p = build(version, proto, payload, a, b)
        mine = finishWhole(rewriteAny(p, version, src=new, partial=True))
        reference = rewriteAny(finishWhole(p), version, src=new)
        self.assertEqual(masked(mine), masked(reference))
        self.assertTrue(transportValid(mine))
        self.assertTrue(transportValid(reference))
        if proto == 17:
            self.assertNotEqual(mine[(20 if version == 4 else 40) + 6:][:2], b"\0\0")

    def test_vnetHeader(self):
        a, b = pp.ipBytes("198.18.0.1"), pp.ipBytes("10.0.0.2")
        big = OffloadPacket(build(4, 6, b"x" * 4000, a, b), OFFLOAD_CSUM | OFFLOAD_TCP, 1400)
        self.assertEqual(ol.VNET_HDR.unpack(ol.vnetHeader(big)), (ol.NEEDS_CSUM, ol.GSO_TCPV4, 40, 1400, 20, 16))
        udp = OffloadPacket(build(6, 17, b"y" * 100, bytes(16), bytes(15) + b"\1"), OFFLOAD_CSUM)
        self.assertEqual(ol.VNET_HDR.unpack(ol.vnetHeader(udp)), (ol.NEEDS_CSUM, 0, 48, 0, 40, 6))
        self.assertEqual(ol.segmentPayloadSize(big), 1440)
        bad = OffloadPacket(build(4, 17, b"y" * 4000, a, b), OFFLOAD_CSUM | OFFLOAD_TCP, 1400)
        self.assertRaises(ol.OffloadError, ol.vnetHeader, bad)
        self.assertRaises(ol.OffloadError, ol.segment, bad)
        self.assertRaises(ol.OffloadError, ol.vnetHeader, OffloadPacket(b"\x45" + bytes(40), OFFLOAD_CSUM))


class FromReadTests(unittest.TestCase):
    a, b = pp.ipBytes("198.18.0.1"), pp.ipBytes("10.0.0.2")

    def test_plainAndOffloaded(self):
        plain = build(4, 6, b"z" * 100, self.a, self.b, partial=False)
        out = []
        self.assertEqual(ol.fromRead(bytes(10) + plain, out), 0)
        self.assertEqual(ol.fromRead(ol.VNET_HDR.pack(ol.DATA_VALID, 0, 0, 0, 0, 0) + plain, out), 0)
        self.assertEqual(out, [plain, plain])
        self.assertIs(type(out[0]), bytes)
        big = build(4, 6, b"q" * 3000, self.a, self.b)
        out = []
        ol.fromRead(ol.VNET_HDR.pack(ol.NEEDS_CSUM, ol.GSO_TCPV4, 40, 1000, 20, 16) + big, out)
        (p,) = out
        self.assertEqual((type(p), p.offload, p.gsoSize, bytes(p)), (OffloadPacket, OFFLOAD_CSUM | OFFLOAD_TCP, 1000, big))

    def test_smallSegmentsAreCutHere(self):
        """A path MSS under MIN_GSO_SIZE: cut by the edge that read it, never sent on as one record."""
        big = build(4, 6, b"q" * 3000, self.a, self.b)
        out = []
        ol.fromRead(ol.VNET_HDR.pack(ol.NEEDS_CSUM, ol.GSO_TCPV4, 40, 500, 20, 16) + big, out)
        self.assertEqual(len(out), 6)
        self.assertTrue(all(type(p) is bytes and transportValid(p) for p in out))
        self.assertEqual(ol.fromRead(ol.VNET_HDR.pack(ol.NEEDS_CSUM, ol.GSO_TCPV4, 40, 0, 20, 16) + big, []), 1)

    def test_whatWeDoNotCarryIsFinishedHere(self):
        big = build(4, 6, b"q" * 3000, self.a, self.b, flags=ACK | CWR)
        out = []
        # ECN: cut here (CWR on the first only), checksums complete
        ol.fromRead(ol.VNET_HDR.pack(ol.NEEDS_CSUM, ol.GSO_TCPV4 | ol.GSO_ECN, 40, 1000, 20, 16) + big, out)
        self.assertEqual(len(out), 3)
        self.assertTrue(all(type(p) is bytes and transportValid(p) for p in out))
        self.assertEqual([p[33] & CWR for p in out], [CWR, 0, 0])
        # a checksum start this module does not derive: finished from the header's own offsets
        udp = build(4, 17, b"u" * 33, self.a, self.b)
        out = []
        ol.fromRead(ol.VNET_HDR.pack(ol.NEEDS_CSUM, 0, 0, 0, 20, 6) + udp[:20] + udp[20:], out)
        self.assertIs(type(out[0]), OffloadPacket)
        odd = bytearray(udp)
        odd[9] = 136  # UDP-Lite: not a layout we carry; its checksum field is still where the header says
        out = []
        ol.fromRead(ol.VNET_HDR.pack(ol.NEEDS_CSUM, 0, 0, 0, 20, 6) + bytes(odd), out)
        self.assertIs(type(out[0]), bytes)

    @settings(max_examples=400, deadline=None)
    @given(st.binary(min_size=10, max_size=200))
    def test_anyReadIsHandled(self, raw):
        """Nothing the kernel could hand us (or garbage) raises: it is kept, finished, cut or dropped."""
        out = []
        dropped = ol.fromRead(raw, out)
        self.assertIn(dropped, (0, 1))
        for p in out:
            if type(p) is OffloadPacket:
                ol.vnetHeader(p)
        ol.plainPackets(out)
