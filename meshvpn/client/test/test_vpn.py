"""The VPN client's logic without root: TunClient with a fake TUN and circuits, its
DNS answers, the kill-switch rules, the route controller with fake netlink/nft,
and ``meshvpn vpn-restore`` inside a namespace (root)."""

import ipaddress
import os
import shutil
import subprocess
import sys
import tempfile

from hypothesis import given, settings, strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.names import error
from twisted.trial import unittest

from meshvpn.client import capture as tunroutes
from meshvpn.client.egress import EgressHold
from meshvpn.client.vpn import TunClient, circuitPacketAllowed
from meshvpn.client.vpndns import ExitResolverClient
from meshvpn.client.vpncli import clientTables
from meshvpn.client.mesh import MESH_NET, MeshRouter, meshAddress
from meshvpn.errors import StreamRefused
from meshvpn.tun import packets as pp
from meshvpn.onion.endreasons import EndReason
from meshvpn.tools.netns import Netns, requireRoot
from meshvpn.tun.test.test_packets import tcp, udp
from meshvpn.client.test.fakes import FakeCircuit, FakeIPRoute, FakeRouteMsg, FakeTun

NODE = bytes(range(32))
ADDRESS = meshAddress(NODE)


def reply(payload=b"reply"):
    """What an exit sends back: from an internet address to the client's TUN address."""
    return udp("198.18.0.5", ADDRESS, 53, 1000, payload)


class ClosableCircuit(FakeCircuit):
    def __init__(self):
        super().__init__()
        self.closed = defer.Deferred()
        self.receiver = None

    def setPacketReceiver(self, r):
        self.receiver = r

    def whenClosed(self):
        return self.closed


class TunClientTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.circuits = []
        self.asks = []

    def getCircuit(self):
        d = defer.Deferred()
        self.asks.append(d)
        return d

    def start(self, **kw):
        client = TunClient(self.clock, NODE, self.getCircuit, tunFactory=FakeTun, **kw)
        client.startService()
        self.addCleanup(lambda: client.running and client.stopService())
        return client

    def test_addressAndMeshRoute(self):
        client = self.start()
        self.assertEqual(client.tun.addresses, [f"{meshAddress(NODE)}/32"])
        self.assertIn(ipaddress.ip_address(client.address), MESH_NET)
        self.assertEqual(client.tun.routes, [(str(MESH_NET), 1400)])

    def test_packetsQueuedUntilCircuitThenBothWays(self):
        client = self.start()
        p = udp(client.address, "198.18.0.5", 1000, 53)
        client.tun.receiver([p, b"\x60" + bytes(39)])  # one IPv4, one IPv6
        self.assertEqual(client.counters["ipv6_dropped"], 1)
        c = ClosableCircuit()
        self.asks[0].callback(c)
        self.assertEqual(c.sent, [p])
        c.receiver([reply()])
        self.assertEqual(client.tun.written, [reply()])

    def test_deadCircuitReplaced(self):
        client = self.start()
        c1 = ClosableCircuit()
        self.asks[0].callback(c1)
        c1.closed.callback("destroyed")
        self.assertEqual(len(self.asks), 2)
        c2 = ClosableCircuit()
        self.asks[1].callback(c2)
        p = tcp(client.address, "198.18.0.5", 1000, 80)
        client.tun.receiver([p])
        self.assertEqual((c1.sent, c2.sent), ([], [p]))

    def test_waitingQueueBounded(self):
        client = self.start()
        p = udp(client.address, "198.18.0.5", 1000, 53)
        client.tun.receiver([p] * 1000)
        self.assertEqual(len(client._waiting), 256)
        self.assertEqual(client.counters["no_circuit_dropped"], 744)

    def test_noCircuitRetried(self):
        self.start()
        self.asks[0].errback(RuntimeError("no path"))
        self.clock.advance(1.0)
        self.assertEqual(len(self.asks), 2)

    def test_circuitPacketsFiltered(self):
        """
        The circuit's far end (an exit, or a relay that learnt to inject)
        may put only internet replies to our TUN address into the TUN: not
        packets for other addresses, not from loopback or private networks
        (which local services trust), never from a mesh peer's address.
        The exit's own ICMP errors (from its pool in 100.64/10) pass.
        """
        client = self.start()
        c = ClosableCircuit()
        self.asks[0].callback(c)
        peer = meshAddress(b"\x42" * 32)
        good = [reply(b"one"), tcp("93.184.216.34", ADDRESS, 443, 40000)]
        exitIcmp = pp.icmpError(udp(ADDRESS, "198.18.0.5", 1000, 53), pp.parseIPv4(udp(ADDRESS, "198.18.0.5", 1000, 53)),
                                pp.ICMP_UNREACH, 13, pp.ipBytes("100.64.0.1"))
        bad = [
            udp("198.18.0.5", "100.96.9.9", 53, 1000),  # not our address
            udp("198.18.0.5", "8.8.8.8", 53, 1000),
            udp(peer, ADDRESS, 53, 1000),  # a mesh peer's source: only the mesh router may deliver those
            udp(ADDRESS, ADDRESS, 53, 1000),  # our own address
            udp("127.0.0.1", ADDRESS, 53, 1000),
            udp("10.1.2.3", ADDRESS, 53, 1000),
            udp("172.16.0.1", ADDRESS, 53, 1000),
            udp("192.168.1.1", ADDRESS, 53, 1000),
            udp("169.254.1.1", ADDRESS, 53, 1000),
            udp("100.64.0.1", ADDRESS, 53, 1000),  # the exit's pool, but not an ICMP error
            udp("0.0.0.0", ADDRESS, 53, 1000),
            udp("224.0.0.1", ADDRESS, 53, 1000),
            udp("255.255.255.255", ADDRESS, 53, 1000),
            udp("192.0.0.8", ADDRESS, 53, 1000),
            b"\x60" + bytes(39),  # IPv6
            b"\x45" + bytes(10),  # too short
        ]
        c.receiver(bad + good + [exitIcmp])
        self.assertEqual(client.tun.written, good + [exitIcmp])
        self.assertEqual(client.counters["from_circuit_refused"], len(bad))

    @given(st.binary(max_size=80), st.booleans())
    @settings(max_examples=300, deadline=None)
    def test_filterTakesAnyBytes(self, data, addressed):
        """Whatever a circuit delivers, the filter answers yes or no, and yes only for our address."""
        mine = bytes([100, 96, 0, 1])
        if addressed and len(data) >= 20:
            data = data[:16] + mine + data[20:]
        if circuitPacketAllowed(data, mine):
            self.assertEqual((data[0] >> 4, data[16:20]), (4, mine))

    def test_stopClosesTun(self):
        client = self.start()
        client.stopService()
        self.assertTrue(client.tun.closed)


class ProbedCircuit(ClosableCircuit):
    """A circuit with a stream layer whose RESOLVE the test answers, and a known path."""

    def __init__(self, guard=b"g"):
        super().__init__()
        self.path = [type("Hop", (), {"nodeId": guard * 32})(), type("Hop", (), {"nodeId": b"m" * 32})()]
        self.resolving = []
        self.closedWith = None
        self.streamHandler = self
        self.closedReason = None

    def resolve(self, name):
        d = defer.Deferred()
        self.resolving.append((name, d))
        return d

    def close(self, reason):
        self.closedWith = reason
        self.closedReason = reason
        self.closed.callback(reason)


class Recorder:
    def __init__(self):
        self.gates = []
        self.started = self.stopped = 0

    def setEgressGate(self, gate):
        self.gates.append(gate)

    def status(self):
        return {}

    def start(self, already=()):
        self.started += 1

    def stop(self):
        self.stopped += 1


class FakeRoutes:
    def __init__(self):
        self.captured = self.restored = 0
        self.keptPorts = {("udp", "198.18.1.2", 9000)}

    def capture(self, tun, keep):
        self.captured += 1

    def restore(self):
        self.restored += 1

    def status(self):
        return {}


