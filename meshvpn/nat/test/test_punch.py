"""Hole punching, relay signalling and the peer connector, in memory on task.Clock."""

from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.internet import task
from twisted.trial import unittest

from meshvpn.errors import PunchFailed
from meshvpn.identity import NodeIdentity
from meshvpn.interfaces import IHolePuncher, ISignallingChannel
from meshvpn.link.datagram import DatagramLinkEndpoint
from meshvpn.nat import signal_wire as sw
from meshvpn.nat import stun
from meshvpn.nat.connect import PeerConnector
from meshvpn.nat.endpoint import StunEndpoint
from meshvpn.nat.punch import PunchSession, HolePuncher
from meshvpn.nat.signal import RelaySignalling, SignalRelay
from meshvpn.nat.turn_client import TurnAllocation
from meshvpn.nat.turn_server import TurnServer
from meshvpn.nat.test.test_turn import Net
from meshvpn.udpmux import STUN_BYTES, DatagramMultiplexer


class PunchTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.net = Net()
        self.a, self.b = ("198.18.1.2", 4000), ("198.18.2.2", 5000)
        self.pa, self.pb = self._puncher(self.a), self._puncher(self.b)

    def _puncher(self, addr):
        mux = DatagramMultiplexer()
        self.net.attach(addr, mux)
        p = HolePuncher(self.clock, mux.sendDatagram, deadline=3.0)
        p.register(mux)
        return p

    def advance(self, seconds, step=0.01):
        for _ in range(int(seconds / step)):
            self.clock.advance(step)
            self.net.pump()

    def test_bothSidesFindThePair(self):
        self.assertTrue(IHolePuncher.providedBy(self.pa))
        pid, secret = b"p" * 8, b"s" * 16
        dead = ("198.19.9.9", 1)
        da = self.pa.punch(b"B", [], [dead, self.b], PunchSession(pid, secret, 0))
        db = self.pb.punch(b"A", [], [self.a], PunchSession(pid, secret, 1))
        self.advance(0.2)
        self.assertEqual(self.successResultOf(da), self.b)
        self.assertEqual(self.successResultOf(db), self.a)

    def test_peerReflexive(self):
        """B does not know A's real address, but answers and probes where A's probe came from."""
        pid, secret = b"q" * 8, b"t" * 16
        da = self.pa.punch(b"B", [], [self.b], PunchSession(pid, secret, 0))
        db = self.pb.punch(b"A", [], [("198.18.1.2", 9999)], PunchSession(pid, secret, 1))
        self.advance(0.2)
        self.assertEqual(self.successResultOf(da), self.b)
        self.assertEqual(self.successResultOf(db), self.a)

    def test_wrongSecretNeverSucceeds(self):
        pid = b"r" * 8
        da = self.pa.punch(b"B", [], [self.b], PunchSession(pid, b"1" * 16, 0))
        db = self.pb.punch(b"A", [], [self.a], PunchSession(pid, b"2" * 16, 1))
        self.advance(3.5, step=0.1)
        self.failureResultOf(db, PunchFailed)
        self.failureResultOf(da, PunchFailed)
        self.assertGreater(self.pb.counters["bad_tag"], 0)

    def test_ownProbeReflectedIsNotAnAck(self):
        pid, secret = b"m" * 8, b"k" * 16
        s = PunchSession(pid, secret, 0)
        d = self.pa.punch(b"B", [], [self.b], s)
        self.pa.datagramReceived(s.probe, self.b)
        self.pa.datagramReceived(s.ack, self.b)
        self.assertNoResult(d)
        self.advance(3.5, step=0.1)
        self.failureResultOf(d, PunchFailed)

    def test_garbage(self):
        for data in (b"\x9e", b"\x9f" + b"x" * 30, b"\x9e" + b"z" * 24):
            self.pa.datagramReceived(data, self.b)
        self.assertEqual(self.pa.counters["garbage"], 2)
        self.assertEqual(self.pa.counters["unknown"], 1)

    def test_spreadAndBackoff(self):
        """Rounds back off to at most 0.4 s; candidates in a round go out 5 ms apart."""
        cands = [("198.19.0.%d" % i, 1) for i in range(1, 5)]
        d = self.pa.punch(b"B", [], cands, PunchSession(b"n" * 8, b"s" * 16, 0))
        d.addErrback(lambda f: f.trap(PunchFailed))
        self.assertEqual(self.pa.counters["probes_sent"], 1)
        self.clock.advance(0.016)
        self.assertEqual(self.pa.counters["probes_sent"], 4)
        self.advance(3.0, step=0.05)
        # about 3 s / (up to 0.4 s) rounds of 4 probes, not a flood
        self.assertLess(self.pa.counters["probes_sent"], 4 * 20)


class SignalWireTests(unittest.TestCase):
    @given(st.binary(max_size=200))
    @settings(max_examples=400, deadline=None)
    def test_relayParserOnlyRaisesParseError(self, data):
        try:
            sw.parseRelayMessage(data)
        except sw.SignalParseError:
            pass

    @given(st.binary(max_size=200))
    @settings(max_examples=400, deadline=None)
    def test_peerParserOnlyRaisesParseError(self, data):
        try:
            sw.parsePeerPayload(data)
        except sw.SignalParseError:
            pass

    # ip_addresses() draws slowly when the shared machine is loaded: the health check failed there, not the parser
    @settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.tuples(st.ip_addresses().map(str), st.integers(0, 65535)), max_size=16))
    def test_candidatesRoundTrip(self, cands):
        payload = bytes((sw.OFFER,)) + b"i" * 8 + b"s" * 16 + sw.encodeCandidates(cands)
        kind, pid, secret, got = sw.parsePeerPayload(payload)
        self.assertEqual(got, cands)

    def test_tooManyCandidates(self):
        payload = bytes((sw.ANSWER,)) + b"i" * 8 + bytes((17,))
        self.assertRaises(sw.SignalParseError, sw.parsePeerPayload, payload)

    def test_creds(self):
        self.assertEqual(sw.parseRelayMessage(sw.encodeCreds(600, "u", "p")), (sw.CREDS, 600, "u", "p"))


