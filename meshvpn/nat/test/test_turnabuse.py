"""Attacks on the relay's TURN server (issue 12, item 5), in memory on task.Clock.

Each test is one way a hostile client tried to turn the relay into an open
UDP proxy or an amplifier: more allocations per node id than the quota by
asking for fresh credentials, relaying to private, shared, reserved or the
relay's own addresses, and unauthenticated requests answered with more bytes
than they carried, without a rate limit.
"""

from hypothesis import given, settings, strategies as st
from twisted.internet import task
from twisted.trial import unittest

from meshvpn.errors import RelayError
from meshvpn.nat import stun
from meshvpn.nat.endpoint import StunEndpoint
from meshvpn.nat.signal import turnCredentials
from meshvpn.nat.turn_client import TurnAllocation
from meshvpn.nat.turn_server import TurnLimits, TurnServer
from meshvpn.nat.test.test_turn import Collector, Net
from meshvpn.udpmux import STUN_BYTES, DatagramMultiplexer

SECRET = b"per-start secret"
T0 = 1_800_000_000.0
SERVER = ("198.18.0.1", 3478)
NODE = bytes(range(32))


class Relay:
    """A TURN server with REST credentials (as the NAT relay runs it) and a way to add clients."""

    def __init__(self, limits=None):
        self.clock = task.Clock()
        self.clock.advance(T0)
        self.net = Net()
        smux = DatagramMultiplexer()
        self.net.attach(SERVER, smux)
        sep = StunEndpoint(self.clock, smux.sendDatagram)
        smux.register("stun", STUN_BYTES, sep, accept=stun.isStun)
        ports = iter(range(50000, 50100))
        self.server = TurnServer(self.clock, sep, smux.sendDatagram, SERVER[0], authSecret=SECRET, limits=limits,
                                 listenUDP=lambda port, proto, interface: self.net.attach((interface, next(ports)), proto))
        self.server.registerChannelData(smux)

    def client(self, address):
        mux = DatagramMultiplexer()
        self.net.attach(address, mux)
        ep = StunEndpoint(self.clock, mux.sendDatagram)
        mux.register("stun", STUN_BYTES, ep, accept=stun.isStun)
        return ep, mux

    def allocate(self, address, nodeId=NODE):
        """Fresh credentials for C{nodeId} (as the signalling relay hands them out), then ALLOCATE from C{address}."""
        ep, mux = self.client(address)
        user, password = turnCredentials(SECRET, nodeId, self.clock.seconds(), 600)
        alloc = TurnAllocation(self.clock, ep, mux.sendDatagram, SERVER, user, password)
        d = alloc.allocate(600)
        self.net.pump()
        return d, alloc

    def raw(self, source, data):
        """Send C{data} from C{source} (a plain collector); @return: the datagrams it got back."""
        if source not in self.net.hosts:
            self.net.attach(source, Collector())
        got = self.net.hosts[source].got
        before = len(got)
        self.net.queue.append((source, SERVER, data))
        self.net.pump()
        return [d for d, _ in got[before:]]


class QuotaTests(unittest.TestCase):
    def test_quotaCountsNodeIdsNotUsernames(self):
        """
        A REST username is C{expiry:nodeid}: asking the signalling relay for
        credentials again a second later gives a new username for the same
        node.  The quota (2) counts the node, so the third allocation is refused.
        Old code: five allocations held by one node id.
        """
        relay = Relay(TurnLimits(perUser=2))
        results = []
        for i in range(5):
            relay.clock.advance(1)
            d, _ = relay.allocate(("198.18.5.2", 5000 + i))
            results.append(d)
        self.successResultOf(results[0])
        self.successResultOf(results[1])
        for d in results[2:]:
            self.assertIn("486", str(self.failureResultOf(d, RelayError).value))
        self.assertEqual(len(relay.server.allocations), 2)

    def test_otherNodesUnaffected(self):
        relay = Relay(TurnLimits(perUser=1))
        self.successResultOf(relay.allocate(("198.18.5.2", 5000))[0])
        self.successResultOf(relay.allocate(("198.18.5.3", 5000), nodeId=b"\x07" * 32)[0])
        self.assertEqual(len(relay.server.allocations), 2)


FORBIDDEN_PEERS = [
    "10.1.2.3",  # private (RFC 1918)
    "172.16.0.1",
    "172.31.255.254",
    "192.168.1.1",
    "100.64.0.1",  # shared (RFC 6598), carrier-grade NAT and our mesh
    "100.127.255.254",
    "0.1.2.3",  # "this network"
    "127.0.0.1",
    "169.254.1.1",
    "192.0.0.8",  # IETF protocol assignments
    "192.0.2.1",  # documentation
    "198.51.100.7",
    "203.0.113.9",
    "224.0.0.251",  # multicast
    "240.0.0.1",  # reserved
    "255.255.255.255",
    SERVER[0],  # the relay itself
]


