"""The VPN client's logic without root: TunClient with a fake TUN and circuits, its
DNS answers, the kill-switch rules, the route controller with fake netlink/nft,
and ``meshvpn vpn-restore`` inside a namespace (root)."""

import ipaddress
import os
import shutil
import subprocess
import sys
import tempfile

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.names import error
from twisted.trial import unittest

from meshvpn.client import capture as tunroutes
from meshvpn.client.vpn import TunClient
from meshvpn.client.vpndns import ExitResolverClient
from meshvpn.client.vpncli import clientTables
from meshvpn.client.mesh import MESH_NET, MeshRouter, meshAddress
from meshvpn.errors import StreamRefused
from meshvpn.tun import packets as pp
from meshvpn.onion.endreasons import EndReason
from meshvpn.tools.netns import Netns, requireRoot
from meshvpn.tun.test.test_packets import tcp, udp
from meshvpn.client.test.fakes import FakeCircuit, FakeTun

NODE = bytes(range(32))


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
        c.receiver([b"reply"])
        self.assertEqual(client.tun.written, [b"reply"])

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

    def test_stopClosesTun(self):
        client = self.start()
        client.stopService()
        self.assertTrue(client.tun.closed)


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


class FakeIPRoute:
    def __init__(self):
        self.calls = []

    def route(self, op, **kw):
        self.calls.append((op, kw))
        if op == "get":
            return [{"attrs": [("RTA_OIF", 3), ("RTA_GATEWAY", "198.18.1.1")]}]
        return None

    def close(self):
        pass


class RouteControllerTests(unittest.TestCase):
    def test_captureAndRestore(self):
        data = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, data, True)
        resolv = os.path.join(data, "resolv.conf")
        with open(resolv, "w") as f:
            f.write("nameserver 198.18.0.53\n")
        scripts, ipr = [], FakeIPRoute()
        rc = tunroutes.RouteController("abcd", data, "100.99.0.1", resolv, nft=scripts.append, ipr=ipr)
        tun = FakeTun(None, "mvpn0", 1480)
        rc.capture(tun, {("198.18.2.2", 9001), ("198.18.2.2", 9000), ("127.30.0.1", 9001), ("2001:db8::5", 9001)})
        self.assertIn(("replace", {"dst": "198.18.2.2/32", "oif": 3, "gateway": "198.18.1.1"}), ipr.calls)
        self.assertEqual(tun.routes, [("0.0.0.0/1", None), ("128.0.0.0/1", None)])
        self.assertIn("elements = { 198.18.2.2 . 9000, 198.18.2.2 . 9001 }", scripts[0])
        self.assertEqual([c for c in ipr.calls if c[0] == "replace"], [("replace", {"dst": "198.18.2.2/32", "oif": 3, "gateway": "198.18.1.1"})])
        self.assertIn("policy drop", scripts[0])
        with open(resolv) as f:
            self.assertIn("nameserver 100.99.0.1", f.read())
        rc.keep({("198.18.2.2", 9001), ("198.19.4.2", 9000)})
        self.assertEqual(scripts[-1], "add element inet meshvpn-client-abcd keep4 { 198.19.4.2 . 9000 }\n")
        rc.restore()
        self.assertIn("delete table inet meshvpn-client-abcd", scripts[-1])
        self.assertIn(("del", {"dst": "198.18.2.2/32", "oif": 3, "gateway": "198.18.1.1"}), ipr.calls)
        with open(resolv) as f:
            self.assertEqual(f.read(), "nameserver 198.18.0.53\n")

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
        rc._nft(tunroutes.killSwitchRules(rc.table, "mvpn0", {("198.18.2.2", 9001)}))
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
