"""TURN client against our TURN server, in memory on task.Clock: auth, permissions, channels, limits."""

from hypothesis import given, settings, strategies as st
from twisted.internet import task
from twisted.trial import unittest

from meshvpn.errors import RelayError
from meshvpn.interfaces import IRelayAllocation
from meshvpn.nat import stun
from meshvpn.nat.endpoint import StunEndpoint
from meshvpn.nat.turn_client import TurnAllocation
from meshvpn.nat.turn_server import TurnLimits, TurnServer
from meshvpn.udpmux import DatagramMultiplexer, STUN_BYTES


class Net:
    """Synchronous in-memory UDP: each host is a DatagramMultiplexer or a plain protocol."""

    def __init__(self):
        self.hosts = {}
        self.queue = []
        self.drop = None  # optional predicate(src, dst, data): lose that datagram

    def attach(self, addr, proto):
        net = self

        class T:
            def write(self, data, dst):
                net.queue.append((addr, dst, data))

            def getHost(self):
                class H:
                    host, port = addr

                return H()

            def stopListening(self):
                net.hosts.pop(addr, None)

        proto.transport = T()
        self.hosts[addr] = proto
        return proto.transport

    def pump(self):
        for _ in range(100):
            q, self.queue = self.queue, []
            if not q:
                return
            for src, dst, data in q:
                if self.drop is not None and self.drop(src, dst, data):
                    continue
                h = self.hosts.get(dst)
                if h is not None:
                    h.datagramReceived(data, src)


class Collector:
    def __init__(self):
        self.got = []

    def datagramReceived(self, data, addr):
        self.got.append((data, addr))


def setup(testCase, users={"alice": "secret"}, limits=None, server=("198.18.0.1", 3478), client=("198.18.5.2", 5000),
          relayHost="198.18.0.1", relayHost6=None):
    clock = task.Clock()
    net = Net()
    S, C = server, client
    smux, cmux = DatagramMultiplexer(), DatagramMultiplexer()
    net.attach(S, smux)
    net.attach(C, cmux)
    sep = StunEndpoint(clock, smux.sendDatagram)
    smux.register("stun", STUN_BYTES, sep, accept=stun.isStun)
    ports = iter(range(50000, 50100))

    def listenUDP(port, proto, interface):
        return net.attach((interface, next(ports)), proto)

    server = TurnServer(clock, sep, smux.sendDatagram, relayHost, users=users, limits=limits, listenUDP=listenUDP,
                        relayHost6=relayHost6)
    server.registerChannelData(smux)
    cep = StunEndpoint(clock, cmux.sendDatagram)
    cmux.register("stun", STUN_BYTES, cep, accept=stun.isStun)
    return clock, net, server, cep, cmux, S


def allocate(testCase, clock, net, cep, cmux, S, user="alice", pw="secret", **families):
    alloc = TurnAllocation(clock, cep, cmux.sendDatagram, S, user, pw)
    d = alloc.allocate(600, **families)
    net.pump()
    alloc.registerChannelData(cmux)
    return d, alloc


def exchangeBothWays(case, net, alloc, peer, got, P, tag):
    """
    With a permission for C{P} in place: data both ways in Send/Data
    indications, then a channel bound (0x4000) and data both ways in it.
    C{got} collects what C{alloc} receives, C{peer.got} what C{P} does.
    """
    alloc.send(P, b"hello" + tag)
    net.pump()
    case.assertEqual(peer.got, [(b"hello" + tag, alloc.relayedAddress)])
    net.queue.append((P, alloc.relayedAddress, b"back" + tag))
    net.pump()
    case.assertEqual(got, [(b"back" + tag, P)])
    # A channel: same data, 4-byte header.
    d = alloc.channelBind(P)
    net.pump()
    case.assertEqual(case.successResultOf(d), 0x4000)
    alloc.send(P, b"chan" + tag)
    net.queue.append((P, alloc.relayedAddress, b"chanback" + tag))
    net.pump()
    case.assertEqual(peer.got[-1], (b"chan" + tag, alloc.relayedAddress))
    case.assertEqual(got[-1], (b"chanback" + tag, P))