class PeerAddressTests(unittest.TestCase):
    def setUp(self):
        self.relay = Relay()
        d, self.alloc = self.relay.allocate(("198.18.5.2", 5000))
        self.successResultOf(d)

    def test_forbiddenPeersRefused(self):
        """Old code: 10/8, 172.16/12, 192.168/16, 100.64/10 and the relay's own address were permitted."""
        allowed = []
        for host in FORBIDDEN_PEERS:
            d = self.alloc.createPermission((host, 7000))
            self.relay.net.pump()
            if self.successResultOf(d.addErrback(lambda f: f.trap(RelayError) and False)) is not False:
                allowed.append(host)
        self.assertEqual(allowed, [])
        self.assertEqual([a.permissions for a in self.relay.server.allocations.values()], [{}])

    def test_channelToForbiddenPeerRefused(self):
        d = self.alloc.channelBind(("10.0.0.1", 7000))
        self.relay.net.pump()
        self.failureResultOf(d, RelayError)

    def test_publicPeerStillAllowed(self):
        peer = Collector()
        self.relay.net.attach(("198.18.9.9", 7000), peer)
        d = self.alloc.createPermission(("198.18.9.9", 7000))
        self.relay.net.pump()
        self.successResultOf(d)
        self.alloc.send(("198.18.9.9", 7000), b"hi")
        self.relay.net.pump()
        self.assertEqual(peer.got, [(b"hi", self.alloc.relayedAddress)])

    def test_operatorAllowList(self):
        """A lab relay can let a private range through explicitly (coturn's allowed-peer-ip)."""
        relay = Relay(TurnLimits(allowedPeers=("10.0.0.0/8",)))
        d, alloc = relay.allocate(("198.18.5.2", 5000))
        self.successResultOf(d)
        d = alloc.createPermission(("10.1.2.3", 7000))
        relay.net.pump()
        self.successResultOf(d)
        d = alloc.createPermission(("192.168.1.1", 7000))
        relay.net.pump()
        self.failureResultOf(d, RelayError)


def _request(method, attrs=(), fingerprint=False, cls=stun.REQUEST):
    msg = stun.StunMessage(method, cls)
    for t, v in attrs:
        msg.add(t, v)
    return msg.encode(fingerprint=fingerprint)


MINIMAL_ALLOCATE = _request(stun.ALLOCATE, [(stun.REQUESTED_TRANSPORT, b"\x11\x00\x00\x00")])


class AmplificationTests(unittest.TestCase):
    def test_minimalAllocateGetsNoLargerReply(self):
        """Old code: a 28-byte ALLOCATE drew a ~90-byte 401 (3.3x)."""
        relay = Relay()
        replies = relay.raw(("198.18.7.7", 1234), MINIMAL_ALLOCATE)
        self.assertTrue(all(len(r) <= len(MINIMAL_ALLOCATE) for r in replies), [len(r) for r in replies])

    def test_unknownAttributeReplyNoLarger(self):
        data = _request(stun.ALLOCATE, [(0x7777, b"")])
        replies = Relay().raw(("198.18.7.7", 1234), data)
        self.assertTrue(all(len(r) <= len(data) for r in replies), [len(r) for r in replies])

    def test_paddedRequestGetsTheChallenge(self):
        """A request at least as large as the challenge gets it (our client pads its first ALLOCATE)."""
        relay = Relay()
        data = _request(stun.ALLOCATE, [(stun.REQUESTED_TRANSPORT, b"\x11\x00\x00\x00"), (stun.SOFTWARE, b" " * 120)],
                        fingerprint=True)
        (reply,) = relay.raw(("198.18.7.7", 1234), data)
        msg = stun.StunMessage.decode(reply)
        self.assertEqual(msg.errorCode()[0], 401)
        self.assertIsNotNone(msg.get(stun.NONCE))
        self.assertLessEqual(len(reply), len(data))

    @given(
        st.sampled_from([stun.ALLOCATE, stun.REFRESH, stun.CREATE_PERMISSION, stun.CHANNEL_BIND, stun.SEND, stun.BINDING]),
        st.sampled_from([stun.REQUEST, stun.INDICATION]),
        st.lists(st.tuples(st.sampled_from([stun.USERNAME, stun.REALM, stun.NONCE, stun.LIFETIME, stun.REQUESTED_TRANSPORT,
                                            stun.XOR_PEER_ADDRESS, stun.SOFTWARE, 0x7777, 0x0003, 0xC001]),
                           st.binary(max_size=24)), max_size=5),
        st.booleans(),
    )
    @settings(max_examples=300, deadline=None)
    def test_noUnauthenticatedReplyIsLarger(self, method, cls, attrs, fingerprint):
        relay = Relay()
        data = _request(method, attrs, fingerprint, cls)
        for reply in relay.raw(("198.18.7.7", 1234), data):
            self.assertLessEqual(len(reply), len(data))


class UnauthenticatedRateTests(unittest.TestCase):
    PADDED = _request(stun.ALLOCATE, [(stun.REQUESTED_TRANSPORT, b"\x11\x00\x00\x00"), (stun.SOFTWARE, b" " * 120)])

    def test_perSourceRateLimit(self):
        """Old code: 200 requests in one instant drew 200 challenges."""
        relay = Relay()
        flood = ("198.18.7.7", 1234)
        answered = sum(len(relay.raw(flood, self.PADDED)) for _ in range(200))
        self.assertLessEqual(answered, 20)
        self.assertGreater(answered, 0)
        # another source is not starved by the flood
        self.assertEqual(len(relay.raw(("198.18.7.8", 1234), self.PADDED)), 1)
        # the flooding source gets answers again as time passes (10 per second)
        relay.clock.advance(1.0)
        again = sum(len(relay.raw(flood, self.PADDED)) for _ in range(50))
        self.assertLessEqual(again, 11)
        self.assertGreater(again, 5)
        self.assertGreater(relay.server.counters["unauthenticated_ratelimited"], 0)

    def test_portsOfOneHostShareTheBudget(self):
        relay = Relay()
        answered = sum(len(relay.raw(("198.18.7.7", 1000 + i), self.PADDED)) for i in range(200))
        self.assertLessEqual(answered, 20)

    def test_clientsStillAllocate(self):
        """Our client pads its first ALLOCATE, so it still gets the challenge and allocates."""
        relay = Relay()
        self.successResultOf(relay.allocate(("198.18.5.2", 5000))[0])
