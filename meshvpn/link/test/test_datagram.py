"""The datagram link: handshake, AEAD, replay window, keepalive, rekey, strict parsing (task.Clock only)."""

from hypothesis import given, settings, strategies as st
from twisted.internet import task
from twisted.trial import unittest

from meshvpn.errors import LinkError
from meshvpn.identity import NodeIdentity
from meshvpn.interfaces import IDatagramLink, IDatagramLinkEndpoint
from meshvpn.link import datagram_wire as wire
from meshvpn.link.datagram import DatagramLinkEndpoint, DatagramLinkSettings
from meshvpn.link.datagram_crypto import ReplayWindow


class FakeNet:
    """Queues datagrams between endpoints; tests choose to deliver, drop, replay or alter them."""

    def __init__(self):
        self.hosts = {}
        self.queue = []
        self.sent = []

    def path(self, src):
        net = self

        class Path:
            def sendDatagram(self, data, addr):
                net.queue.append((src, addr, data))
                net.sent.append((src, addr, data))

        return Path()

    def pump(self, rounds=20):
        for _ in range(rounds):
            queue, self.queue = self.queue, []
            if not queue:
                return
            for src, dst, data in queue:
                host = self.hosts.get(dst)
                if host is not None:
                    host.datagramReceived(data, src)


def pair(**overrides):
    clock = task.Clock()
    net = FakeNet()
    a, b = ("198.18.0.1", 1000), ("198.18.0.2", 2000)
    ids = NodeIdentity.generate(), NodeIdentity.generate()
    eps = []
    for addr, ident in zip((a, b), ids):
        ep = DatagramLinkEndpoint(clock, ident, net.path(addr), DatagramLinkSettings(**overrides))
        net.hosts[addr] = ep
        eps.append(ep)
    return clock, net, eps, ids, (a, b)


def connected(testCase, **overrides):
    clock, net, (ea, eb), ids, (a, b) = pair(**overrides)
    accepted = []
    eb.setLinkAcceptor(accepted.append)
    d = ea.connect(ids[1].nodeId, b)
    net.pump()
    la = testCase.successResultOf(d)
    return clock, net, (ea, eb), la, accepted[0]


class HandshakeTests(unittest.TestCase):
    def test_connectAuthenticatesBothSides(self):
        clock, net, (ea, eb), la, lb = connected(self)
        self.assertTrue(IDatagramLink.providedBy(la))
        self.assertTrue(IDatagramLinkEndpoint.providedBy(ea))
        self.assertEqual(la.peerId, eb.identity.nodeId)
        self.assertEqual(lb.peerId, ea.identity.nodeId)
        got = []
        lb.setPacketReceiver(got.append)
        la.setPacketReceiver(got.append)
        la.sendPacket(b"ping")
        lb.sendPacket(b"pong")
        net.pump()
        self.assertEqual(sorted(got), [b"ping", b"pong"])

    def test_wrongPeerRefused(self):
        """The initiator only accepts the node id it asked for."""
        clock, net, (ea, eb), ids, (a, b) = pair(handshakeTimeout=2.0)
        d = ea.connect(NodeIdentity.generate().nodeId, b)
        net.pump()
        self.assertNoResult(d)
        self.assertGreaterEqual(ea.counters["handshake_failed"], 1)
        for _ in range(5):
            clock.advance(0.5)
            net.pump()
        self.failureResultOf(d, LinkError)

    def test_handshakeSurvivesLoss(self):
        """INIT, RESP and FINISH are retransmitted; a lost FINISH is recovered."""
        clock, net, (ea, eb), ids, (a, b) = pair()
        d = ea.connect(ids[1].nodeId, b)
        net.queue.clear()  # INIT lost
        clock.advance(0.5)
        net.pump(rounds=1)  # INIT arrives, RESP queued
        net.queue.clear()  # RESP lost
        clock.advance(0.5)
        net.pump(rounds=1)  # INIT again -> same RESP resent
        self.assertEqual(eb.counters["resp_resent"], 1)
        net.pump(rounds=1)  # RESP arrives; FINISH queued
        la = self.successResultOf(d)
        net.queue.clear()  # FINISH lost
        clock.advance(0.5)
        net.pump()
        self.assertEqual(len(eb.links()), 1)
        got = []
        eb.links()[0].setPacketReceiver(got.append)
        la.sendPacket(b"x")
        net.pump()
        self.assertEqual(got, [b"x"])

    def test_timeout(self):
        clock, net, (ea, eb), ids, (a, b) = pair(handshakeTimeout=3.0)
        d = ea.connect(ids[1].nodeId, ("198.18.9.9", 1))
        clock.pump([0.5] * 8)
        self.failureResultOf(d, LinkError)
        self.assertEqual(ea._pending, {})

    def test_initRateLimited(self):
        clock, net, (ea, eb), ids, (a, b) = pair(initRatePerSource=2.0)
        init = wire.encodeInit(7, bytes(range(32)))
        for i in range(10):
            eb.datagramReceived(wire.encodeInit(i, bytes([9] * 32)), a)
        self.assertEqual(eb.counters["handshake_ratelimited"], 6)
        self.assertLessEqual(len(eb._pending), 4)
        del init

    def test_initSourcesBounded(self):
        clock, net, (ea, eb), ids, (a, b) = pair(maxInitSources=8)
        for i in range(100):
            eb.datagramReceived(wire.encodeInit(i, bytes([9] * 32)), (f"198.18.9.{i}", 1))
        self.assertEqual(len(eb._perSource), 8)

    def test_noAmplification(self):
        """A RESP is never larger than the INIT that caused it."""
        self.assertLessEqual(wire.RESP_LEN, wire.INIT_LEN)