class VpnStateTests(unittest.TestCase):
    """'up' means a circuit carried traffic; until then the state says what the VPN waits for."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(100)
        self.asks = []
        self.census = (1, False)

    def getCircuit(self):
        d = defer.Deferred()
        self.asks.append(d)
        return d

    def start(self, **kw):
        client = TunClient(self.clock, NODE, self.getCircuit, tunFactory=FakeTun, census=lambda: self.census, **kw)
        client.startService()
        self.addCleanup(lambda: client.running and client.stopService())
        return client

    def test_waitingBuildingCheckingUp(self):
        client = self.start()
        self.assertEqual(client.status()["state"], "waiting-for-relays")
        self.assertIn("knows 1 relays", client.status()["detail"])
        self.census = (4, True)
        self.clock.advance(1)
        self.assertEqual(client.status()["state"], "building-circuit")
        c = ProbedCircuit()
        self.clock.advance(1.5)
        self.asks[0].callback(c)
        self.assertEqual(client.status()["state"], "checking")
        self.assertEqual(client.status()["circuit"], [(b"g" * 32).hex(), (b"m" * 32).hex()])
        (name, answer), = c.resolving
        self.assertEqual(name, "127.0.0.1")  # the same fixed probe for every client
        answer.callback([(0xF1, b"", 0)])  # even an error answer is a round trip
        status = client.status()
        self.assertEqual((status["state"], status["up_after_s"]), ("up", 2.5))

    def test_endFromTheExitIsAnAnswer(self):
        client = self.start()
        c = ProbedCircuit()
        self.asks[0].callback(c)
        c.resolving[0][1].errback(StreamRefused(EndReason.RESOLVEFAILED, "no"))
        self.assertEqual(client.state.value, "up")

    def test_packetBackIsUpReconnectingAfterLoss(self):
        client = self.start()
        c1 = ProbedCircuit()
        self.asks[0].callback(c1)
        c1.receiver([reply()])  # a packet from the exit before the probe's answer
        self.assertEqual(client.state.value, "up")
        c1.closed.callback("destroyed")
        self.assertEqual(client.status()["state"], "reconnecting")
        self.assertIsNone(client.status()["circuit"] or None)
        c2 = ProbedCircuit(b"h")
        self.clock.advance(3)
        self.asks[1].callback(c2)
        self.assertEqual(client.state.value, "checking")
        c2.resolving[0][1].callback([])
        self.assertEqual(client.state.value, "up")
        self.assertEqual(client.status()["up_after_s"], 0)  # the first time, kept

    def test_startAfterStopBeginsAfresh(self):
        """The control API's VPN switch stops and starts the same client: the second start is a first start."""
        self.census = (4, True)
        client = self.start()
        c1 = ProbedCircuit()
        self.clock.advance(1)
        self.asks[0].callback(c1)
        c1.resolving[0][1].callback([])
        c1.closed.callback("destroyed")
        client._fromTun([udp(ADDRESS, "198.18.0.5", 1000, 53, b"q")])  # queued for the next circuit
        self.assertEqual(client.state.value, "reconnecting")
        client.stopService()
        self.assertEqual(client.state.value, "stopped")
        self.clock.advance(10)
        client.startService()
        self.assertEqual(client.status()["state"], "building-circuit")  # not "reconnecting"
        self.assertIsNone(client.status()["up_after_s"])
        c2 = ProbedCircuit(b"h")
        self.clock.advance(2)
        self.asks[1].callback(c2)
        self.assertEqual(c2.sent, [])
        c2.resolving[0][1].callback([])
        self.assertEqual((client.state.value, client.status()["up_after_s"]), ("up", 2))

    def test_failedAttemptsShownSaidOnce(self):
        from twisted.logger import capturedLogs

        client = self.start()
        with capturedLogs() as events:
            for _ in range(3):
                self.asks[-1].errback(RuntimeError("no exit announces packet-exit (VPN mode)"))
                self.clock.advance(1)
        self.assertEqual(len(self.asks), 4)
        self.assertEqual(sum(1 for e in events if e.get("log_format", "").startswith("no circuit")), 1)
        self.assertIn("last try: no exit announces packet-exit", client.status()["detail"])
        self.assertEqual(client.state.value, "waiting-for-relays")

    def test_unansweredProbeClosesTheCircuit(self):
        client = self.start()
        c = ProbedCircuit()
        self.asks[0].callback(c)
        self.clock.advance(9)
        self.assertIsNone(c.closedWith)
        self.clock.advance(1)
        self.assertEqual(c.closedWith, "timeout")
        self.assertEqual(len(self.asks), 2)  # a new circuit is on its way
        self.assertEqual(client.state.value, "waiting-for-relays")

    def test_circuitWithoutStreamsWaitsForAPacket(self):
        client = self.start()
        c = ClosableCircuit()
        self.asks[0].callback(c)
        self.clock.advance(60)
        self.assertEqual(client.state.value, "checking")
        c.receiver([udp("10.0.0.1", ADDRESS, 53, 1000)])  # refused: proves nothing
        self.assertEqual(client.state.value, "checking")
        c.receiver([reply()])
        self.assertEqual(client.state.value, "up")

    def test_gateInstalledWhileCapturedOnly(self):
        routes, gate, users = FakeRoutes(), Recorder(), [Recorder(), Recorder()]
        client = self.start(routes=routes, gate=gate, egressUsers=users)
        self.assertEqual((routes.captured, gate.started), (1, 1))
        [hold] = {type(u.gates[0]) for u in users}
        self.assertIs(hold, EgressHold)  # from wiring time until the gate is up
        self.assertEqual([u.gates[1:] for u in users], [[gate], [gate]])
        client.stopService()
        self.assertEqual([u.gates[1:] for u in users], [[gate, None], [gate, None]])
        self.assertEqual((gate.stopped, routes.restored), (1, 1))
        self.assertEqual(client.status()["state"], "stopped")

    def test_meshOnly(self):
        client = TunClient(self.clock, NODE, None, tunFactory=FakeTun)
        client.startService()
        self.addCleanup(client.stopService)
        self.assertEqual(client.status()["state"], "mesh-only")


