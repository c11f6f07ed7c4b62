"""Joining TCP segments into one TUN write: what joins, what never does, and the kernel checking it (root)."""

import os
import select
import socket
import struct

from hypothesis import given, settings, strategies as st
from twisted.internet import reactor
from twisted.trial import unittest

from meshvpn.tun import packets as pp
from meshvpn.tun.coalesce import PLAIN_HDR, VNET_HDR_LEN, coalesce
from meshvpn.tools.netns import Netns, requireRoot

A, B = pp.ipBytes("198.18.77.5"), pp.ipBytes("10.77.0.1")
ACK, PSH, SYN, FIN = 0x10, 0x08, 0x02, 0x01


def segment(seq, payload, flags=ACK, ack=1, src=A, dst=B, sport=4000, dport=80, window=502, options=b"", tos=0,
            ttl=64, ipOptions=b"", fragment=0x4000):
    """A TCP/IPv4 segment with correct checksums."""
    tcpLen = 20 + len(options) + len(payload)
    tcp = bytearray(struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack, (5 + len(options) // 4) << 4,
                                flags, window, 0, 0) + options + payload)
    pseudo = src + dst + struct.pack("!BBH", 0, 6, tcpLen)
    struct.pack_into("!H", tcp, 16, pp.checksum(pseudo + bytes(tcp)))
    ihl = 20 + len(ipOptions)
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x40 | ihl // 4, tos, ihl + tcpLen, 7, fragment, ttl, 6, 0, src, dst)
                   + ipOptions)
    struct.pack_into("!H", ip, 10, pp.checksum(bytes(ip)))
    return bytes(ip) + bytes(tcp)


def split(write):
    """The segments a joined write stands for, as the kernel's GSO would cut them (headers left aside)."""
    header = write[0]
    if header is PLAIN_HDR:
        return [bytes(write[1])]
    flags, gsoType, hlen, size, start, offset = struct.unpack("<BBHHHH", header)
    payload = b"".join(bytes(b) for b in write[3:])
    return [payload[i:i + size] for i in range(0, len(payload), size)]


def payloadOf(p):
    info = pp.parseIPv4(p)
    return p[info.ihl + (p[info.ihl + 12] >> 4) * 4:]