class TurnTests(unittest.TestCase):
    def test_allocatePermissionSendData(self):
        clock, net, server, cep, cmux, S = setup(self)
        d, alloc = allocate(self, clock, net, cep, cmux, S)
        self.successResultOf(d)
        self.assertTrue(IRelayAllocation.providedBy(alloc))
        self.assertEqual(alloc.relayedAddress, ("198.18.0.1", 50000))
        self.assertEqual(alloc.mappedAddress, ("198.18.5.2", 5000))
        peer = Collector()
        P = ("198.18.9.9", 7000)
        net.attach(P, peer)
        got = []
        alloc.setReceiver(lambda data, addr: got.append((data, addr)))
        # Without a permission nothing passes either way.
        alloc.send(P, b"early")
        net.queue.append((P, alloc.relayedAddress, b"sneak"))
        net.pump()
        self.assertEqual(peer.got, [])
        self.assertEqual(got, [])
        self.assertEqual(server.counters["no_permission"], 2)
        d = alloc.createPermission(P)
        net.pump()
        self.successResultOf(d)
        exchangeBothWays(self, net, alloc, peer, got, P, b"")
        d = alloc.refresh(300)
        net.pump()
        self.assertEqual(self.successResultOf(d), 300)
        d = alloc.release()
        net.pump()
        self.successResultOf(d)
        self.assertEqual(server.allocations, {})

    def test_wrongPasswordRefused(self):
        clock, net, server, cep, cmux, S = setup(self)
        d, alloc = allocate(self, clock, net, cep, cmux, S, pw="wrong")
        self.failureResultOf(d, RelayError)
        self.assertEqual(server.allocations, {})

    def test_unauthenticatedSendIgnored(self):
        """A SEND indication from a client with no allocation relays nothing (not an open proxy)."""
        clock, net, server, cep, cmux, S = setup(self)
        peer = Collector()
        P = ("198.18.9.9", 7000)
        net.attach(P, peer)
        msg = stun.StunMessage(stun.SEND, stun.INDICATION)
        msg.addXorAddress(stun.XOR_PEER_ADDRESS, P)
        msg.add(stun.DATA_ATTR, b"x")
        cmux.sendDatagram(msg.encode(), S)
        net.pump()
        self.assertEqual(peer.got, [])
        self.assertEqual(server.counters["malformed"], 1)

    def test_forbiddenPeer(self):
        clock, net, server, cep, cmux, S = setup(self)
        d, alloc = allocate(self, clock, net, cep, cmux, S)
        self.successResultOf(d)
        d = alloc.createPermission(("127.0.0.1", 22))
        net.pump()
        self.failureResultOf(d, RelayError)

    def test_expires(self):
        clock, net, server, cep, cmux, S = setup(self, limits=TurnLimits(maxLifetime=100))
        d, alloc = allocate(self, clock, net, cep, cmux, S)
        self.successResultOf(d)
        self.assertEqual(alloc.lifetime, 100)
        alloc._stopTimers()
        clock.advance(101)
        self.assertEqual(server.allocations, {})

    def test_byteBudget(self):
        clock, net, server, cep, cmux, S = setup(self, limits=TurnLimits(byteBudget=1000))
        d, alloc = allocate(self, clock, net, cep, cmux, S)
        self.successResultOf(d)
        peer = Collector()
        P = ("198.18.9.9", 7000)
        net.attach(P, peer)
        alloc.createPermission(P)
        net.pump()
        for _ in range(5):
            alloc.send(P, b"x" * 400)
        net.pump()
        self.assertEqual(len(peer.got), 2)
        self.assertEqual(server.counters["over_limit"], 3)

    def test_quotaPerUser(self):
        clock, net, server, cep, cmux, S = setup(self, limits=TurnLimits(perUser=1))
        d, alloc = allocate(self, clock, net, cep, cmux, S)
        self.successResultOf(d)
        C2 = ("198.18.5.3", 5000)
        mux2 = DatagramMultiplexer()
        net.attach(C2, mux2)
        cep2 = StunEndpoint(clock, mux2.sendDatagram)
        mux2.register("stun", STUN_BYTES, cep2, accept=stun.isStun)
        d2, _ = allocate(self, clock, net, cep2, mux2, S)
        f = self.failureResultOf(d2, RelayError)
        self.assertIn("486", str(f.value))