class MeshRouterTests(unittest.TestCase):
    def test_unknownPeerUnreachableAndSpoofDropped(self):
        peer = bytes([9]) * 32
        delivered = []
        router = MeshRouter(NODE, None, [peer], delivered.extend)
        me, them = meshAddress(NODE), meshAddress(peer)
        err = router.send(udp(me, "100.100.1.1", 1, 2))
        e = pp.parseIPv4(err)
        self.assertEqual((e.icmpType, err[e.ihl + 1]), (3, 1))
        router._received(pp.ipBytes(them), udp("100.100.1.1", me, 1, 2))
        router._received(pp.ipBytes(them), b"junk")
        self.assertEqual(delivered, [])
        router._received(pp.ipBytes(them), udp(them, me, 1, 2))
        self.assertEqual(len(delivered), 1)
        self.assertEqual(router.counters["spoofed"], 1)

    def test_burstPerLink(self):
        """One TUN read's packets to peers with links up leave as one burst per link; others get their ICMP error."""
        peers = [bytes([9]) * 32, bytes([10]) * 32]
        router = MeshRouter(NODE, None, peers, lambda p: None)
        me = meshAddress(NODE)

        class Link:
            closed = False

            def __init__(self):
                self.bursts = []

            def sendPackets(self, packets):
                self.bursts.append(list(packets))

        links = [Link(), Link()]
        for peer, link in zip(peers, links):
            router.links[pp.ipBytes(meshAddress(peer))] = link
        a, b = (meshAddress(p) for p in peers)
        packets = [udp(me, a, 1, 2), udp(me, b, 1, 2), udp(me, "100.100.1.1", 1, 2), udp(me, a, 3, 4),
                   tcp(me, a, 1, 2, b"x" * 1500)]
        errors = router.sendPackets(packets)
        self.assertEqual(links[0].bursts, [[packets[0], packets[3]]])
        self.assertEqual(links[1].bursts, [[packets[1]]])
        self.assertEqual([(pp.parseIPv4(e).icmpType, e[21]) for e in errors], [(3, 1), (3, 4)])
        self.assertEqual(router.counters["tx"], 3)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=80), st.integers(0, 4))
    def test_receivedNeverRaises(self, data, where):
        """Whatever a peer's link delivers: dropped or spoofed unless a well-formed IPv4 packet from it to us."""
        peer = bytes([9]) * 32
        delivered = []
        router = MeshRouter(NODE, None, [peer], delivered.extend)
        them, me = pp.ipBytes(meshAddress(peer)), pp.ipBytes(meshAddress(NODE))
        if where and len(data) >= 20:
            # Often make it look right, so the length checks are what decides.
            data = bytes([0x45]) + data[1:2] + len(data).to_bytes(2, "big") + data[4:12] + them + me + data[20:]
            if where == 1:
                data = data[:-1]
        router._received(them, data)
        ok = (len(data) >= 20 and data[0] >> 4 == 4 and 20 <= (data[0] & 15) * 4 <= len(data)
              and int.from_bytes(data[2:4], "big") == len(data) and data[12:16] == them and data[16:20] == me)
        self.assertEqual(delivered, [data] if ok else [])
        self.assertEqual(router.counters["rx"] + router.counters["dropped"] + router.counters["spoofed"], 1)

    def test_oversizeFragNeeded(self):
        router = MeshRouter(NODE, None, [], lambda p: None)
        err = router.send(tcp(meshAddress(NODE), "100.100.1.1", 1, 2, b"x" * 1500))
        e = pp.parseIPv4(err)
        self.assertEqual((e.icmpType, err[e.ihl + 1]), (3, 4))


