"""The link protocol over real TLS in memory: identity binding, versions, timers, backpressure."""

from twisted.internet import task
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test import iosim
from twisted.trial import unittest

from meshvpn.errors import LinkError
from meshvpn.identity import NodeIdentity
from meshvpn.link import auth, wire
from meshvpn.link.protocol import LinkProtocol, LinkSettings, State
from meshvpn.link.tlsctx import sharedLinkTLS
from meshvpn.link.test.helpers import cell, linkPair


def collect(link):
    got = []
    link.setCellReceiver(got.extend)
    return got


def failureOf(d):
    failures = []
    d.addErrback(failures.append)
    return failures[0].value if failures else None


class IdentityBindingTests(unittest.TestCase):
    def test_rightPeer(self):
        """Both ends open, learn each other's node id, and cells flow both ways in batches."""
        client, server, pump, cid, sid = linkPair()
        self.assertIs(client.state, State.OPEN)
        self.assertIs(server.state, State.OPEN)
        self.assertEqual(client.peerId, sid.nodeId)
        self.assertEqual(server.peerId, cid.nodeId)
        self.assertEqual((client.version, server.version), (5, 5))
        atServer, atClient = collect(server), collect(client)
        cells = [cell(i) for i in range(600)]
        self.assertTrue(client.sendCells(cells))
        server.sendCells(cells[:3])
        pump.flush()
        self.assertEqual(atServer, cells)
        self.assertEqual(atClient, cells[:3])

    def test_wrongExpectedIdRefusedBeforeCells(self):
        """
        An initiator expecting another node id refuses the link; it never
        sends its AUTH, so the responder never opens and no cell crosses.
        """
        other = NodeIdentity.generate()
        client, server, pump, cid, sid = linkPair(expected=other.nodeId)
        atServer = collect(server)
        err = failureOf(client.whenOpen())
        self.assertIsInstance(err, LinkError)
        self.assertIn("not the expected node id", str(err))
        self.assertIs(client.state, State.CLOSED)
        self.assertFalse(client.sendCells([cell(1)]))
        pump.flush()
        self.assertIs(server.state, State.CLOSED)
        self.assertIsNone(server.peerId)
        self.assertEqual(atServer, [])
        self.assertEqual(server.cellsIn, 0)

    def test_anonymousClient(self):
        """A client that does not authenticate gets an open link; the relay sees no id."""
        client, server, pump, cid, sid = linkPair(clientSettings=LinkSettings(authenticate=False))
        self.assertIs(server.state, State.OPEN)
        self.assertIsNone(server.peerId)
        self.assertEqual(client.peerId, sid.nodeId)

    def test_anonymousRefusedWhenRequired(self):
        client, server, pump, cid, sid = linkPair(
            clientSettings=LinkSettings(authenticate=False), serverSettings=LinkSettings(acceptAnonymous=False)
        )
        self.assertIs(server.state, State.CLOSED)
        self.assertIn("anonymous", str(server.closeReason))

    def test_exporterDiffersPerSession(self):
        """Two TLS sessions between the same nodes export different values, so signatures do not transfer."""
        cid, sid = NodeIdentity.generate(), NodeIdentity.generate()
        a = linkPair(clientId=cid, serverId=sid)
        b = linkPair(clientId=cid, serverId=sid)
        self.assertEqual(a[0]._exporter, a[1]._exporter)
        self.assertNotEqual(a[0]._exporter, b[0]._exporter)
        transcript = auth.transcriptHash(a[0]._myVersions, a[1]._myVersions)
        proof = auth.encodeAuth(sid, auth.RESPONDER, a[1]._exporter, transcript)
        self.assertEqual(auth.verifyAuth(proof, auth.RESPONDER, a[0]._exporter, transcript)[0], sid.nodeId)
        self.assertRaises(wire.LinkProtocolError, auth.verifyAuth, proof, auth.RESPONDER, b[0]._exporter, transcript)
        # and a responder's proof is no initiator's proof (no reflection)
        self.assertRaises(
            wire.LinkProtocolError, auth.verifyAuth, proof, auth.INITIATOR, a[0]._exporter, transcript, sid.nodeId
        )

    def test_mitmRelayingTLSIsRefused(self):
        """
        A man in the middle terminates the client's TLS and opens its own to
        the real relay, relaying the plaintext records both ways.  The
        relay's AUTH signs the exporter of the MITM<->relay session, which
        differs from the client's session, so the client refuses.
        """
        clock = task.Clock()
        cid, rid = NodeIdentity.generate(), NodeIdentity.generate()
        client = LinkProtocol(clock, cid, LinkSettings(), True, rid.nodeId)
        relay = LinkProtocol(clock, rid, LinkSettings(), False)
        mitmFront, mitmBack = _Splice(), _Splice()
        mitmFront.other, mitmBack.other = mitmBack, mitmFront
        tls = sharedLinkTLS()

        def wrap(proto, isClient):
            f = Factory()
            f.protocol = lambda: proto
            return TLSMemoryBIOFactory(tls, isClient, f, clock=clock).buildProtocol(None)

        c, mf = wrap(client, True), wrap(mitmFront, False)
        mb, r = wrap(mitmBack, True), wrap(relay, False)
        p1 = iosim.connect(mf, iosim.makeFakeServer(mf), c, iosim.makeFakeClient(c), greet=False, clock=clock)
        p2 = iosim.connect(r, iosim.makeFakeServer(r), mb, iosim.makeFakeClient(mb), greet=False, clock=clock)
        for _ in range(20):
            p1.pump()
            p2.pump()
        self.assertTrue(mitmFront.relayed and mitmBack.relayed, "the MITM really relayed records")
        err = failureOf(client.whenOpen())
        self.assertIn("does not match this TLS session", str(err))
        self.assertIs(client.state, State.CLOSED)
        self.assertIsNot(relay.state, State.OPEN)


