"""TURN over a stream for UDP-blocked hosts, in memory on task.Clock: the proof, the relayed socket, and the abuse."""

import struct

from hypothesis import given, settings, strategies as st
from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import DatagramProtocol
from twisted.test import iosim
from twisted.trial import unittest

from meshvpn.identity import NodeIdentity
from meshvpn.nat import stun
from meshvpn.nat import turn_stream as ts
from meshvpn.nat.endpoint import StunEndpoint
from meshvpn.nat.test.test_turn import Collector, Net
from meshvpn.nat.turn_client import TurnAllocation
from meshvpn.nat.turn_server import TurnLimits, TurnServer
from meshvpn.nat.turn_stream_client import RelayedSocket, TurnStreamClientProtocol
from meshvpn.nat.turn_stream_server import StreamSource, TurnStreamFactory, TurnStreamFront, TurnStreamLimits
from meshvpn.udpmux import DatagramMultiplexer, STUN_BYTES

RELAY = "198.18.0.1"
TURN_UDP, TURN_TCP, LINK_PORT = (RELAY, 3478), (RELAY, 3478), (RELAY, 7000)
PEER = ("198.18.7.7", 4000)
SESSION = b"E" * ts.EXPORTER_LEN  # stands for the TLS exporter: the same at both ends of one session


def session(value=SESSION):
    return lambda transport: value


class Sink(DatagramProtocol):
    def __init__(self):
        self.got = []

    def datagramReceived(self, data, addr):
        self.got.append((data, addr))


class World:
    """A relay (TURN on UDP and on a stream), a UDP peer, and stream clients joined by in-memory pipes."""

    def __init__(self, testCase, limits=None, streamLimits=None):
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)  # REST credentials carry a wall-clock expiry
        self.net = Net()
        self.secret = b"s" * 32
        smux = DatagramMultiplexer()
        self.net.attach(TURN_UDP, smux)
        sep = StunEndpoint(self.clock, smux.sendDatagram)
        smux.register("stun", STUN_BYTES, sep, accept=stun.isStun)
        ports = iter(range(50000, 50100))
        front = TurnStreamFront(self.clock, sep, smux.sendDatagram)
        self.server = TurnServer(self.clock, front, front.send, RELAY, authSecret=self.secret, limits=limits,
                                 listenUDP=lambda port, proto, interface: self.net.attach((interface, next(ports)), proto),
                                 linkAddresses=lambda: [LINK_PORT])
        self.server.registerChannelData(smux)
        self.relayIdentity = NodeIdentity.generate()
        self.factory = TurnStreamFactory(self.clock, front, self.server, self.secret, self.relayIdentity, streamLimits,
                                         binding=session(), handshake=False)
        self.link = self.net.attach(LINK_PORT, Collector()) and self.net.hosts[LINK_PORT]
        self.peer = Collector()
        self.net.attach(PEER, self.peer)
        self.pumps = []
        self._port = 40000
        testCase.addCleanup(self.server.stop)

    def connect(self, identity=None, host="198.18.9.9", relayId=None, clientSession=SESSION):
        """A stream from C{host}; @return: C{(clientProtocol, serverProtocol, pump)}."""
        self._port += 1
        client = TurnStreamClientProtocol(self.clock, identity or NodeIdentity.generate(), TURN_TCP,
                                          relayId=relayId or self.relayIdentity.nodeId, binding=session(clientSession))
        server = self.factory.buildProtocol(None)
        cAddr, sAddr = IPv4Address("TCP", host, self._port), IPv4Address("TCP", *TURN_TCP)
        pump = iosim.connect(server, iosim.FakeTransport(server, True, sAddr, cAddr),
                             client, iosim.FakeTransport(client, False, cAddr, sAddr), greet=False)
        self.pumps.append(pump)
        self.flush()
        return client, server, pump

    def flush(self):
        for _ in range(20):
            hadDatagrams = bool(self.net.queue)
            self.net.pump()
            moved = False
            for p in self.pumps:
                moved = p.pump() or moved
            if not moved and not hadDatagrams and not self.net.queue:
                return

    def wait(self, d):
        out = []
        d.addBoth(out.append)
        for _ in range(50):
            if out:
                break
            self.flush()
        self.assertCalled = bool(out)
        return out[0] if out else None

    def allocate(self, client):
        creds = self.wait(client.ready)
        alloc = TurnAllocation(self.clock, client.stun, client.sendFrame, TURN_TCP, creds[1], creds[2])
        result = self.wait(alloc.allocate(600))
        return alloc, result

    def socket(self, identity=None, host="198.18.9.9"):
        client, server, pump = self.connect(identity, host)
        alloc, result = self.allocate(client)
        assert result is alloc, result
        sink = Sink()
        return RelayedSocket(self.clock, alloc, sink, client), sink, client, server


