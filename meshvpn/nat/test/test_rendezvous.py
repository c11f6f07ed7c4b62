"""Rendezvous through the DHT, in memory on task.Clock: two peers on different relays connect knowing only node ids."""

from hypothesis import given, settings, strategies as st
from twisted.internet import defer, task
from twisted.trial import unittest

from meshvpn.dht import records
from meshvpn.identity import NodeIdentity
from meshvpn.interfaces import ISignallingChannel
from meshvpn.link.datagram import DatagramLinkEndpoint
from meshvpn.nat import rendezvous as rv
from meshvpn.nat.connect import PeerConnector
from meshvpn.nat.punch import HolePuncher
from meshvpn.nat.signal import RelaySignalling, SignalRelay
from meshvpn.nat.test.test_turn import Net
from meshvpn.udpmux import DatagramMultiplexer
from zope.interface.verify import verifyObject

R1, R2 = ("198.18.0.5", 7000), ("198.18.0.6", 7000)


class FakeDHT:
    """Stores what verifies under its key, like storing nodes do; C{hostile} answers every get with its own record."""

    def __init__(self, clock):
        self.clock = clock
        self.store = {}
        self.hostile = None
        self.gets = 0

    def put(self, record):
        records.verifyRecord(record, self.clock.seconds())
        old = self.store.get(record.key)
        if old is None or old.seq < record.seq:
            self.store[record.key] = record
        return defer.succeed(1)

    def get(self, key):
        self.gets += 1
        if self.hostile is not None:
            return defer.succeed(self.hostile)
        rec = self.store.get(key)
        if rec is not None and rec.expires <= self.clock.seconds():
            rec = None
        return defer.succeed(rec)


class World:
    def __init__(self):
        self.clock = task.Clock()
        self.clock.advance(1_800_000_000)
        self.net = Net()
        self.dht = FakeDHT(self.clock)
        self.relays = {}
        for addr in (R1, R2):
            ident = NodeIdentity.generate()
            mux = DatagramMultiplexer()
            self.net.attach(addr, mux)
            ep = DatagramLinkEndpoint(self.clock, ident, mux)
            ep.register(mux)
            self.relays[addr] = (ident.nodeId, SignalRelay(self.clock, ep))

    def peer(self, addr, home):
        ident = NodeIdentity.generate()
        mux = DatagramMultiplexer()
        self.net.attach(addr, mux)
        ep = DatagramLinkEndpoint(self.clock, ident, mux)
        ep.register(mux)
        puncher = HolePuncher(self.clock, mux.sendDatagram, deadline=2.0)
        puncher.register(mux)
        relayId = self.relays[home][0]
        homeSig = RelaySignalling(self.clock, ep, relayId, home)
        d = homeSig.start()
        self.pump(0.2)
        assert d.called

        def openRelay(relayId, address):
            sig = RelaySignalling(self.clock, ep, relayId, address)
            return sig.start().addCallback(lambda _: sig)

        directory = rv.RendezvousDirectory(self.clock, self.dht, records, ident)
        sig = rv.RendezvousSignalling(homeSig, directory, openRelay)
        conn = PeerConnector(self.clock, ep, puncher, sig, lambda: [addr])
        conn.identity, conn.sig, conn.directory, conn.relayId = ident, sig, directory, relayId
        return conn

    def publish(self, peer, home):
        d = peer.directory.publish(peer.relayId, [home])
        self.pump(0.1)
        return d

    def pump(self, seconds, step=0.01):
        for _ in range(int(seconds / step)):
            self.clock.advance(step)
            self.net.pump()