class TurnFuzzTests(unittest.TestCase):
    """Well-framed but arbitrary STUN messages and ChannelData never break the server or the client."""

    attrs = st.lists(
        st.tuples(
            st.sampled_from([stun.USERNAME, stun.REALM, stun.NONCE, stun.LIFETIME, stun.REQUESTED_TRANSPORT,
                              stun.XOR_PEER_ADDRESS, stun.CHANNEL_NUMBER, stun.DATA_ATTR, stun.EVEN_PORT,
                              stun.REQUESTED_ADDRESS_FAMILY, stun.XOR_RELAYED_ADDRESS, 0x7777, 0xC001]),
            st.binary(max_size=40),
        ),
        max_size=6,
    )

    @given(
        st.sampled_from([stun.ALLOCATE, stun.REFRESH, stun.SEND, stun.DATA, stun.CREATE_PERMISSION, stun.CHANNEL_BIND]),
        st.sampled_from([stun.REQUEST, stun.INDICATION, stun.SUCCESS, stun.ERROR]),
        attrs,
        st.booleans(),
        st.binary(max_size=60),
    )
    @settings(max_examples=300, deadline=None)
    def test_noHandlerErrors(self, method, cls, attrs, withAllocation, channelData):
        clock, net, server, cep, cmux, S = setup(self)
        smux = net.hosts[S]
        alloc = None
        if withAllocation:
            d, alloc = allocate(self, clock, net, cep, cmux, S)
            self.successResultOf(d)
            alloc.createPermission(("198.18.9.9", 1))
            net.pump()
        msg = stun.StunMessage(method, cls, attributes=attrs)
        cmux.sendDatagram(msg.encode(), S)
        cmux.sendDatagram(b"\x40" + channelData, S)
        smux.sendDatagram(msg.encode(), ("198.18.5.2", 5000))
        smux.sendDatagram(b"\x40" + channelData, ("198.18.5.2", 5000))
        net.pump()
        self.assertEqual(smux.counters().get("handler_errors", 0), 0)
        self.assertEqual(cmux.counters().get("handler_errors", 0), 0)


class CredentialRenewalTests(unittest.TestCase):
    """
    The signalling relay's REST credentials live 600 s; an allocation
    refreshes every ~540 s, so its second refresh (~1080 s) came with
    expired ones, got 401, and relayed links died after ~19 min.
    """

    def _world(self):
        from meshvpn.nat.signal import turnCredentials

        clock, net = task.Clock(), Net()
        clock.advance(1_700_000_000)  # REST credentials carry a wall-clock expiry
        R, C = ("198.18.0.2", 3478), ("198.18.5.2", 5000)
        smux, cmux = DatagramMultiplexer(), DatagramMultiplexer()
        net.attach(R, smux)
        net.attach(C, cmux)
        sep = StunEndpoint(clock, smux.sendDatagram)
        smux.register("stun", STUN_BYTES, sep, accept=stun.isStun)
        ports = iter(range(51000, 51100))
        server = TurnServer(clock, sep, smux.sendDatagram, R[0], authSecret=b"k" * 32,
                            listenUDP=lambda port, proto, interface: net.attach((interface, next(ports)), proto))
        server.registerChannelData(smux)
        cep = StunEndpoint(clock, cmux.sendDatagram)
        cmux.register("stun", STUN_BYTES, cep, accept=stun.isStun)
        creds = lambda: (600, *turnCredentials(b"k" * 32, b"\x42" * 32, clock.seconds(), 600))  # noqa: E731
        return clock, net, server, cep, cmux, R, creds

    def _refreshFor2250s(self, renew):
        from twisted.internet import defer

        clock, net, server, cep, cmux, R, creds = self._world()
        _, user, password = creds()
        issued = []

        def fresh():
            issued.append(clock.seconds())
            return defer.succeed(creds())

        alloc = TurnAllocation(clock, cep, cmux.sendDatagram, R, user, password, renew=fresh if renew else None)
        d = alloc.allocate(600)
        net.pump()
        self.successResultOf(d)
        for _ in range(45):  # 2250 s
            clock.advance(50)
            net.pump()
        return server, alloc, issued

    def test_renewedCredentialsKeepTheAllocation(self):
        server, alloc, issued = self._refreshFor2250s(renew=True)
        self.assertEqual(len(server.allocations), 1)
        self.assertGreaterEqual(len(issued), 4)  # one per refresh
        self.assertFalse(alloc.released)

    def test_withoutRenewalItDiesAtTheSecondRefresh(self):
        """What happened before: the same run without renewal loses the allocation."""
        server, _, _ = self._refreshFor2250s(renew=False)
        self.assertEqual(server.allocations, {})

    def test_anotherNodesCredentialsCannotTakeItOver(self):
        """The allocation follows new credentials of its own node only: another node's valid ones get 437."""
        from meshvpn.nat.signal import turnCredentials

        clock, net, server, cep, cmux, R, creds = self._world()
        _, user, password = creds()
        alloc = TurnAllocation(clock, cep, cmux.sendDatagram, R, user, password)
        d = alloc.allocate(600)
        net.pump()
        self.successResultOf(d)
        alloc.setCredentials(*turnCredentials(b"k" * 32, b"\x99" * 32, clock.seconds(), 600))
        d = alloc.refresh(600)
        net.pump()
        self.assertIn("437", self.failureResultOf(d, RelayError).getErrorMessage())
        self.assertEqual(next(iter(server.allocations.values())).username, user)