class FakeOpener:
    def __init__(self, result):
        self.result = result
        self.asked = []

    def resolve(self, name, key):
        self.asked.append(name)
        if isinstance(self.result, Exception):
            return defer.fail(self.result)
        return defer.succeed(self.result)


class DNSTests(unittest.TestCase):
    def test_aFromExit(self):
        opener = FakeOpener(["198.18.0.7", "2001:db8::1"])
        answers, _, _ = self.successResultOf(ExitResolverClient(opener).lookupAddress("example.test"))
        self.assertEqual([a.payload.dottedQuad() for a in answers], ["198.18.0.7"])
        self.assertEqual(opener.asked, ["example.test"])

    def test_aaaaEmptyOthersNotForwarded(self):
        opener = FakeOpener(["198.18.0.7"])
        r = ExitResolverClient(opener)
        self.assertEqual(self.successResultOf(r.lookupIPV6Address("example.test")), ([], [], []))
        self.failureResultOf(r.lookupMailExchange("example.test"), error.DNSNotImplementedError)
        self.assertEqual(opener.asked, [])

    def test_failureIsNXDomain(self):
        r = ExitResolverClient(FakeOpener(StreamRefused(EndReason.RESOLVEFAILED, "no")))
        self.failureResultOf(r.lookupAddress("nope.test"), error.DNSNameError)