class _Splice(Protocol):
    """One side of a MITM: writes whatever the other side decrypted."""

    other = None
    relayed = 0

    def dataReceived(self, data):
        self.relayed += len(data)
        self.other.transport.write(data)


class VersionTests(unittest.TestCase):
    def test_highestCommon(self):
        client, server, pump, _, _ = linkPair(
            clientSettings=LinkSettings(versions=(1, 2, 5)), serverSettings=LinkSettings(versions=(2, 5, 7))
        )
        self.assertEqual((client.version, server.version), (5, 5))
        self.assertIs(client.state, State.OPEN)

    def test_noCommonVersion(self):
        client, server, pump, _, _ = linkPair(serverSettings=LinkSettings(versions=(6, 7)))
        self.assertIs(client.state, State.CLOSED)
        self.assertIs(server.state, State.CLOSED)
        self.assertIn("no common link version", str(server.closeReason))

    def test_versionsTwiceIsAnError(self):
        client, server, pump, _, _ = linkPair()
        server.dataReceived(wire.encodeVersions([1]))
        self.assertIs(server.state, State.CLOSED)
        self.assertIn("VERSIONS in state open", str(server.closeReason))


class TimerTests(unittest.TestCase):
    def test_keepalivesKeepAQuietLinkAlive(self):
        clock = task.Clock()
        s = LinkSettings(keepaliveInterval=30, deadAfter=95, idleTimeout=0)
        client, server, pump, _, _ = linkPair(clock, s, s)
        before = server._lastIn
        for _ in range(40):
            clock.advance(30)
            pump.flush()
        self.assertIs(client.state, State.OPEN)
        self.assertIs(server.state, State.OPEN)
        self.assertGreater(server._lastIn, before + 1000)

    def test_silentPeerIsDead(self):
        """Keepalives that never arrive (the pump stops) close the link after deadAfter (a version 2 link: no PING)."""
        clock = task.Clock()
        s = LinkSettings(keepaliveInterval=30, deadAfter=95, idleTimeout=0, versions=(1, 2))
        client, server, pump, _, _ = linkPair(clock, s, s)
        closed = []
        client.whenClosed().addCallback(closed.append)
        clock.advance(30)
        clock.advance(30)
        clock.advance(30)
        self.assertIs(client.state, State.OPEN)
        clock.advance(30)
        self.assertIs(client.state, State.CLOSED)
        self.assertIn("silent", str(client.closeReason))

    def test_idleLinkCloses(self):
        clock = task.Clock()
        s = LinkSettings(keepaliveInterval=30, deadAfter=95, idleTimeout=60)
        client, server, pump, _, _ = linkPair(clock, s, s)
        clock.advance(30)
        pump.flush()
        client.sendCells([cell(1)])
        pump.flush()
        clock.advance(30)
        pump.flush()
        self.assertIs(client.state, State.OPEN)
        clock.advance(30)
        pump.flush()
        clock.advance(30)
        pump.flush()
        self.assertIs(client.state, State.CLOSED)
        self.assertIn("idle", str(client.closeReason))
        self.assertIs(server.state, State.CLOSED)

    def test_usedLinkIsNotIdle(self):
        clock = task.Clock()
        s = LinkSettings(keepaliveInterval=30, deadAfter=95, idleTimeout=60)
        client, server, pump, _, _ = linkPair(clock, s, s)
        client.acquire()
        server.acquire()
        for _ in range(10):
            clock.advance(30)
            pump.flush()
        self.assertIs(client.state, State.OPEN)
        client.release()
        for _ in range(3):
            clock.advance(30)
            pump.flush()
        self.assertIs(client.state, State.CLOSED)

    def test_handshakeTimeout(self):
        clock = task.Clock()
        cid, sid = NodeIdentity.generate(), NodeIdentity.generate()
        client = LinkProtocol(clock, cid, LinkSettings(handshakeTimeout=20), True, sid.nodeId)
        f = Factory()
        f.protocol = lambda: client
        c = TLSMemoryBIOFactory(sharedLinkTLS(), True, f, clock=clock).buildProtocol(None)
        c.makeConnection(iosim.makeFakeClient(c))  # nobody answers
        d = client.whenOpen()
        clock.advance(19)
        self.assertFalse(d.called)
        clock.advance(1)
        self.assertIn("timed out", str(failureOf(d)))


