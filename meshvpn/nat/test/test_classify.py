"""NAT classification against simulated NATs on task.Clock (the kernel version is test_nat_testbed)."""

import itertools

from twisted.internet import task
from twisted.trial import unittest

from meshvpn.nat import classify
from meshvpn.nat.classify import ADDRESS_AND_PORT_DEPENDENT as APD
from meshvpn.nat.classify import ADDRESS_DEPENDENT as AD
from meshvpn.nat.classify import ENDPOINT_INDEPENDENT as EI
from meshvpn.nat.endpoint import StunEndpoint
from meshvpn.nat.server import StunServer

A1, A2, P1, P2 = "198.18.0.1", "198.18.0.2", 3478, 3479
PUBLIC_IP = "198.18.0.11"
PRIVATE = ("198.19.1.2", 40000)


class Net:
    """Delivers datagrams after 1 ms; an address with no receiver drops them."""

    def __init__(self, clock):
        self.clock = clock
        self.receivers = {}

    def send(self, data, src, dst):
        self.clock.callLater(0.001, self._deliver, data, src, dst)

    def _deliver(self, data, src, dst):
        r = self.receivers.get(dst) or self.receivers.get(dst[0])
        if r is not None:
            r(data, src, dst)


class NAT:
    """A NAT with chosen mapping and filtering behaviour, optional hairpinning."""

    def __init__(self, net, mapping, filtering, hairpin=False, blockUDP=False):
        self.net, self.mapping, self.filtering, self.hairpin, self.blockUDP = net, mapping, filtering, hairpin, blockUDP
        self.ports = itertools.count(50000)
        self.mappings = {}  # key -> public port
        self.inside = {}  # public port -> (internal address, set of remotes sent to)
        self.host = None
        net.receivers[PUBLIC_IP] = self.inbound

    def outbound(self, data, src, dst):
        if self.blockUDP:
            return
        key = {EI: (src,), AD: (src, dst[0]), APD: (src, dst)}[self.mapping]
        if key not in self.mappings:
            port = next(self.ports)
            self.mappings[key] = port
            self.inside[port] = (src, set())
        port = self.mappings[key]
        self.inside[port][1].add(dst)
        if dst[0] == PUBLIC_IP:
            if self.hairpin:
                self.inbound(data, (PUBLIC_IP, port), dst, hairpinned=True)
            return
        self.net.send(data, (PUBLIC_IP, port), dst)

    def inbound(self, data, src, dst, hairpinned=False):
        entry = self.inside.get(dst[1])
        if entry is None:
            return
        internal, sentTo = entry
        allowed = hairpinned or {
            EI: True,
            AD: any(r[0] == src[0] for r in sentTo),
            APD: src in sentTo,
        }[self.filtering]
        if allowed:
            self.net.clock.callLater(0.001, self.host, data, src)


class ClassifyTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.net = Net(self.clock)
        sockets = {}
        for index, addr in {(0, 0): (A1, P1), (0, 1): (A1, P2), (1, 0): (A2, P1), (1, 1): (A2, P2)}.items():
            sockets[index] = (lambda data, dest, addr=addr: self.net.send(data, addr, dest), addr)
        self.server = StunServer(self.clock, sockets)
        for index, (_, addr) in sockets.items():
            self.net.receivers[addr] = self._serverReceiver(index)

    def _serverReceiver(self, index):
        from meshvpn.nat import stun

        def receive(data, src, dst):
            self.server.requestReceived(stun.StunMessage.decode(data), src, index)

        return receive

    def classify(self, nat=None, servers=((A1, P1),)):
        if nat is None:
            ep = StunEndpoint(self.clock, lambda data, dst: self.net.send(data, PRIVATE_PUBLIC, dst))
            self.net.receivers[PRIVATE_PUBLIC] = lambda data, src, dst: ep.datagramReceived(data, src)
            local = [PRIVATE_PUBLIC]
        else:
            ep = StunEndpoint(self.clock, lambda data, dst: nat.outbound(data, PRIVATE, dst))
            nat.host = ep.datagramReceived
            local = [PRIVATE]
        probe = classify.NATProbe(self.clock, ep, local[0][1], localAddresses=local)
        d = probe.probe(list(servers))
        self.clock.pump([0.001] * 8000)
        return self.successResultOf(d)

    def test_types(self):
        for mapping, filtering, expected in [
            (EI, EI, classify.FULL_CONE),
            (EI, AD, classify.ADDRESS_RESTRICTED),
            (EI, APD, classify.PORT_RESTRICTED),
            (AD, APD, classify.SYMMETRIC),
            (APD, APD, classify.SYMMETRIC),
            (APD, EI, classify.SYMMETRIC),
        ]:
            self.setUp()
            report = self.classify(NAT(self.net, mapping, filtering))
            self.assertEqual((report["mapping"], report["filtering"], report["type"]), (mapping, filtering, expected))
            self.assertTrue(report["nat"])
            self.assertEqual(report["mapped_address"].split(":")[0], PUBLIC_IP)
            self.assertEqual(report["rfc5780_server"], f"{A1}:{P1}")
            self.assertIs(report["hairpinning"], False)

    def test_hairpin(self):
        report = self.classify(NAT(self.net, EI, APD, hairpin=True))
        self.assertIs(report["hairpinning"], True)

    def test_noNat(self):
        report = self.classify(None)
        self.assertEqual((report["nat"], report["type"], report["mapping"], report["filtering"]), (False, classify.NO_NAT, EI, EI))
        self.assertIsNone(report["hairpinning"])

    def test_udpBlocked(self):
        report = self.classify(NAT(self.net, EI, EI, blockUDP=True), servers=[(A1, P1), ("198.18.0.9", 3478)])
        self.assertEqual((report["udp"], report["type"]), (False, classify.UDP_BLOCKED))
        self.assertEqual([s["answered"] for s in report["servers"]], [False, False])

    def test_serverWithoutRFC5780(self):
        self.server.sockets = {(0, 0): self.server.sockets[(0, 0)]}
        self.server.rfc5780 = False
        report = self.classify(NAT(self.net, EI, APD))
        self.assertEqual((report["mapping"], report["filtering"], report["rfc5780_server"]), ("unknown", "unknown", None))
        self.assertTrue(report["nat"])

    def test_rttAndServers(self):
        report = self.classify(NAT(self.net, EI, EI), servers=[(A1, P1), ("198.18.0.9", 3478)])
        first, second = report["servers"]
        self.assertEqual((first["answered"], second["answered"]), (True, False))
        self.assertAlmostEqual(first["rtt_ms"], 3.0, delta=0.01)  # three 1 ms hops
        self.assertEqual(first["other_address"], f"{A2}:{P2}")


PRIVATE_PUBLIC = ("198.18.0.50", 40000)