class RouteControllerTests(unittest.TestCase):
    """Host routes via the route a relay would take without the tunnel, kill-switch sets per protocol."""

    def setUp(self):
        self.data = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.data, True)
        self.resolv = os.path.join(self.data, "resolv.conf")
        with open(self.resolv, "w") as f:
            f.write("nameserver 198.18.0.53\n")
        self.scripts = []
        self.ipr = FakeIPRoute([FakeRouteMsg("0.0.0.0", 0, 3, "198.18.1.1", proto=3),
                                FakeRouteMsg("198.18.1.0", 24, 3, proto=2)])
        self.rc = tunroutes.RouteController("abcd", self.data, "100.99.0.1", self.resolv, nft=self.scripts.append,
                                            ipr=self.ipr, udpSourcePort=lambda: 40000)
        self.tun = FakeTun(None, "mvpn0", 1480)

    def capture(self):
        self.rc.capture(self.tun, {("udp", "198.18.2.2", 9000), ("udp", "127.30.0.1", 9000), ("udp", "2001:db8::5", 9000)})
        # what the kernel does with the TUN's routes
        self.ipr.routes += [FakeRouteMsg("0.0.0.0", 1, FakeTun.index), FakeRouteMsg("128.0.0.0", 1, FakeTun.index)]

    def test_captureKeepUnkeepRestore(self):
        self.capture()
        self.assertEqual(self.ipr.hostRoutes(), {"198.18.2.2": (3, "198.18.1.1")})
        self.assertEqual(self.tun.routes, [("0.0.0.0/1", None), ("128.0.0.0/1", None)])
        rules = self.scripts[0]
        self.assertIn("policy drop", rules)
        self.assertIn("set keep4udp {\n        type ipv4_addr . inet_service\n        elements = { 198.18.2.2 . 9000 }", rules)
        self.assertIn("set keep4tcp {\n        type ipv4_addr . inet_service\n    }", rules)
        self.assertIn("ip daddr . tcp dport @keep4tcp accept", rules)
        self.assertIn("udp sport 40000 ip daddr . udp dport @keep4udp accept", rules)
        with open(self.resolv) as f:
            self.assertIn("nameserver 100.99.0.1", f.read())

        # a guard learned later: its route is the uplink's, not the TUN's (which `route get` would answer)
        self.assertEqual(self.rc.keep({("tcp", "198.19.4.2", 9001), ("udp", "198.18.2.2", 9000)}), set())
        self.assertEqual(self.ipr.hostRoutes()["198.19.4.2"], (3, "198.18.1.1"))
        self.assertEqual(self.scripts[-1], "add element inet meshvpn-client-abcd keep4tcp { 198.19.4.2 . 9001 }\n")
        self.rc.keep({("udp", "198.19.4.2", 9000)})  # same address, another port: no second route
        self.assertEqual([c for c in self.ipr.calls if c[1]["dst"] == "198.19.4.2/32"],
                         [("replace", {"dst": "198.19.4.2/32", "oif": 3, "gateway": "198.18.1.1", "proto": 196})])

        self.rc.unkeep({("tcp", "198.19.4.2", 9001)})
        self.assertEqual(self.scripts[-1], "delete element inet meshvpn-client-abcd keep4tcp { 198.19.4.2 . 9001 }\n")
        self.assertIn("198.19.4.2", self.ipr.hostRoutes())  # its UDP port is still kept
        self.rc.unkeep({("udp", "198.19.4.2", 9000)})
        self.assertNotIn("198.19.4.2", self.ipr.hostRoutes())

        self.rc.restore()
        self.assertIn("delete table inet meshvpn-client-abcd", self.scripts[-1])
        self.assertEqual(self.ipr.hostRoutes(), {})
        self.assertTrue(self.ipr.closed)
        with open(self.resolv) as f:
            self.assertEqual(f.read(), "nameserver 198.18.0.53\n")

    def test_ipv6Uplink(self):
        """An IPv6-only node: /128 host routes, the keep6 sets, neighbour discovery and nothing else of IPv6."""
        import socket

        self.ipr.routes = [FakeRouteMsg("::", 0, 3, "fe80::1", proto=3), FakeRouteMsg("2001:2:1::", 64, 3, proto=2)]
        rc = tunroutes.RouteController("abcd", self.data, "100.99.0.1", self.resolv, nft=self.scripts.append,
                                       ipr=self.ipr, udpSourcePort=lambda: [40000, 40006], ipv6Uplink=lambda: True)
        rc.capture(self.tun, {("udp", "[2001:2:2::2]", 9000), ("udp", "198.18.2.2", 9000)})
        self.ipr.routes += [FakeRouteMsg("::", 1, FakeTun.index), FakeRouteMsg("8000::", 1, FakeTun.index)]
        self.assertEqual(self.ipr.hostRoutes(), {"2001:2:2::2": (3, "fe80::1")})  # no IPv4 route at all: none kept
        rules = self.scripts[0]
        self.assertIn("set keep6udp {\n        type ipv6_addr . inet_service\n        elements = { 2001:2:2::2 . 9000 }", rules)
        self.assertIn("set keep4udp {\n        type ipv4_addr . inet_service\n    }", rules)
        self.assertIn("udp sport { 40000, 40006 } ip6 daddr . udp dport @keep6udp accept", rules)
        self.assertIn("ip6 daddr . tcp dport @keep6tcp accept", rules)
        self.assertIn("icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 accept",
                      rules)
        self.assertEqual(rc.keep({("tcp", "2001:2:2::2", 9001)}), set())
        self.assertEqual(self.scripts[-1], "add element inet meshvpn-client-abcd keep6tcp { 2001:2:2::2 . 9001 }\n")
        self.assertEqual([c for c in self.ipr.calls if c[1]["dst"] == "2001:2:2::2/128"],
                         [("replace", {"dst": "2001:2:2::2/128", "oif": 3, "gateway": "fe80::1", "proto": 196,
                                       "family": socket.AF_INET6})])
        self.ipr.routes[0] = FakeRouteMsg("::", 0, 3, "fe80::2", proto=3)  # a new router
        self.assertEqual(rc.refresh(), ["2001:2:2::2"])
        self.assertEqual(self.ipr.hostRoutes(), {"2001:2:2::2": (3, "fe80::2")})
        rc.restore()
        self.assertEqual(self.ipr.hostRoutes(), {})

    def test_noNeighbourDiscoveryWithoutAnIPv6Socket(self):
        self.capture()
        self.assertNotIn("icmpv6", self.scripts[0])

    def test_noRouteOutsideTheTunnel(self):
        self.capture()
        del self.ipr.routes[0]  # no default route but the TUN's
        self.assertEqual(self.rc.keep({("tcp", "198.19.4.2", 9001)}), {("tcp", "198.19.4.2", 9001)})
        self.assertNotIn("198.19.4.2", self.ipr.hostRoutes())
        self.assertEqual(len(self.scripts), 1)  # no exception either

    def test_routesFollowTheGateway(self):
        self.capture()
        self.rc.keep({("tcp", "198.19.4.2", 9001)})
        self.assertEqual(self.rc.refresh(), [])  # nothing changed
        self.ipr.routes[0] = FakeRouteMsg("0.0.0.0", 0, 3, "198.18.1.254", proto=3)  # new default gateway
        self.assertEqual(sorted(self.rc.refresh()), ["198.18.2.2", "198.19.4.2"])
        self.assertEqual(self.ipr.hostRoutes(), {"198.18.2.2": (3, "198.18.1.254"), "198.19.4.2": (3, "198.18.1.254")})
        # the kernel dropped one (its interface went away and came back): put back
        self.ipr.routes = [r for r in self.ipr.routes if r.get_attr("RTA_DST") != "198.19.4.2"]
        self.assertEqual(self.rc.refresh(), ["198.19.4.2"])
        self.assertEqual(self.ipr.hostRoutes()["198.19.4.2"], (3, "198.18.1.254"))

    def test_interfaces(self):
        from zope.interface.verify import verifyObject

        from meshvpn.interfaces import IRouteController

        verifyObject(IRouteController, tunroutes.RouteController("x", self.mktemp(), nft=lambda s: None))

    def test_clientTables(self):
        listing = "table inet meshvpn-client-0a1b2c3d\ntable ip natbox\ntable inet meshvpn-client-ffffffff\n"
        self.assertEqual(clientTables(listing), ["meshvpn-client-0a1b2c3d", "meshvpn-client-ffffffff"])