class StreamAllocationTests(unittest.TestCase):
    def test_relayedSocketCarriesBothWays(self):
        """A UDP-blocked host writes to a peer through its stream allocation; the peer's answer comes back."""
        w = World(self)
        sock, sink, _, _ = w.socket()
        self.assertEqual(sock.getHost().host, RELAY)
        sock.write(b"\x90hello", PEER)
        w.flush()
        self.assertEqual(w.peer.got, [(b"\x90hello", sock.relayedAddress)])
        w.net.queue.append((PEER, sock.relayedAddress, b"\x91back"))
        w.flush()
        self.assertEqual(sink.got, [(b"\x91back", PEER)])

    def test_allocationOutlivesItsFirstLifetime(self):
        """Refreshes (and permission refreshes) keep a stream allocation alive well past 600 s, stale nonces and all."""
        w = World(self)
        sock, sink, _, _ = w.socket()
        sock.write(b"\x90x", PEER)
        w.flush()
        for _ in range(40):  # 2000 s
            w.clock.advance(50)
            w.flush()
        self.assertEqual(len(w.server.allocations), 1)
        w.net.queue.append((PEER, sock.relayedAddress, b"\x91late"))
        w.flush()
        self.assertEqual(sink.got, [(b"\x91late", PEER)])

    def test_strangerCannotSendIn(self):
        """Only IPs the host wrote to get through its relayed address (a permission each)."""
        w = World(self)
        sock, sink, _, _ = w.socket()
        w.net.queue.append((("198.18.8.8", 1), sock.relayedAddress, b"\x90spam"))
        w.flush()
        self.assertEqual(sink.got, [])
        self.assertGreater(w.server.counters["no_permission"], 0)

    def test_linkSocketTakesOnlyLinkBytes(self):
        """Through an allocation the relay's own link socket is reachable with link bytes, nothing else."""
        w = World(self)
        sock, _, _, _ = w.socket()
        for data in (b"\x90link", b"\x00\x01stun", b"\x80dht"):
            sock.write(data, LINK_PORT)
        sock.write(b"\x90turn", TURN_UDP)  # never the TURN socket itself
        w.flush()
        self.assertEqual([d for d, _ in w.link.got], [b"\x90link"])
        self.assertGreaterEqual(w.server.counters["forbidden_peer"], 3)

    def test_allocationToAllocation(self):
        """Two UDP-blocked hosts reach each other relayed address to relayed address."""
        w = World(self)
        a, sinkA, _, _ = w.socket(host="198.18.9.1")
        b, sinkB, _, _ = w.socket(host="198.18.9.2")
        a.write(b"\x90a->b", b.relayedAddress)
        b.write(b"\x90b->a", a.relayedAddress)
        w.flush()
        a.write(b"\x90again", b.relayedAddress)  # b's permission for the relay's IP is in place now
        w.flush()
        self.assertIn((b"\x90again", a.relayedAddress), sinkB.got)
        self.assertIn((b"\x90b->a", b.relayedAddress), sinkA.got)

    def test_closedStreamReleasesAllocation(self):
        w = World(self)
        sock, _, client, _ = w.socket()
        self.assertEqual(len(w.server.allocations), 1)
        client.transport.loseConnection()
        w.flush()
        self.assertEqual(w.server.allocations, {})
        self.assertNotIn(sock.relayedAddress, w.net.hosts)

    def test_channelDataOverStream(self):
        """A bound channel's ChannelData is padded on the stream and unpadded at each end."""
        w = World(self)
        sock, sink, _, _ = w.socket()
        sock.write(b"\x90x", PEER)
        w.flush()
        self.assertEqual(w.wait(sock.allocation.channelBind(PEER)), 0x4000)
        sock.write(b"\x90abcde", PEER)  # 6 bytes: 2 bytes of padding on the stream
        w.net.queue.append((PEER, sock.relayedAddress, b"\x91xyz"))
        w.flush()
        self.assertEqual(w.peer.got[-1][0], b"\x90abcde")
        self.assertEqual(sink.got, [(b"\x91xyz", PEER)])
        self.assertEqual(sock.allocation.counters["tx_channel"], 1)