class CoalesceTests(unittest.TestCase):
    def test_bulkRunJoined(self):
        """Full-sized segments in sequence, the last shorter with PSH: one write, headers as the kernel needs them."""
        packets = [segment(1000 + 1400 * i, bytes([i]) * 1400) for i in range(20)]
        packets.append(segment(1000 + 1400 * 20, b"z" * 100, ACK | PSH))
        writes, joined = coalesce(packets)
        self.assertEqual((len(writes), joined), (1, 21))
        header, ip, tcp = writes[0][:3]
        self.assertEqual(struct.unpack("<BBHHHH", header), (0, 1, 40, 1400, 0, 0))
        ip, tcp = bytes(ip), bytes(tcp)
        self.assertEqual(pp.checksum(ip), 0)
        self.assertEqual(int.from_bytes(ip[2:4], "big"), 40 + 1400 * 20 + 100)
        self.assertEqual(tcp[13], ACK | PSH)
        self.assertEqual(tcp[4:8], packets[0][24:28])
        # A complete checksum over the joined segment, for the kernel to check in full.
        tcpLen = 20 + 1400 * 20 + 100
        whole = tcp + b"".join(bytes(b) for b in writes[0][3:])
        self.assertEqual(pp.checksum(A + B + struct.pack("!BBH", 0, 6, tcpLen) + whole), 0)
        # One damaged segment anywhere makes it wrong.
        damaged = list(packets)
        damaged[7] = damaged[7][:-1] + bytes([damaged[7][-1] ^ 0x40])
        bad, _ = coalesce(damaged)
        whole = bytes(bad[0][2]) + b"".join(bytes(b) for b in bad[0][3:])
        self.assertNotEqual(pp.checksum(A + B + struct.pack("!BBH", 0, 6, tcpLen) + whole), 0)
        self.assertEqual(b"".join(split(writes[0])), b"".join(payloadOf(p) for p in packets))

    def test_neverJoined(self):
        """Anything Linux's GRO would not join is written as it came, in order."""
        cases = {
            "gap": [segment(0, b"a" * 100), segment(150, b"b" * 100)],
            "other ack": [segment(0, b"a" * 100), segment(100, b"b" * 100, ack=2)],
            "other window": [segment(0, b"a" * 100), segment(100, b"b" * 100, window=1)],
            "other options": [segment(0, b"a" * 100, options=b"\x01\x01\x08\x0a" + bytes(8)),
                              segment(100, b"b" * 100, options=b"\x01\x01\x08\x0a" + bytes(7) + b"\x01")],
            "other tos": [segment(0, b"a" * 100), segment(100, b"b" * 100, tos=3)],
            "other ttl": [segment(0, b"a" * 100), segment(100, b"b" * 100, ttl=9)],
            "other flow": [segment(0, b"a" * 100), segment(100, b"b" * 100, sport=4001)],
            "bigger after": [segment(0, b"a" * 100), segment(100, b"b" * 200)],
            "after a short one": [segment(0, b"a" * 100), segment(100, b"b" * 50), segment(150, b"c" * 50)],
            "after psh": [segment(0, b"a" * 100, ACK | PSH), segment(100, b"b" * 100)],
            "odd size": [segment(0, b"a" * 101), segment(101, b"b" * 101)],
            "syn": [segment(0, b"a" * 100, SYN | ACK), segment(100, b"b" * 100)],
            "fin": [segment(0, b"a" * 100), segment(100, b"b" * 100, ACK | FIN)],
            "no payload": [segment(0, b""), segment(0, b"")],
            "ip options": [segment(0, b"a" * 100, ipOptions=b"\x01" * 4), segment(100, b"b" * 100, ipOptions=b"\x01" * 4)],
            "fragments": [segment(0, b"a" * 100, fragment=0x2000), segment(100, b"b" * 100, fragment=0x2000)],
            "not tcp": [pp.ipv4Header(A, B, 17, 8) + bytes(8)] * 2,
        }
        for why, packets in cases.items():
            writes, joined = coalesce(packets)
            if why == "after a short one":
                # The first two join (the shorter one ends the run); the third starts anew.
                self.assertEqual((len(writes), joined), (2, 2), why)
                continue
            self.assertEqual(joined, 0, why)
            self.assertEqual([w for w in writes], [[PLAIN_HDR, p] for p in packets], why)

    def test_neverPastTheIPv4Length(self):
        packets = [segment(1400 * i, b"x" * 1400) for i in range(60)]
        writes, joined = coalesce(packets)
        self.assertEqual(joined, 60)
        for w in writes:
            self.assertLessEqual(int.from_bytes(bytes(w[1])[2:4], "big"), 65535)
        self.assertEqual(sum(len(split(w)) for w in writes), 60)

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(st.integers(0, 2), st.sampled_from([0, 1, 2, 3]), st.integers(0, 3),
                              st.sampled_from([ACK, ACK, ACK | PSH, ACK | FIN])), max_size=40))
    def test_sameBytesSameOrder(self, plan):
        """Whatever the mix: every packet is in exactly one write, payloads in order, each write one flow's run."""
        seqs, packets = {}, []
        for flow, gap, sizeClass, flags in plan:
            size = (0, 200, 500, 500)[sizeClass]
            seq = seqs.get(flow, 0) + (0, 0, 7, 500)[gap]
            payload = os.urandom(size)
            packets.append(segment(seq, payload, flags, sport=4000 + flow))
            seqs[flow] = seq + size
        writes, joined = coalesce(packets)
        parts = [s for w in writes for s in split(w)]
        expected = [payloadOf(p) for p in packets]
        plain = [bytes(w[1]) for w in writes if w[0] is PLAIN_HDR]
        self.assertEqual(len(plain) + joined, len(packets))
        # Plain writes are the packets themselves; joined ones cut back into the same payloads.
        flat = []
        for w in writes:
            flat.extend([payloadOf(bytes(w[1]))] if w[0] is PLAIN_HDR else split(w))
        self.assertEqual(flat, expected)
        self.assertEqual(len(parts), len(packets))


    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.binary(max_size=120), max_size=12),
           st.lists(st.tuples(st.integers(0, 139), st.integers(0, 255)), max_size=3))
    def test_malformedNeverRaises(self, raw, mutations):
        """Bytes from anyone: never an exception, every packet written exactly once (joined or as it came)."""
        packets = list(raw)
        for k in range(4):  # a run of valid segments, some mutated
            p = bytearray(segment(100 * k, b"q" * 100))
            for where, value in mutations:
                if k == 2:
                    p[where] = value
            packets.append(bytes(p))
        writes, joined = coalesce(packets)
        plain = sum(1 for w in writes if w[0] is PLAIN_HDR)
        self.assertEqual(plain + joined, len(packets))
        for w in writes:
            if w[0] is PLAIN_HDR:
                self.assertIn(w[1], packets)
            else:
                self.assertLessEqual(int.from_bytes(bytes(w[1])[2:4], "big"), 65535)