class VpnRestoreTests(unittest.TestCase):
    def test_restoreAfterCrash(self):
        """What a SIGKILLed client leaves (kill switch, resolv.conf) is undone by the command."""
        requireRoot(self)
        ns = Netns(self, "mvr").add("cl")
        data = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, data, True)
        resolv = os.path.join(data, "resolv.conf")
        with open(resolv, "w") as f:
            f.write("nameserver 198.18.0.53\n")
        rc = tunroutes.RouteController("deadbeef", data, "100.99.0.1", resolv,
                                       nft=lambda s: subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"],
                                                                    input=s.encode(), check=True))
        rc._pointResolver()
        rc._nft(tunroutes.killSwitchRules(rc.table, "mvpn0", {("tcp", "198.18.2.2", 9001)}, 40000))
        self.assertIn("meshvpn-client-deadbeef", subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "tables"],
                                                                capture_output=True, text=True).stdout)
        out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "meshvpn", "vpn-restore", "--data-dir",
                              data, "--resolv-conf", resolv], capture_output=True, text=True)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("restored", out.stdout)
        self.assertNotIn("meshvpn-client", subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "tables"],
                                                          capture_output=True, text=True).stdout)
        with open(resolv) as f:
            self.assertEqual(f.read(), "nameserver 198.18.0.53\n")