class TransportTests(unittest.TestCase):
    def test_burstOneListToThePath(self):
        """L{DatagramLink.sendPackets} hands the path one list; every packet arrives, in order, each once."""
        clock, net, (ea, eb), la, lb = connected(self)
        bursts = []

        class BurstPath:
            def sendDatagram(self, data, addr):
                raise AssertionError("a burst goes as one list")

            def sendDatagrams(self, datagrams, addr):
                bursts.append(len(datagrams))
                for d in datagrams:
                    net.queue.append((la.path.addr, addr, d))

        got = []
        lb.setPacketReceiver(got.append)
        la.path = BurstPath()
        la.path.addr = ("198.18.0.1", 1000)
        packets = [bytes([i]) * (100 + i) for i in range(40)] + [b"x" * 70000]  # the last one is too big
        la.sendPackets(packets)
        net.pump()
        self.assertEqual(bursts, [40])
        self.assertEqual(got, packets[:40])
        self.assertEqual(la.stats["tx"], 40)
        self.assertEqual(la.stats["tx_dropped"], 1)

    def test_burstWithoutBatchPathAndClosed(self):
        """A path without C{sendDatagrams} (a TURN allocation) gets them one by one; a closed link drops them."""
        clock, net, (ea, eb), la, lb = connected(self)
        got = []
        lb.setPacketReceiver(got.append)
        la.sendPackets([b"a", b"b"])
        net.pump()
        self.assertEqual(got, [b"a", b"b"])
        la.close()
        la.sendPackets([b"c"])
        net.pump()
        self.assertEqual(got, [b"a", b"b"])

    def test_replayDropped(self):
        clock, net, (ea, eb), la, lb = connected(self)
        got = []
        lb.setPacketReceiver(got.append)
        la.sendPacket(b"once")
        src, dst, data = net.queue[-1]
        net.pump()
        eb.datagramReceived(data, src)
        self.assertEqual(got, [b"once"])
        self.assertEqual(eb.counters["replayed"], 1)

    def test_forgeryDropped(self):
        clock, net, (ea, eb), la, lb = connected(self)
        got = []
        lb.setPacketReceiver(got.append)
        la.sendPacket(b"hello")
        src, dst, data = net.queue.pop()
        bad = data[:-1] + bytes([data[-1] ^ 1])
        eb.datagramReceived(bad, src)
        # A forged counter far ahead must not move the window either.
        ahead = data[:5] + (2**40).to_bytes(8, "big") + data[13:]
        eb.datagramReceived(ahead, src)
        self.assertEqual(eb.counters["forged"], 2)
        eb.datagramReceived(data, src)
        self.assertEqual(got, [b"hello"])

    def test_reorderInsideWindow(self):
        clock, net, (ea, eb), la, lb = connected(self)
        got = []
        lb.setPacketReceiver(got.append)
        for i in range(5):
            la.sendPacket(b"%d" % i)
        net.queue.reverse()
        net.pump()
        self.assertEqual(sorted(got), [b"0", b"1", b"2", b"3", b"4"])

    def test_followsRebinding(self):
        clock, net, (ea, eb), la, lb = connected(self)
        la.sendPacket(b"a")
        src, dst, data = net.queue.pop()
        newSrc = ("198.18.0.1", 4444)
        eb.datagramReceived(data, newSrc)
        self.assertEqual(lb.peerAddress, newSrc)

    def test_keepaliveAndDeath(self):
        clock, net, (ea, eb), la, lb = connected(self, keepaliveInterval=10.0, deadAfter=30.0)
        before = len(net.sent)
        for _ in range(8):
            clock.advance(5)
            net.pump()
        self.assertGreater(len(net.sent), before)  # keepalives flowed both ways
        self.assertFalse(la.closed)
        closed = []
        la.whenClosed().addCallback(closed.append)
        net.hosts.clear()  # the peer vanishes
        for _ in range(8):
            clock.advance(5)
            net.queue.clear()
        self.assertEqual(closed, ["timeout"])
        self.assertEqual(ea.links(), [])

    def test_closeOnce(self):
        clock, net, (ea, eb), la, lb = connected(self)
        early = la.whenClosed()
        self.assertEqual(la.status()["address"], "198.18.0.2:2000")
        la.close("bye")
        la.close("again")
        self.assertTrue(la.closed)
        self.assertEqual(self.successResultOf(early), "bye")
        self.assertEqual(self.successResultOf(la.whenClosed()), "bye")
        before = len(net.sent)
        la.sendPacket(b"late")
        self.assertEqual(len(net.sent), before)  # a closed link drops, never raises
        self.assertEqual(la.stats["tx_dropped"], 1)
        self.assertIsNone(ea.linkTo(lb.peerId))

    def test_rekeyAfterMessages(self):
        clock, net, (ea, eb), la, lb = connected(self, rekeyAfterMessages=5)
        got = []
        lb.setPacketReceiver(got.append)
        first = la.current
        for i in range(20):
            la.sendPacket(b"%d" % i)
            net.pump()
        self.assertIsNot(la.current, first)
        self.assertGreaterEqual(ea.counters["rekeys"], 1)
        self.assertEqual(len(got), 20)
        self.assertEqual(len(eb.links()), 1)
        # Old sessions are forgotten: at most current + previous per side.
        self.assertLessEqual(len(ea._sessions), 2)

    def test_rekeyAfterTime(self):
        clock, net, (ea, eb), la, lb = connected(self, rekeyAfterTime=30.0, keepaliveInterval=10.0)
        first = la.current
        for _ in range(10):
            clock.advance(5)
            net.pump()
        self.assertIsNot(la.current, first)
        got = []
        la.setPacketReceiver(got.append)
        lb.sendPacket(b"after")
        net.pump()
        self.assertEqual(got, [b"after"])