class KernelTests(unittest.TestCase):
    """A joined write through a real TUN: the kernel's TCP takes every byte and acknowledges them all (root)."""

    def test_joinedWriteAccepted(self):
        requireRoot(self)
        from meshvpn.tools.netnsenter import netnsEntered
        from meshvpn.tun.device import TunDevice

        ns = Netns(self, "mvc").add("tun")
        with netnsEntered(ns):
            tun = TunDevice(reactor, "mvgro%d", mtu=1500, offload=True)
            self.addCleanup(tun.close)
            tun.configure(addresses=["10.77.0.1/32"], routes=["198.18.77.0/24"])
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.addCleanup(listener.close)
            listener.bind(("10.77.0.1", 8080))
            listener.listen(1)

        def readTcp(timeout=10):
            """The next TCP packet the kernel sends into the TUN (reads carry a virtio header we skip)."""
            while True:
                ready, _, _ = select.select([tun.fd], [], [], timeout)
                self.assertTrue(ready, "nothing came out of the TUN")
                p = os.read(tun.fd, 65535 + VNET_HDR_LEN)[VNET_HDR_LEN:]
                if p[0] >> 4 == 4 and p[9] == 6:
                    return p

        isn = 5000
        tun.writePackets([segment(isn, b"", SYN, ack=0, dport=8080)])
        synAck = readTcp()
        self.assertEqual(synAck[33] & (SYN | ACK), SYN | ACK)
        theirs = int.from_bytes(synAck[24:28], "big") + 1
        tun.writePackets([segment(isn + 1, b"", ACK, ack=theirs, dport=8080)])
        conn, _ = listener.accept()
        self.addCleanup(conn.close)
        data = os.urandom(1400 * 30 + 333)
        packets = [segment(isn + 1 + i, data[i:i + 1400], ACK if i + 1400 < len(data) else ACK | PSH, ack=theirs,
                           dport=8080) for i in range(0, len(data), 1400)]
        tun.writePackets(packets)
        self.assertEqual(tun.packetsJoined, len(packets))
        self.assertEqual(tun.writeDrops, 0)
        conn.settimeout(10)
        got = b""
        while len(got) < len(data):
            chunk = conn.recv(1 << 20)
            self.assertTrue(chunk, "connection closed early")
            got += chunk
        self.assertEqual(got, data)
        # The kernel acknowledges the whole run.
        acked = 0
        while acked != isn + 1 + len(data):
            acked = int.from_bytes(readTcp()[28:32], "big")
        # A joined run with one segment damaged on the way: the kernel checks the joined checksum
        # in full and drops the run; none of its bytes reach the application.
        more = os.urandom(1400 * 3)
        seq = isn + 1 + len(data)
        damaged = [segment(seq + i, more[i:i + 1400], ack=theirs, dport=8080) for i in range(0, len(more), 1400)]
        damaged[1] = damaged[1][:-1] + bytes([damaged[1][-1] ^ 1])
        tun.writePackets(damaged)
        self.assertEqual(tun.packetsJoined, len(packets) + 3)
        conn.settimeout(1)
        rest = b""
        try:
            while True:
                chunk = conn.recv(1 << 20)
                if not chunk:
                    break
                rest += chunk
        except socket.timeout:
            pass
        self.assertEqual(rest, b"")
        # The same run undamaged, joined: taken.
        tun.writePackets([segment(seq + i, more[i:i + 1400], ack=theirs, dport=8080) for i in range(0, len(more), 1400)])
        conn.settimeout(10)
        while len(rest) < len(more):
            rest += conn.recv(1 << 20)
        self.assertEqual(rest, more)