class StreamAbuseTests(unittest.TestCase):
    def test_badProofIsClosedWithoutCredentials(self):
        # No client: answer the hello with a proof signed by nobody.
        w2 = World(self)
        raw = w2.factory.buildProtocol(None)
        t = iosim.FakeTransport(raw, True, IPv4Address("TCP", *TURN_TCP), IPv4Address("TCP", "198.18.9.3", 1))
        raw.makeConnection(t)
        raw.dataReceived(bytes(96))
        self.assertTrue(t.disconnecting or t.disconnected)
        self.assertEqual(w2.factory.counters["bad_proof"], 1)
        self.assertNotIn(b"\x07", t.getOutBuffer()[ts.HELLO_LEN:ts.HELLO_LEN + 3])
        self.assertEqual(w2.factory.counters["proved"], 0)

    def test_silentStreamTimesOut(self):
        w = World(self)
        raw = w.factory.buildProtocol(None)
        t = iosim.FakeTransport(raw, True, IPv4Address("TCP", *TURN_TCP), IPv4Address("TCP", "198.18.9.3", 1))
        raw.makeConnection(t)
        w.clock.advance(TurnStreamLimits.proofTimeout + 1)
        self.assertTrue(t.disconnecting or t.disconnected)
        self.assertEqual(w.factory.counters["timeout"], 1)

    def test_provedButNeverAllocatingTimesOut(self):
        w = World(self)
        client, server, pump = w.connect()
        w.wait(client.ready)
        w.clock.advance(TurnStreamLimits.allocateTimeout + 1)
        w.flush()
        self.assertEqual(w.factory.counters["timeout"], 1)
        self.assertEqual(w.factory.connections, set())

    def test_allocatedStreamDoesNotTimeOut(self):
        w = World(self)
        w.socket()
        w.clock.advance(TurnStreamLimits.allocateTimeout + 1)
        self.assertEqual(len(w.factory.connections), 1)

    def test_streamWithoutItsAllocationIsClosed(self):
        """Allocate, release (REFRESH 0), keep the stream: it does not keep its slot."""
        w = World(self)
        sock, _, _, _ = w.socket()
        w.wait(sock.allocation.release())
        self.assertEqual(w.server.allocations, {})
        w.clock.advance(2 * TurnStreamLimits.allocateTimeout + 1)
        w.flush()
        self.assertEqual(w.factory.connections, set())

    def test_perSourceAndTotalLimits(self):
        w = World(self, streamLimits=TurnStreamLimits(perSourceIP=2, maxConnections=3))
        refused = []
        for host in ("198.18.9.1",) * 3 + ("198.18.9.2", "198.18.9.3"):
            client, _, _ = w.connect(host=host)
            client.ready.addErrback(refused.append)
        self.assertEqual(len(refused), 2)
        self.assertEqual(w.factory.counters["refused_per_ip"], 1)
        self.assertEqual(w.factory.counters["refused_total"], 1)
        self.assertEqual(len(w.factory.connections), 3)

    def test_malformedFrameClosesOnlyThatStream(self):
        w = World(self)
        good, _, _, _ = w.socket(host="198.18.9.1")
        client, server, _ = w.connect(host="198.18.9.2")
        w.wait(client.ready)
        client.transport.write(b"\x80\x00\x00\x04junk")
        w.flush()
        self.assertEqual(w.factory.counters["malformed"], 1)
        self.assertEqual(len(w.factory.connections), 1)
        good.write(b"\x90still", PEER)
        w.flush()
        self.assertEqual(w.peer.got[-1][0], b"\x90still")

    def test_unroutablePeerDoesNotKillTheStream(self):
        """The relayed socket's sendto failing (no route to a candidate) loses that datagram, not the stream."""
        w = World(self)
        sock, _, client, _ = w.socket()
        alloc = next(iter(w.server.allocations.values()))
        write = alloc.port.write

        def unreachable(data, addr):
            if addr[0] == "198.19.1.2":
                raise OSError(101, "Network is unreachable")
            return write(data, addr)

        alloc.port.write = unreachable
        sock.write(b"\x90probe", ("198.19.1.2", 4000))
        sock.write(b"\x90fine", PEER)
        w.flush()
        self.assertEqual(w.server.counters["send_failed"], 1)
        self.assertEqual(w.peer.got, [(b"\x90fine", sock.relayedAddress)])
        self.assertEqual(len(w.factory.connections), 1)

    def test_oversizedFrameRefused(self):
        d = ts.Deframer(maxFrame=1000)
        self.assertRaises(ts.StreamFrameError, d.feed, b"\x40\x00\x10\x00")

    def test_spoofedDatagramsCannotSpeakForAStream(self):
        """A SEND indication over UDP from the stream client's own IP and port is not its allocation's."""
        w = World(self)
        sock, _, client, server = w.socket()
        sock.write(b"\x90x", PEER)
        w.flush()
        before = len(w.peer.got)
        msg = stun.StunMessage(stun.SEND, stun.INDICATION)
        msg.addXorAddress(stun.XOR_PEER_ADDRESS, PEER)
        msg.add(stun.DATA_ATTR, b"\x90spoofed")
        w.net.queue.append((tuple(server.source), TURN_UDP, msg.encode()))
        w.flush()
        self.assertEqual(len(w.peer.got), before)
        self.assertNotEqual(server.source, tuple(server.source))
        self.assertNotIn(tuple(server.source), w.server.allocations)

    def test_unreadStreamDropsInsteadOfQueueing(self):
        """A client that stops reading: what the relay would write to it is dropped (memory stays bounded)."""
        w = World(self)
        sock, sink, client, server = w.socket()
        sock.write(b"\x90x", PEER)
        w.flush()
        server.pauseProducing()
        queued = len(b"".join(server.transport.stream))
        for _ in range(100):
            w.net.queue.append((PEER, sock.relayedAddress, b"\x91" * 1000))
        w.net.pump()
        self.assertEqual(w.factory.counters["dropped_unread"], 100)
        self.assertEqual(len(b"".join(server.transport.stream)), queued)

    def test_quotaCountsANodesStreams(self):
        """One node id holds at most perUser allocations, however many streams it opens."""
        w = World(self)
        me = NodeIdentity.generate()
        w.socket(identity=me, host="198.18.9.1")
        w.socket(identity=me, host="198.18.9.2")
        client, _, _ = w.connect(identity=me, host="198.18.9.3")
        alloc, result = w.allocate(client)
        self.assertIn("486", str(result))
        self.assertEqual(w.server.counters["quota"], 1)

    def test_byteBudgetPerAllocation(self):
        w = World(self, limits=TurnLimits(byteBudget=3000))
        sock, _, _, _ = w.socket()
        for _ in range(5):
            sock.write(b"\x90" + bytes(999), PEER)
        w.flush()
        self.assertEqual(len(w.peer.got), 3)
        self.assertEqual(w.server.counters["over_limit"], 2)

    def test_streamSourceNeverEqualsAnAddress(self):
        s = StreamSource("198.18.9.9", 1, None)
        self.assertNotEqual(s, ("198.18.9.9", 1))
        self.assertNotEqual(hash(s), hash(("198.18.9.9", 1)))
        self.assertEqual(s, StreamSource("198.18.9.9", 1, object()))