class ReplayWindowTests(unittest.TestCase):
    @given(st.lists(st.integers(min_value=0, max_value=5000), max_size=200))
    @settings(max_examples=200, deadline=None)
    def test_matchesModel(self, counters):
        """Accepts a counter iff unseen and within 2048 of the highest seen."""
        w = ReplayWindow(2048)
        seen = set()
        top = -1
        for c in counters:
            expected = c not in seen and (c > top or top - c < 2048)
            self.assertEqual(w.check(c), expected)
            if expected:
                w.mark(c)
                seen.add(c)
                top = max(top, c)


class ParserTests(unittest.TestCase):
    @given(st.binary(max_size=300))
    @settings(max_examples=500, deadline=None)
    def test_parseNeverCrashes(self, data):
        try:
            msg = wire.parse(bytes([0x90 + (data[0] % 14) if data else 0x90]) + data[1:])
        except wire.LinkParseError:
            return
        self.assertIn(msg[0], wire.LINK_TYPES)

    @given(st.binary(max_size=300))
    @settings(max_examples=300, deadline=None)
    def test_endpointCountsGarbage(self, data):
        clock, net, (ea, eb), ids, (a, b) = pair()
        eb.datagramReceived(bytes([0x90 + (data[0] % 14) if data else 0x93]) + data[1:], a)
        self.assertEqual(eb.links(), [])

    def test_strictLengths(self):
        init = wire.encodeInit(1, bytes(32))
        wire.parse(init)
        for bad in (init[:-1], init + b"\0", init[:-1] + b"\1", b"\x9a" + init[1:], b""):
            self.assertRaises(wire.LinkParseError, wire.parse, bad)


class RekeyLossTests(unittest.TestCase):
    def test_lostFinishDuringRekeyLosesNothing(self):
        """During a rekey the old session carries traffic until the new one is confirmed."""
        clock, net, (ea, eb), la, lb = connected(self, rekeyAfterMessages=3)
        got = []
        lb.setPacketReceiver(got.append)
        first = la.current
        for i in range(3):
            la.sendPacket(b"%d" % i)
        net.pump(rounds=1)  # data delivered; B's side has the INIT queued
        net.pump(rounds=1)  # RESP back
        net.queue = [q for q in net.queue if q[2][0] != wire.FINISH]  # FINISH lost
        net.pump()
        la.sendPacket(b"during")
        net.pump()
        self.assertIn(b"during", got)
        self.assertIs(la.current, first)
        clock.advance(0.5)  # FINISH resent, confirmed
        net.pump()
        la.sendPacket(b"after")
        net.pump()
        self.assertIsNot(la.current, first)
        self.assertEqual(got[-1], b"after")
        self.assertEqual(eb.counters["unknown_index"], 0)


