"""The packet exit with offloaded packets (no root: fake TUN, fake circuits; the kernel's side is in
meshvpn/tun/test/test_offloaddevice.py): rewritten on their unfinished checksum, judged by one segment's
size, and cut for a circuit that cannot carry them."""

from twisted.internet.task import Clock
from twisted.trial import unittest

from meshvpn.client.test.fakes import FakeCircuit, FakeTun
from meshvpn.exit.packetexit import PacketExit
from meshvpn.exit.policy import defaultExitPolicy
from meshvpn.onion.flow import FLOW_ALL, FLOW_GSO
from meshvpn.onion.packets import OFFLOAD_CSUM, OFFLOAD_TCP, OffloadPacket
from meshvpn.tun import offload as ol
from meshvpn.tun import packets as pp
from meshvpn.tun.test.test_offload import build, finishWhole, transportValid

CLIENT = pp.ipBytes("10.99.0.2")
SERVER = pp.ipBytes("198.18.100.1")


class GsoCircuit(FakeCircuit):
    flowFlags = FLOW_ALL


class PlainCircuit(FakeCircuit):
    flowFlags = FLOW_ALL & ~FLOW_GSO


class PacketExitOffloadTests(unittest.TestCase):
    def start(self):
        pe = PacketExit(Clock(), defaultExitPolicy(""), "abcd1234", pool="100.64.0.0/29", tunFactory=FakeTun,
                        nft=lambda script: None, forwarding=False)
        pe.startService()
        self.addCleanup(pe.stopService)
        return pe

    def test_uploadRewrittenWhole(self):
        pe = self.start()
        c = GsoCircuit()
        big = OffloadPacket(build(4, 6, b"u" * 20000, CLIENT, SERVER), OFFLOAD_CSUM | OFFLOAD_TCP, 1440)
        ack = OffloadPacket(build(4, 6, b"", CLIENT, SERVER), OFFLOAD_CSUM)
        pe.circuitPackets(c, [big, ack])
        self.assertEqual(c.sent, [])  # no "fragmentation needed": each segment fits the MTU
        out, outAck = pe.tun.written
        self.assertEqual((type(out), out.offload, out.gsoSize), (OffloadPacket, big.offload, 1440))
        self.assertEqual(pp.parseIPv4(out).src, pp.ipBytes("100.64.0.2"))
        for p in (out, outAck):
            self.assertIs(type(p), OffloadPacket)
            self.assertTrue(transportValid(finishWhole(p)))
        self.assertTrue(all(transportValid(s) for s in ol.segment(out)))

    def test_segmentOverTheMtuIsRefused(self):
        pe = self.start()
        c = GsoCircuit()
        big = OffloadPacket(build(4, 6, b"u" * 20000, CLIENT, SERVER), OFFLOAD_CSUM | OFFLOAD_TCP, 1460)
        pe.circuitPackets(c, [big])
        self.assertEqual(pe.tun.written, [])
        (err,) = c.sent
        info = pp.parseIPv4(err)
        self.assertEqual((info.proto, info.icmpType, err[20 + 6:20 + 8]), (pp.PROTO_ICMP, pp.ICMP_UNREACH,
                                                                           pe.mtu.to_bytes(2, "big")))

    def test_downloadToEitherCircuit(self):
        """A 64 KB segment from the internet goes whole to a circuit with FLOW_GSO, cut to one without."""
        pe = self.start()
        gso, plain = GsoCircuit(), PlainCircuit()
        pe.circuitPackets(gso, [build(4, 6, b"", CLIENT, SERVER, partial=False)])
        other = pp.ipBytes("10.99.0.3")
        pe.circuitPackets(plain, [build(4, 6, b"", other, SERVER, partial=False)])
        payload = bytes(range(256)) * 100
        for lease, circuit in ((pp.ipBytes("100.64.0.2"), gso), (pp.ipBytes("100.64.0.3"), plain)):
            pe.tun.receiver([OffloadPacket(build(4, 6, payload, SERVER, lease, seq=5), OFFLOAD_CSUM | OFFLOAD_TCP,
                                           1440)])
        (whole,) = gso.sent
        self.assertEqual((type(whole), whole.gsoSize, pp.parseIPv4(whole).dst), (OffloadPacket, 1440, CLIENT))
        self.assertTrue(transportValid(finishWhole(whole)))
        cut = plain.sent
        self.assertEqual(len(cut), -(-len(payload) // 1440))
        self.assertTrue(all(type(p) is bytes and transportValid(p) and len(p) <= 1480 for p in cut))
        self.assertEqual(b"".join(p[40:] for p in cut), payload)
        self.assertEqual({pp.parseIPv4(p).dst for p in cut}, {pp.ipBytes("10.99.0.3")})
