"""VPN mode's direct egress without root: the route lookup that ignores the tunnel, the
egress gate (batches, expiry, bound), and the two places that consult it -- the node's
UDP socket and the link manager's dial."""

from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from meshvpn.client.egress import EgressGate
from meshvpn.client.capture import RTPROT_MESHVPN, bestRoute
from meshvpn.errors import EgressRefused, LinkError
from meshvpn.interfaces import IDirectEgress
from meshvpn.link.manager import LinkTarget
from meshvpn.link.test.helpers import MemoryTransport
from meshvpn.link.test.test_manager import Harness, result
from meshvpn.udpmux import HOLD_PER_DESTINATION, DatagramMultiplexer

UPLINK, OTHER, TUN = 3, 4, 7


def row(dst, length, oif, gateway=None, metric=0, proto=3, type=1):
    return {"dst": dst, "dst_len": length, "oif": oif, "gateway": gateway, "metric": metric, "proto": proto,
            "type": type, "table": 254}


class BestRouteTests(unittest.TestCase):
    """Longest prefix, then lowest metric, never the tunnel nor our own host routes."""

    def setUp(self):
        self.rows = [
            row("0.0.0.0", 0, UPLINK, "198.18.1.1", metric=100),
            row("198.18.1.0", 24, UPLINK, proto=2),
            row("0.0.0.0", 1, TUN),
            row("128.0.0.0", 1, TUN),
            row("100.96.0.0", 11, TUN),
        ]

    def test_tunnelIgnored(self):
        self.assertEqual(bestRoute(self.rows, "198.19.4.2", TUN), {"oif": UPLINK, "gateway": "198.18.1.1"})
        self.assertEqual(bestRoute(self.rows, "198.19.4.2"), {"oif": TUN, "gateway": None})  # what `ip route get` says

    def test_longestPrefixThenLowestMetric(self):
        self.assertEqual(bestRoute(self.rows, "198.18.1.7", TUN), {"oif": UPLINK, "gateway": None})
        self.rows.append(row("0.0.0.0", 0, OTHER, "198.18.9.1", metric=50))
        self.assertEqual(bestRoute(self.rows, "198.19.4.2", TUN), {"oif": OTHER, "gateway": "198.18.9.1"})
        self.rows.append(row("198.19.0.0", 16, UPLINK, "198.18.1.2", metric=500))
        self.assertEqual(bestRoute(self.rows, "198.19.4.2", TUN), {"oif": UPLINK, "gateway": "198.18.1.2"})

    def test_ownHostRoutesIgnored(self):
        """A kept route must not answer for itself, or it could never follow a new gateway."""
        self.rows.append(row("198.19.4.2", 32, UPLINK, "198.18.1.99", proto=RTPROT_MESHVPN))
        self.assertEqual(bestRoute(self.rows, "198.19.4.2", TUN), {"oif": UPLINK, "gateway": "198.18.1.1"})

    def test_ipv6(self):
        rows = [row("::", 0, UPLINK, "fe80::1", metric=1024), row("2001:2:1::", 64, UPLINK, metric=256),
                row("::", 1, TUN), row("8000::", 1, TUN), row("2001:2:2::2", 128, UPLINK, "fe80::99", proto=RTPROT_MESHVPN)]
        self.assertEqual(bestRoute(rows, "2001:2:2::2", TUN), {"oif": UPLINK, "gateway": "fe80::1"})
        self.assertEqual(bestRoute(rows, "2001:2:1::7", TUN), {"oif": UPLINK, "gateway": None})
        self.assertIsNone(bestRoute(rows[2:4], "2001:2:2::2", TUN))
        self.assertIsNone(bestRoute(self.rows, "2001:2:2::2", TUN))  # IPv4 routes never answer for IPv6

    def test_noRouteOrBlackhole(self):
        self.assertIsNone(bestRoute([], "198.19.4.2", TUN))
        self.assertIsNone(bestRoute(self.rows[2:], "198.19.4.2", TUN))  # only the tunnel
        self.rows.append(row("198.19.0.0", 16, None, type=6))  # blackhole
        self.assertIsNone(bestRoute(self.rows, "198.19.4.2", TUN))


class FakeRoutes:
    """An IRouteController's batch side: records keep/unkeep, fails for C{noRoute} addresses."""

    def __init__(self):
        self.kept, self.batches, self.removed, self.refreshes = set(), [], [], 0
        self.noRoute = set()

    def keep(self, destinations):
        self.batches.append(set(destinations))
        failed = {d for d in destinations if d[1] in self.noRoute}
        self.kept |= set(destinations) - failed
        return failed

    def unkeep(self, destinations):
        self.removed.append(set(destinations))
        self.kept -= set(destinations)

    def refresh(self):
        self.refreshes += 1
        return []


class EgressGateTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.routes = FakeRoutes()
        self.pinned = set()
        self.gate = EgressGate(self.clock, self.routes, lambda: self.pinned, idle=60, maxEntries=4, every=2)
        self.gate.start(already=[("udp", "198.18.1.2", 9000)])
        self.addCleanup(self.gate.stop)

    def test_interface(self):
        verifyObject(IDirectEgress, self.gate)

    def test_oneBatchPerTurnThenPasses(self):
        a = self.gate.allow([("tcp", "198.18.2.2", 9001)])
        b = self.gate.allow([("udp", "198.18.2.2", 9000), ("tcp", "198.18.2.2", 9001)])
        self.assertFalse(a.called or b.called)  # nothing may be sent yet
        self.assertEqual(self.routes.batches, [])
        self.clock.advance(0)
        self.assertEqual(self.routes.batches, [{("tcp", "198.18.2.2", 9001), ("udp", "198.18.2.2", 9000)}])
        self.assertIsNone(self.successResultOf(a))
        self.assertIsNone(self.successResultOf(b))
        self.assertTrue(self.gate.passes("udp", ("198.18.2.2", 9000)))
        self.assertTrue(self.gate.passes("udp", ("198.18.1.2", 9000)))  # kept at capture
        self.assertFalse(self.gate.passes("udp", ("198.18.2.2", 9100)))
        self.successResultOf(self.gate.allow([("tcp", "198.18.2.2", 9001)]))  # already allowed: at once

    def test_nothingNeededForLocalOrNames(self):
        d = self.gate.allow([("udp", "127.0.0.1", 9000), ("udp", "::1", 9000), ("udp", "fe80::1", 9000),
                             ("udp", "ff02::1", 9000), ("tcp", "relay.example", 1)])
        self.successResultOf(d)
        self.assertEqual(self.routes.batches, [])

    def test_ipv6RelaysGatedLikeIPv4(self):
        """An IPv6 uplink's relays get their exception too; any spelling of the address passes after."""
        d = self.gate.allow([("tcp", "[2001:2:2::2]", 9001), ("udp", "2001:2:2:0:0:0:0:2", 9000)])
        self.assertNoResult(d)
        self.clock.advance(0)
        self.successResultOf(d)
        self.assertEqual(self.routes.batches, [{("tcp", "2001:2:2::2", 9001), ("udp", "2001:2:2::2", 9000)}])
        self.assertTrue(self.gate.passes("udp", ("2001:2:2::2", 9000)))
        self.assertTrue(self.gate.passes("udp", ("2001:2:2:0::2", 9000, 0, 0)))
        self.assertFalse(self.gate.passes("udp", ("2001:2:2::3", 9000)))

    def test_ipv4MappedIsItsIPv4(self):
        """A dual-stack socket's IPv4 peer (::ffff:a.b.c.d) leaves as IPv4: one exception, in the IPv4 set."""
        d = self.gate.allow([("udp", "::ffff:198.18.7.7", 9000)])
        self.clock.advance(0)
        self.successResultOf(d)
        self.assertEqual(self.routes.batches, [{("udp", "198.18.7.7", 9000)}])
        self.assertTrue(self.gate.passes("udp", ("::ffff:198.18.7.7", 9000)))

    def test_noRouteRefused(self):
        self.routes.noRoute.add("198.19.9.9")
        d = self.gate.allow([("tcp", "198.19.9.9", 9001)])
        self.clock.advance(0)
        self.assertIn("no route to 198.19.9.9", str(self.failureResultOf(d, EgressRefused).value))
        self.assertFalse(self.gate.passes("tcp", ("198.19.9.9", 9001)))

    def test_unusedEntriesExpireUnlessPinnedOrUsed(self):
        for key in (("udp", "198.18.3.3", 9000), ("udp", "198.18.4.4", 9000), ("tcp", "198.18.5.5", 9001)):
            self.gate.allow([key])
        self.clock.advance(0)
        self.pinned = {("tcp", "198.18.5.5", 9001), ("udp", "198.18.1.2", 9000)}  # a listed relay, the bootstrap node
        for _ in range(40):
            self.gate.passes("udp", ("198.18.4.4", 9000))  # in use
            self.clock.advance(2)
        self.assertEqual(self.routes.removed, [{("udp", "198.18.3.3", 9000)}])
        self.assertEqual(self.gate.counters["expired"], 1)
        self.assertGreaterEqual(self.routes.refreshes, 40)  # routes looked up again on every tick
        self.assertTrue(self.gate.passes("udp", ("198.18.4.4", 9000)))
        self.assertTrue(self.gate.passes("tcp", ("198.18.5.5", 9001)))

    def test_boundedLeastRecentlyUsedGoesFirst(self):
        for i in range(3):
            self.gate.allow([("udp", f"198.18.3.{i}", 9000)])
            self.clock.advance(1)
        self.pinned = {("udp", "198.18.1.2", 9000)}
        d = self.gate.allow([("udp", "198.18.3.9", 9000)])  # fifth entry: the oldest unpinned makes room
        self.clock.advance(0)
        self.successResultOf(d)
        self.assertEqual(self.routes.removed, [{("udp", "198.18.3.0", 9000)}])
        self.pinned = {("udp", f"198.18.3.{i}", 9000) for i in (1, 2, 9)} | {("udp", "198.18.1.2", 9000)}
        self.failureResultOf(self.gate.allow([("udp", "198.18.3.10", 9000)]), EgressRefused)
        self.assertEqual(self.gate.counters["refused"], 1)

    def test_stopFailsWaiters(self):
        d = self.gate.allow([("tcp", "198.18.2.2", 9001)])
        self.gate.stop()
        self.failureResultOf(d, EgressRefused)
        self.clock.advance(0)
        self.assertEqual(self.routes.batches, [])