class BenchTests(unittest.TestCase):
    def test_benchRuns(self):
        from meshvpn.tools.benchdatagram import measure

        result = measure(count=50, size=100)
        self.assertEqual(result["received"], 50)
        self.assertEqual(set(result), {"packets", "packet_bytes", "received", "us_per_packet", "mbit_per_s"})


class CookieTests(unittest.TestCase):
    def test_underLoadOnlyProvenInitiatorsCostCrypto(self):
        """
        With the global INIT budget half spent, INITs without a cookie get a
        21-byte COOKIE (no DH, no signature); a real initiator resends INIT
        with it and completes, spoofers never see theirs.
        """
        clock, net, (ea, eb), ids, (a, b) = pair(initRateGlobal=2.0)
        spoofers = [("198.18.7.%d" % i, 1000) for i in range(1, 9)]
        for i, src in enumerate(spoofers):
            eb.datagramReceived(wire.encodeInit(i, bytes([i + 1] * 32)), src)
        completedBySpoofers = len(eb._pending)
        self.assertLessEqual(completedBySpoofers, 3)
        self.assertGreaterEqual(eb.counters["cookie_sent"], 5)
        cookieReplies = [q for q in net.sent if q[2][0] == wire.COOKIE]
        self.assertTrue(all(len(q[2]) == wire.COOKIE_MSG_LEN < wire.INIT_LEN for q in cookieReplies))
        net.queue.clear()
        d = ea.connect(ids[1].nodeId, b)
        net.pump()
        self.successResultOf(d)
        self.assertEqual(ea.counters["cookie_received"], 1)
        self.assertEqual(len(eb.links()), 1)
        # The global budget was not spent by the proven handshake.
        self.assertEqual(len(eb._pending), completedBySpoofers)

    def test_cookieBoundToAddress(self):
        clock, net, (ea, eb), ids, (a, b) = pair(initRateGlobal=2.0)
        for i in range(4):
            eb.datagramReceived(wire.encodeInit(i, bytes([9] * 32)), ("198.18.7.1", 1))
        net.sent.clear()
        eb.datagramReceived(wire.encodeInit(77, bytes([9] * 32)), a)
        (cookieMsg,) = [q[2] for q in net.sent if q[2][0] == wire.COOKIE]
        cookie = wire.parse(cookieMsg)[2]
        before = eb.counters["cookie_sent"]
        # Replayed from another address, or with another index: not proof.
        eb.datagramReceived(wire.encodeInit(77, bytes([9] * 32), cookie), ("198.18.7.2", 1))
        eb.datagramReceived(wire.encodeInit(78, bytes([9] * 32), cookie), a)
        self.assertEqual(eb.counters["cookie_sent"], before + 2)
        # From the right address and index it is.
        pending = len(eb._pending)
        eb.datagramReceived(wire.encodeInit(77, bytes([9] * 32), cookie), a)
        self.assertEqual(len(eb._pending), pending + 1)
        # After two rotations it is stale.
        clock.advance(241)
        eb._global.consume(eb._global.available())  # still under load
        eb.datagramReceived(wire.encodeInit(77, bytes([8] * 32), cookie), a)
        self.assertEqual(eb.counters["cookie_sent"], before + 3)