class RendezvousTests(unittest.TestCase):
    def setUp(self):
        self.w = World()
        self.a = self.w.peer(("198.18.1.2", 4000), R1)
        self.b = self.w.peer(("198.18.2.2", 5000), R2)
        self.a.allowPeer(self.b.identity.nodeId)
        self.b.allowPeer(self.a.identity.nodeId)
        for p, home in ((self.a, R1), (self.b, R2)):
            self.addCleanup(p.directory.stop)

    def test_providesInterface(self):
        verifyObject(ISignallingChannel, self.a.sig)

    def test_peersOnDifferentRelaysConnect(self):
        """A knows B's node id only; B's record says R2; A registers there and the punch succeeds."""
        self.successResultOf(self.w.publish(self.b, R2))
        d = self.a.connect(self.b.identity.nodeId)
        self.w.pump(5.0)
        link, path = self.successResultOf(d)
        self.assertEqual((link.peerId, path), (self.b.identity.nodeId, "direct"))
        self.assertEqual(self.a.directory.counters["found"], 1)
        self.assertGreater(self.a.sig.counters["via_other"], 0)
        self.assertEqual(self.w.relays[R2][1].counters["forwarded"] > 0, True)

    def test_withoutRecordOnlyHomeRelay(self):
        """No record: signals go through our own relay, and B (registered elsewhere) is unreachable there."""
        d = self.a.connect(self.b.identity.nodeId)
        self.w.pump(5.0)
        self.failureResultOf(d)
        self.assertEqual(self.a.directory.counters["missing"], 1)
        self.assertGreater(self.a.sig.counters["via_home"], 0)

    def test_hostileDhtCannotRedirect(self):
        """A DHT node answering with its own (validly signed) record for B's key: rejected, no relay opened."""
        mallory = NodeIdentity.generate()
        self.w.dht.hostile = records.makeRecord(mallory, rv.SALT, rv.encodeRendezvous(bytes(32), [("198.18.66.6", 7000)]),
                                                1, int(self.w.clock.seconds()) + 600)
        seen = []
        self.w.net.attach(("198.18.66.6", 7000), type("C", (), {"datagramReceived": lambda s, d, a: seen.append(d)})())
        d = self.a.connect(self.b.identity.nodeId)
        self.w.pump(5.0)
        self.failureResultOf(d)
        self.assertEqual(self.a.directory.counters["rejected"], 1)
        self.assertEqual(seen, [])

    def test_forgedSignatureRejected(self):
        """B's key and salt, a relay of Mallory's, a signature by nobody: the reader checks it too."""
        good = records.makeRecord(self.b.identity, rv.SALT, rv.encodeRendezvous(bytes(32), [R2]), 5,
                                  int(self.w.clock.seconds()) + 600)
        value = rv.encodeRendezvous(bytes(32), [("198.18.66.6", 7000)])
        raw = bytearray(good.raw)
        start = len(raw) - 64 - len(value)
        raw[start : start + len(value)] = value
        self.w.dht.hostile = records.parseRecord(bytes(raw))
        result = []
        self.a.directory.lookup(self.b.identity.nodeId).addCallback(result.append)
        self.assertEqual(result, [None])
        self.assertEqual(self.a.directory.counters["rejected"], 1)

    def test_recordIsShortLivedAndRepublished(self):
        self.successResultOf(self.w.publish(self.b, R2))
        first = self.w.dht.store[records.ownedKey(self.b.identity.nodeId, rv.SALT)]
        self.assertLessEqual(first.expires - self.w.clock.seconds(), rv.LIFETIME)
        self.w.clock.advance(rv.LIFETIME / 2 + 1)
        second = self.w.dht.store[records.ownedKey(self.b.identity.nodeId, rv.SALT)]
        self.assertGreater(second.seq, first.seq)

    def test_recordCarriesNoCandidates(self):
        """A stranger who looks B up learns its relay, not its addresses."""
        self.successResultOf(self.w.publish(self.b, R2))
        rec = self.w.dht.store[records.ownedKey(self.b.identity.nodeId, rv.SALT)]
        self.assertNotIn(b"\xc6\x12\x02\x02", rec.value)  # 198.18.2.2
        self.assertEqual(rv.parseRendezvous(rec.value), (self.b.relayId, [R2]))

    def test_relaysBounded(self):
        """However many relays peers name, we register with at most maxRelays besides our own."""
        opened = []
        sig = rv.RendezvousSignalling(self.a.sig.home, self.a.directory,
                                      lambda relayId, addr: (opened.append(relayId), defer.Deferred())[1], maxRelays=2)
        for i in range(5):
            peer = NodeIdentity.generate()
            self.w.dht.put(records.makeRecord(peer, rv.SALT, rv.encodeRendezvous(bytes([i]) * 32, [R2]), 1,
                                              int(self.w.clock.seconds()) + 600))
            sig.sendSignal(peer.nodeId, b"\x11" * 30)
        self.assertEqual(len(opened), 2)
        self.assertEqual(sig.counters["too_many_relays"], 3)


class ValueTests(unittest.TestCase):
    def test_roundTrip(self):
        v = rv.encodeRendezvous(b"r" * 32, [("198.18.0.5", 7000), ("2001:db8::5", 7000)])
        self.assertEqual(rv.parseRendezvous(v), (b"r" * 32, [("198.18.0.5", 7000), ("2001:db8::5", 7000)]))
        self.assertLessEqual(len(v), rv.MAX_VALUE)

    @settings(max_examples=400, deadline=None)
    @given(st.binary(max_size=120))
    def test_anyBytesParseOrRejectCleanly(self, data):
        try:
            relayId, addrs = rv.parseRendezvous(data)
        except rv.RendezvousError:
            return
        self.assertEqual(len(relayId), 32)
        self.assertTrue(1 <= len(addrs) <= rv.MAX_RELAY_ADDRESSES)
        self.assertEqual(rv.encodeRendezvous(relayId, addrs), data)