def _frames():
    stunFrame = st.binary(max_size=40).map(lambda b: b + bytes(-len(b) % 4)).map(
        lambda body: struct.pack("!HHI", 0x0016, len(body), stun.MAGIC_COOKIE) + bytes(12) + body)
    channel = st.tuples(st.integers(0x4000, 0x4FFF), st.binary(max_size=40)).map(
        lambda t: struct.pack("!HH", t[0], len(t[1])) + t[1])
    return st.lists(st.one_of(stunFrame, channel), max_size=6)


class ParserTests(unittest.TestCase):
    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=300), st.lists(st.integers(1, 64), max_size=10))
    def test_deframerOnAnyBytes(self, data, cuts):
        """Any bytes, cut anywhere: frames or StreamFrameError, and never more than one frame held."""
        d = ts.Deframer(maxFrame=200)
        pos = 0
        try:
            for n in cuts + [len(data)]:
                for frame in d.feed(data[pos : pos + n]):
                    self.assertIn(frame[0] >> 6 == 0 or frame[0] in ts.CHANNEL_FIRST, (True,))
                pos += n
        except ts.StreamFrameError:
            return
        self.assertLessEqual(d.buffered, 200 + 64)

    @settings(max_examples=200, deadline=None)
    @given(_frames(), st.lists(st.integers(1, 17), min_size=1, max_size=30))
    def test_framesSurviveAnyCutting(self, frames, cuts):
        """Valid frames, padded as on a stream and cut into arbitrary pieces, come out whole and unpadded."""
        stream = b"".join(ts.padChannelData(f) if f[0] in ts.CHANNEL_FIRST else f for f in frames)
        d, out, pos, i = ts.Deframer(), [], 0, 0
        while pos < len(stream):
            n = cuts[i % len(cuts)]
            out += d.feed(stream[pos : pos + n])
            pos, i = pos + n, i + 1
        self.assertEqual(out, frames)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=120))
    def test_preambleParsersRejectCleanly(self, data):
        for parse in (ts.parseHello, ts.parseProof, ts.parseCredsFrame):
            try:
                parse(data)
            except ts.StreamFrameError:
                pass

    def test_credsRoundTrip(self):
        frame = ts.encodeCredsFrame(600, "1:ab", "pw==")
        self.assertEqual(ts.parseCredsFrame(frame), (600, "1:ab", "pw=="))
        hello = ts.encodeHello(bytes(range(32)), b"k" * 32, b"s" * 64)
        self.assertEqual(ts.parseHello(hello), (bytes(range(32)), b"k" * 32, b"s" * 64))
        self.assertRaises(ts.StreamFrameError, ts.parseHello, b"MVT1" + hello[4:])