class ControlledGate:
    """An IDirectEgress whose allow() the test answers by hand."""

    def __init__(self):
        self.open, self.asked = set(), []

    def passes(self, protocol, address):
        return (protocol, *address) in self.open

    def allow(self, destinations):
        d = defer.Deferred()
        self.asked.append((list(destinations), d))
        return d

    def answer(self, i=0, ok=True):
        destinations, d = self.asked[i]
        if ok:
            self.open |= set(destinations)
            d.callback(None)
        else:
            d.errback(EgressRefused("no route"))


class Writes:
    """An IPv4 UDP socket that records what it sends."""

    def __init__(self):
        self.sent = []

    def write(self, data, addr):
        self.sent.append((data, addr))

    def getHost(self):
        return IPv4Address("UDP", "0.0.0.0", 9100)


class MultiplexerEgressTests(unittest.TestCase):
    def setUp(self):
        self.mux = DatagramMultiplexer()
        self.mux.transport = Writes()
        self.gate = ControlledGate()

    def test_noGateSendsAtOnce(self):
        self.mux.sendDatagram(b"\x80a", ("198.18.2.2", 9000))
        self.assertEqual(self.mux.transport.sent, [(b"\x80a", ("198.18.2.2", 9000))])

    def test_heldUntilAllowedThenInOrder(self):
        self.mux.setEgressGate(self.gate)
        peer = ("198.18.2.2", 9000)
        for i in range(3):
            self.mux.sendDatagram(bytes([0x80, i]), peer)
        self.assertEqual(self.mux.transport.sent, [])  # not one packet before the gate is open
        self.assertEqual(len(self.gate.asked), 1)  # one request per destination
        self.assertEqual(self.gate.asked[0][0], [("udp", "198.18.2.2", 9000)])
        self.gate.answer()
        self.assertEqual(self.mux.transport.sent, [(bytes([0x80, i]), peer) for i in range(3)])
        self.mux.sendDatagram(b"\x80z", peer)
        self.assertEqual(self.mux.transport.sent[-1], (b"\x80z", peer))

    def test_boundedAndRefusedDropped(self):
        self.mux.setEgressGate(self.gate)
        peer = ("198.18.2.2", 9000)
        for _ in range(HOLD_PER_DESTINATION + 5):
            self.mux.sendDatagram(b"\x80", peer)
        self.assertEqual(self.mux.counters()["egress_dropped"], 5)
        self.gate.answer(ok=False)
        self.assertEqual(self.mux.transport.sent, [])
        self.assertEqual(self.mux.counters()["egress_dropped"], HOLD_PER_DESTINATION + 5)
        self.assertEqual(self.mux._heldCount, 0)


class IPMemoryTransport(MemoryTransport):
    """Memory links dialled by IP:port (what the gate looks at): 198.18.2.<i>:9001 is mem:<i>."""

    def clientEndpoint(self, reactor, address, options):
        return super().clientEndpoint(reactor, f"mem:{address.split(':')[0].rsplit('.', 1)[1]}", options)


class LinkDialEgressTests(unittest.TestCase):
    def setUp(self):
        self.h = Harness(2)
        self.a = self.h.managers[0]
        self.a._transports = {"tls": IPMemoryTransport(self.h.net)}
        self.gate = ControlledGate()
        self.a.setEgressGate(self.gate)
        self.target = LinkTarget(self.h.ids[1].nodeId, (("tls", "198.18.2.1:9001"),))

    def test_dialWaitsForTheGate(self):
        d = self.a.getLink(self.target)
        self.h.net.flush()
        self.assertEqual(self.h.net.connects, 0)  # no SYN before the route and exception exist
        self.assertEqual(self.gate.asked[0][0], [("tcp", "198.18.2.1", 9001)])
        self.gate.answer()
        self.h.net.flush()
        self.assertEqual(result(d).peerId, self.h.ids[1].nodeId)

    def test_refusedDialFails(self):
        d = self.a.getLink(self.target)
        self.gate.answer(ok=False)
        self.h.net.flush()
        failure = result(d)
        self.assertIsInstance(failure.value, LinkError)
        self.assertIn("no route", str(failure.value))
        self.assertEqual(self.h.net.connects, 0)
