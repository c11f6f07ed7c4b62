"""The VPN client with offloaded packets (fake TUN and circuits; the kernel's side is in
meshvpn/tun/test/test_offloaddevice.py): sent whole on a circuit with FLOW_GSO, cut for one
without, and the circuit filter (what the kill switch relies on) applies to them as to any packet."""

from twisted.trial import unittest

from meshvpn.client.test import test_vpn
from meshvpn.client.test.test_vpn import ClosableCircuit
from meshvpn.onion.flow import FLOW_ALL, FLOW_GSO
from meshvpn.onion.packets import OFFLOAD_CSUM, OFFLOAD_TCP, OffloadPacket
from meshvpn.tun import packets as pp
from meshvpn.tun.test.test_offload import build, transportValid

SERVER = pp.ipBytes("198.18.0.5")


class GsoCircuit(ClosableCircuit):
    flowFlags = FLOW_ALL


class VpnOffloadTests(unittest.TestCase):
    setUp = test_vpn.TunClientTests.setUp
    getCircuit = test_vpn.TunClientTests.getCircuit
    start = test_vpn.TunClientTests.start

    def upload(self, client):
        return OffloadPacket(build(4, 6, b"u" * 5000, pp.ipBytes(client.address), SERVER), OFFLOAD_CSUM | OFFLOAD_TCP,
                             1440)

    def test_wholeOnACircuitWithOffloadRecords(self):
        client = self.start()
        c = GsoCircuit()
        self.asks[0].callback(c)
        big = self.upload(client)
        client.tun.receiver([big])
        self.assertEqual(c.sent, [big])
        self.assertIs(type(c.sent[0]), OffloadPacket)

    def test_cutForAnOlderExit(self):
        client = self.start()
        c = ClosableCircuit()  # no flowFlags: FLOW_GSO not in force
        self.assertFalse(getattr(c, "flowFlags", 0) & FLOW_GSO)
        self.asks[0].callback(c)
        client.tun.receiver([self.upload(client)])
        self.assertEqual(len(c.sent), 4)
        self.assertTrue(all(type(p) is bytes and transportValid(p) for p in c.sent))

    def test_circuitFilterHoldsForOffloadedPackets(self):
        client = self.start()
        c = GsoCircuit()
        self.asks[0].callback(c)
        me = pp.ipBytes(client.address)
        good = OffloadPacket(build(4, 6, b"d" * 3000, SERVER, me), OFFLOAD_CSUM | OFFLOAD_TCP, 1440)
        spoofedLocal = OffloadPacket(build(4, 6, b"d" * 3000, pp.ipBytes("127.0.0.1"), me), OFFLOAD_CSUM | OFFLOAD_TCP,
                                     1440)
        notMine = OffloadPacket(build(4, 6, b"d" * 3000, SERVER, pp.ipBytes("198.18.0.9")), OFFLOAD_CSUM)
        c.receiver([good, spoofedLocal, notMine])
        self.assertEqual(client.tun.written, [good])
        self.assertIs(type(client.tun.written[0]), OffloadPacket)
        self.assertEqual(client.counters["from_circuit_refused"], 2)

    def test_waitingQueueBoundedInBytes(self):
        """Before the first circuit, 64 KB reads do not make the bounded queue hold 16 MB."""
        from meshvpn.client.vpn import MAX_WAITING_BYTES

        client = self.start()
        big = self.upload(client)
        client.tun.receiver([big] * 200)
        held = sum(len(p) for p in client._waiting)
        self.assertLessEqual(held, MAX_WAITING_BYTES)
        self.assertEqual(client.counters["no_circuit_dropped"], 200 - len(client._waiting))