class ManInTheMiddleTests(unittest.TestCase):
    """
    An attacker between client and relay terminates TLS on both sides: the
    client's session has exporter A, the relay's B.  It can forward, rewrite
    or forge the hello; it must neither get an allocation with the client's
    proof nor pass for a relay the client pinned.
    """

    A, B = b"A" * ts.EXPORTER_LEN, SESSION

    def _relaySide(self, w):
        raw = w.factory.buildProtocol(None)
        t = iosim.FakeTransport(raw, True, IPv4Address("TCP", *TURN_TCP), IPv4Address("TCP", "198.18.66.6", 1))
        raw.makeConnection(t)
        return raw, t, t.getOutBuffer()  # (which empties it)

    def _clientSide(self, relayId):
        client = TurnStreamClientProtocol(task.Clock(), NodeIdentity.generate(), TURN_TCP, relayId=relayId,
                                          binding=session(self.A))
        t = iosim.FakeTransport(client, False, IPv4Address("TCP", "198.18.9.9", 2), IPv4Address("TCP", *TURN_TCP))
        client.makeConnection(t)
        return client, t

    def test_forwardedHelloIsRefusedByTheClient(self):
        """The relay's own hello, forwarded: signed over B, the client checks A, sends nothing."""
        w = World(self)
        _, _, hello = self._relaySide(w)
        client, t = self._clientSide(w.relayIdentity.nodeId)
        client.dataReceived(hello)
        self.assertIn("does not match this TLS session", self.failureResultOf(client.ready).getErrorMessage())
        self.assertFalse(t.getOutBuffer())
        self.assertTrue(t.disconnecting or t.disconnected)

    def test_attackerCannotPassForAPinnedRelay(self):
        w = World(self)
        _, _, hello = self._relaySide(w)
        challenge, _, _ = ts.parseHello(hello)
        mallory = NodeIdentity.generate()
        forged = ts.encodeHello(challenge, mallory.identityPublicKey, mallory.sign(ts.relayMessage(self.A, challenge)))
        client, t = self._clientSide(w.relayIdentity.nodeId)
        client.dataReceived(forged)
        self.assertIn("not the", self.failureResultOf(client.ready).getErrorMessage())
        self.assertFalse(t.getOutBuffer())

    def test_relayedProofGetsNoAllocation(self):
        """
        Even a client that pinned nothing and so answers the attacker's own
        hello: its proof names session A and the attacker, and the relay
        (session B, itself) refuses it: no credentials, stream closed.
        """
        w = World(self)
        raw, relayT, hello = self._relaySide(w)
        challenge, _, _ = ts.parseHello(hello)
        mallory = NodeIdentity.generate()
        forged = ts.encodeHello(challenge, mallory.identityPublicKey, mallory.sign(ts.relayMessage(self.A, challenge)))
        client, clientT = self._clientSide(None)
        client.dataReceived(forged)
        proof = clientT.getOutBuffer()
        self.assertEqual(len(proof), ts.PROOF_LEN)  # the client answered the attacker
        raw.dataReceived(proof)  # ... who relays that answer to the real relay
        self.assertEqual(w.factory.counters["bad_proof"], 1)
        self.assertEqual(w.factory.counters["proved"], 0)
        self.assertFalse(relayT.getOutBuffer())  # no credentials
        self.assertTrue(relayT.disconnecting or relayT.disconnected)
        self.assertEqual(w.server.allocations, {})

    def test_plainTcpIsRefused(self):
        """A relay without TLS under the stream cannot compute a binding: it closes rather than run unbound."""
        w = World(self)
        w.factory.binding = ts.tlsBinding
        raw, t, hello = self._relaySide(w)
        self.assertFalse(hello)
        self.assertTrue(t.disconnecting or t.disconnected)