class HybridHandshakeTests(unittest.TestCase):
    """X25519 + ML-KEM-768 link handshakes (INIT_PQ / RESP_PQ) and the downgrades they refuse."""

    def setUp(self):
        from meshvpn import hybridkem

        if not hybridkem.available():
            raise unittest.SkipTest("ML-KEM-768 is not available here")

    def kinds(self, net):
        return [data[0] for _, _, data in net.sent]

    def test_hybridByDefault(self):
        clock, net, (ea, eb), la, lb = connected(self)
        self.assertTrue(la.postQuantum and lb.postQuantum)
        self.assertTrue(la.status()["post_quantum"])
        kinds = self.kinds(net)
        self.assertEqual(kinds[:3], [wire.INIT_PQ, wire.RESP_PQ, wire.FINISH])
        sizes = {data[0]: len(data) for _, _, data in net.sent}
        self.assertEqual((sizes[wire.INIT_PQ], sizes[wire.RESP_PQ]), (wire.INIT_PQ_LEN, wire.RESP_PQ_LEN))

    def test_noAmplificationNoFragmentation(self):
        self.assertLessEqual(wire.RESP_PQ_LEN, wire.INIT_PQ_LEN)
        self.assertLessEqual(wire.INIT_PQ_LEN + 20 + 8, 1280)  # with IPv4 + UDP headers: within 1,280
        self.assertLessEqual(wire.INIT_PQ_LEN + 40 + 8, 1500)  # with IPv6: within Ethernet's MTU (not 1,280)

    def test_classicWhenDisabled(self):
        clock, net, (ea, eb), la, lb = connected(self, postQuantum=False)
        self.assertFalse(la.postQuantum or lb.postQuantum)
        self.assertEqual(self.kinds(net)[:2], [wire.INIT, wire.RESP])

    def test_fallbackForPeerWithoutKEM(self):
        """A peer that ignores INIT_PQ gets a classic INIT after a few tries; the link says it is classic."""
        clock, net, (ea, eb), ids, (a, b) = pair()
        eb.settings.postQuantum = False
        d = ea.connect(ids[1].nodeId, b)
        for _ in range(8):
            net.pump()
            clock.advance(0.5)
        net.pump()
        la = self.successResultOf(d)
        self.assertFalse(la.postQuantum)
        self.assertEqual(ea.counters["pq_fallback"], 1)
        self.assertGreaterEqual(eb.counters["pq_unsupported"], 4)

    def test_knownHybridPeerNeverFallsBack(self):
        """
        Once a peer has done the hybrid handshake, an attacker who drops its
        INIT_PQs (to force a classic handshake it could record and break
        later) only stops the link: no classic INIT is ever sent.
        """
        clock, net, (ea, eb), la, lb = connected(self, handshakeTimeout=4.0)
        la.close()
        net.sent.clear()
        hosts, net.hosts = net.hosts, {}  # everything is dropped now
        d = ea.connect(eb.identity.nodeId, ("198.18.0.2", 2000))
        for _ in range(10):
            clock.advance(0.5)
            net.queue.clear()
        self.failureResultOf(d, LinkError)
        self.assertEqual(set(self.kinds(net)), {wire.INIT_PQ})
        self.assertEqual(ea.counters["pq_fallback"], 0)

    def test_strippedInitRefused(self):
        """
        A man in the middle rewrites INIT_PQ as a classic INIT (same
        ephemeral) so the responder answers classic: the initiator refuses
        the RESP as a downgrade and no link comes up from it.
        """
        clock, net, (ea, eb), ids, (a, b) = pair(handshakeTimeout=2.0)
        d = ea.connect(ids[1].nodeId, b)
        src, dst, init = net.queue.pop()
        _, index, eph, cookie, ek = wire.parse(init)
        self.assertIsNotNone(ek)
        eb.datagramReceived(wire.encodeInit(index, eph, cookie), src)
        src, dst, resp = net.queue.pop()
        self.assertEqual(resp[0], wire.RESP)
        ea.datagramReceived(resp, src)
        self.assertEqual(ea.counters["handshake_failed"], 1)
        self.assertNoResult(d)
        self.assertEqual(ea.links(), [])

    def test_tamperedCiphertextRefused(self):
        clock, net, (ea, eb), ids, (a, b) = pair(handshakeTimeout=2.0)
        d = ea.connect(ids[1].nodeId, b)
        net.pump(rounds=1)
        src, dst, resp = net.queue.pop()
        self.assertEqual(resp[0], wire.RESP_PQ)
        bad = bytearray(resp)
        bad[wire.RESP_HEADER_LEN + 10] ^= 1
        ea.datagramReceived(bytes(bad), src)
        self.assertEqual(ea.counters["handshake_failed"], 1)
        self.assertNoResult(d)

    def test_strictPqLengths(self):
        init = wire.encodeInit(1, bytes(32), ek=bytes(wire.EK_LEN))
        self.assertEqual(len(init), wire.INIT_PQ_LEN)
        self.assertEqual(wire.parse(init)[4], bytes(wire.EK_LEN))
        self.assertRaises(wire.LinkParseError, wire.parse, init[:-1])
        self.assertRaises(wire.LinkParseError, wire.parse, init[:-1] + b"\x01")
        resp = wire.encodeRespHeader(1, 2, bytes(32), bytes(wire.CT_LEN)) + bytes(wire.IDENTITY_BLOB_LEN)
        self.assertEqual(wire.parse(resp)[6], bytes(wire.CT_LEN))
        self.assertRaises(wire.LinkParseError, wire.parse, resp + b"\0")