class _Producer:
    paused = False
    stopped = False

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False

    def stopProducing(self):
        self.stopped = True


class BackpressureTests(unittest.TestCase):
    def test_writeSidePausesProducersAndQueuesBounded(self):
        client, server, pump, _, _ = linkPair(clientSettings=LinkSettings(maxQueuedCells=300))
        got = collect(server)
        a, b = _Producer(), _Producer()
        client.registerProducer(a, True)
        client.registerProducer(b, True)
        client._writePaused(True)  # what the transport does when its buffer is full
        self.assertTrue(a.paused and b.paused)
        self.assertTrue(client.sendCells([cell(i) for i in range(200)]))
        pump.flush()
        self.assertEqual(got, [])
        client._writePaused(False)
        self.assertFalse(a.paused or b.paused)
        pump.flush()
        self.assertEqual(len(got), 200)
        client._writePaused(True)
        client.sendCells([cell(i) for i in range(200)])
        self.assertFalse(client.sendCells([cell(i) for i in range(200)]))
        self.assertIs(client.state, State.CLOSED)
        self.assertIn("overflow", str(client.closeReason))

    def test_registeredOnTheTransport(self):
        """The link registers a push producer on its TLS transport (so TCP pauses reach it)."""
        client, server, pump, _, _ = linkPair()
        self.assertIsNotNone(client.transport._producer)

    def test_pausedLinkStopsDelivering(self):
        client, server, pump, _, _ = linkPair()
        got = collect(server)
        server.pauseProducing()
        client.sendCells([cell(i) for i in range(50)])
        pump.flush()
        self.assertEqual(got, [])
        server.resumeProducing()
        pump.flush()
        self.assertEqual(len(got), 50)

    def test_wrongCellSize(self):
        client, server, pump, _, _ = linkPair()
        self.assertRaises(ValueError, client.sendCells, [b"short"])
        self.assertIs(client.state, State.OPEN)


class ReceiverFailureTests(unittest.TestCase):
    def test_buggyReceiverClosesOnlyThatLink(self):
        client, server, pump, _, _ = linkPair()
        other = linkPair()

        def boom(cells):
            raise RuntimeError("bug in the onion layer")

        server.setCellReceiver(boom)
        client.sendCells([cell(1)])
        pump.flush()
        self.assertIs(server.state, State.CLOSED)
        self.assertIn("cell receiver failed", str(server.closeReason))
        self.assertIs(other[1].state, State.OPEN)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