class World:
    """A relay (link + signalling + TURN on its own socket) and two peers, in memory."""

    def __init__(self, blockProbes=False):
        self.clock = task.Clock()
        self.clock.advance(1_800_000_000)  # wall-clock-like, for REST credential expiry
        self.net = Net()
        if blockProbes:
            # Two NATs that cannot be punched: nothing passes directly between the peers.
            self.net.drop = lambda src, dst, data: _peerToPeer(src, dst)
        R, T = ("198.18.0.5", 7000), ("198.18.0.5", 3478)
        self.relayId = NodeIdentity.generate()
        rmux = DatagramMultiplexer()
        self.net.attach(R, rmux)
        rep = DatagramLinkEndpoint(self.clock, self.relayId, rmux)
        rep.register(rmux)
        self.relay = SignalRelay(self.clock, rep, turnSecret=b"secret")
        tmux = DatagramMultiplexer()
        self.net.attach(T, tmux)
        tstun = StunEndpoint(self.clock, tmux.sendDatagram)
        tmux.register("stun", STUN_BYTES, tstun, accept=stun.isStun)
        ports = iter(range(50000, 50100))
        self.turn = TurnServer(self.clock, tstun, tmux.sendDatagram, "198.18.0.5",
                               authSecret=b"secret", listenUDP=lambda p, proto, interface: self.net.attach((interface, next(ports)), proto))
        self.turn.registerChannelData(tmux)
        self.peers = [self._peer(("198.18.1.2", 4000), R, T), self._peer(("198.18.2.2", 5000), R, T)]
        self.introduce(*self.peers)

    def introduce(self, *connectors):
        """Make these peers configured mesh peers of each other (strangers' offers are dropped)."""
        for a in connectors:
            for b in connectors:
                if a is not b:
                    a.allowPeer(b.identity.nodeId)

    def _peer(self, addr, R, T):
        ident = NodeIdentity.generate()
        mux = DatagramMultiplexer()
        self.net.attach(addr, mux)
        ep = DatagramLinkEndpoint(self.clock, ident, mux)
        ep.register(mux)
        stunEp = StunEndpoint(self.clock, mux.sendDatagram)
        mux.register("stun", STUN_BYTES, stunEp, accept=stun.isStun)
        puncher = HolePuncher(self.clock, mux.sendDatagram, deadline=2.0)
        puncher.register(mux)
        sig = RelaySignalling(self.clock, ep, self.relayId.nodeId, R)

        async def allocate():
            lifetime, user, pw = await sig.requestCredentials()
            alloc = TurnAllocation(self.clock, stunEp, mux.sendDatagram, T, user, pw)
            await alloc.allocate(lifetime)
            alloc.registerChannelData(mux)
            return alloc

        conn = PeerConnector(self.clock, ep, puncher, sig, lambda: [addr], allocate)
        conn.identity, conn.sig = ident, sig
        return conn

    def pump(self, seconds, step=0.01):
        for _ in range(int(seconds / step)):
            self.clock.advance(step)
            self.net.pump()


def _peerToPeer(src, dst):
    hosts = {"198.18.1.2", "198.18.2.2"}
    return src[0] in hosts and dst[0] in hosts


class ConnectorTests(unittest.TestCase):
    def _connect(self, world):
        a, b = world.peers
        for p in (a, b):
            d = p.sig.start()
            world.pump(0.1)
            self.successResultOf(d)
            self.assertTrue(ISignallingChannel.providedBy(p.sig))
        seen = []
        b.linkObservers.append(seen.append)
        d = a.connect(b.identity.nodeId)
        world.pump(5.0)
        link, path = self.successResultOf(d)
        got = []
        seen[0].setPacketReceiver(got.append)
        link.sendPacket(b"hello through " + path.encode())
        world.pump(0.1)
        self.assertEqual(got, [b"hello through " + path.encode()])
        return path

    def test_direct(self):
        self.assertEqual(self._connect(World()), "direct")

    def test_relayWhenPunchingFails(self):
        world = World(blockProbes=True)
        self.assertEqual(self._connect(world), "relay")
        self.assertEqual(len(world.turn.allocations), 1)
        self.assertGreaterEqual(world.relay.counters["creds"], 1)

    def test_oneAllocationForManyPeers(self):
        """A second relayed peer gets a permission on the same allocation, not a new one."""
        world = World(blockProbes=True)
        self.assertEqual(self._connect(world), "relay")
        a = world.peers[0]
        # a third peer, also unpunchable from a
        c = world._peer(("198.18.3.2", 6000), ("198.18.0.5", 7000), ("198.18.0.5", 3478))
        world.introduce(a, c)
        world.net.drop = lambda src, dst, data: {src[0], dst[0]} <= {"198.18.1.2", "198.18.2.2", "198.18.3.2"}
        d = c.sig.start()
        world.pump(0.1)
        self.successResultOf(d)
        d = a.connect(c.identity.nodeId)
        world.pump(5.0)
        link, path = self.successResultOf(d)
        self.assertEqual(path, "relay")
        self.assertEqual(len(a.allocations), 1)
        self.assertEqual(len(world.turn.allocations), 1)
