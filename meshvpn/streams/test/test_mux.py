"""Streams on a circuit: BEGIN/CONNECTED/DATA/END, half-close, windows, RESOLVE, hostile input."""

import hashlib
import ipaddress
import os

from hypothesis import given, settings, strategies as st
from twisted.internet import defer, endpoints, protocol, reactor, task
from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyClass, verifyObject

from meshvpn.errors import StreamRefused
from meshvpn.interfaces import IStream, IStreamReceiver
from meshvpn.onion.cells import RelayCommand as R
from meshvpn.onion.endreasons import EndReason
from meshvpn.onion.streammsgs import AnswerType, Begin, End
from meshvpn.streams import circuitstream as cs
from meshvpn.streams import mux as sm

MAX_DATA = 494


def sequentialIds(mux):
    """Make C{mux} hand out stream ids 1, 2, 3... so a test can name them (real ids are random)."""
    counter = iter(range(1 << 20))
    mux._randbelow = lambda n: next(counter) % n
    return mux


class Pipe:
    """Two muxes joined back to back, delivering in order on the next reactor turn."""

    def __init__(self, accept=None, resolve=None, clock=reactor):
        self.clock = clock
        self.queues = {"origin": [], "exit": []}
        self.origin = sm.StreamMux(lambda c, s, b: self._send("exit", c, s, b), MAX_DATA)
        self.exit = sm.StreamMux(lambda c, s, b: self._send("origin", c, s, b), MAX_DATA, accept, resolve)
        self.scheduled = None
        self.log = []

    def _send(self, to, command, sid, body):
        assert len(body) <= MAX_DATA
        self.log.append((to, command, sid, bytes(body)))
        self.queues[to].append((command, sid, bytes(body)))
        if self.scheduled is None:
            self.scheduled = self.clock.callLater(0, self.pump)

    def pump(self):
        self.scheduled = None
        for name in ("exit", "origin"):
            queue, self.queues[name] = self.queues[name], []
            mux = getattr(self, name)
            for command, sid, body in queue:
                mux.relayReceived(command, sid, body)

    def sent(self, to, command):
        return [(sid, body) for t, c, sid, body in self.log if t == to and c == command]


@implementer(IStreamReceiver)
class Collect:
    """What a stream delivers, recorded."""

    def __init__(self):
        self.data = []
        self.readEnded = False
        self.ended = defer.Deferred()

    def streamDataReceived(self, data):
        self.data.append(data)

    def streamReadEnded(self):
        self.readEnded = True

    def streamEnded(self, reason):
        self.ended.callback(reason)


@implementer(IStream)
class FarEnd:
    """The exit's connection to the target, in memory: records what the circuit stream sends it."""

    def __init__(self):
        self.data = []
        self.receiver = None
        self.producer = None
        self.halfClosed = False
        self.closed = []

    def setReceiver(self, receiver):
        self.receiver = receiver

    def registerProducer(self, producer, streaming):
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        self.close(EndReason.DONE)

    def write(self, data):
        self.data.append(data)

    def halfClose(self):
        self.halfClosed = True

    def close(self, reason):
        self.closed.append(reason)


@implementer(IStream)
class EchoStream(FarEnd):
    """A target that sends back what it gets."""

    def write(self, data):
        super().write(data)
        self.receiver.streamDataReceived(data)


def tcpConnectAccept(host, port):
    """An exit accept that connects on loopback (tests only: no policy)."""
    from meshvpn.exit.direct import TCPStream

    return endpoints.TCP4ClientEndpoint(reactor, host, port).connect(protocol.Factory.forProtocol(TCPStream))


class EchoUntilEOF(protocol.Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


def deferLater(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


class InterfaceTests(unittest.TestCase):
    def test_theStreamIsTheIStream(self):
        self.assertTrue(verifyClass(IStream, cs.CircuitStream))
        mux = sm.StreamMux(lambda *a: None, MAX_DATA)
        self.assertTrue(verifyObject(IStream, cs.CircuitStream(mux, 1, origin=True)))
        self.assertTrue(verifyObject(IStreamReceiver, Collect()))


class LoopbackStreamTests(unittest.TestCase):
    def setUp(self):
        self.pipe = Pipe(accept=tcpConnectAccept)

    @defer.inlineCallbacks
    def listen(self, proto):
        port = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            protocol.Factory.forProtocol(proto)
        )
        self.addCleanup(port.stopListening)
        return port.getHost().port

    @defer.inlineCallbacks
    def test_megabyteEchoesThrough(self):
        port = yield self.listen(EchoUntilEOF)
        app = Collect()
        stream = yield self.pipe.origin.openStream("127.0.0.1", port, app)
        payload = os.urandom(1024 * 1024 + 7)
        stream.write(payload)
        while sum(map(len, app.data)) < len(payload):
            yield deferLater(0.01)
        self.assertEqual(hashlib.sha256(b"".join(app.data)).digest(), hashlib.sha256(payload).digest())
        stream.halfClose()
        reason = yield app.ended
        self.assertEqual(reason, EndReason.DONE)
        self.assertEqual(self.pipe.origin.streams, {})
        self.assertEqual(self.pipe.exit.streams, {})
        self.assertEqual(self.pipe.origin.violations + self.pipe.exit.violations, 0)
        # Never more than a window of DATA cells outstanding in either direction.
        self.assertLessEqual(stream.packageWindow, cs.STREAM_WINDOW)

    @defer.inlineCallbacks
    def test_serverHalfClose(self):
        class SayAndShut(protocol.Protocol):
            def connectionMade(self):
                self.transport.write(b"hello")
                self.transport.loseWriteConnection()

        port = yield self.listen(SayAndShut)
        app = Collect()
        stream = yield self.pipe.origin.openStream("127.0.0.1", port, app)
        while not app.readEnded:
            yield deferLater(0.01)
        self.assertEqual(b"".join(app.data), b"hello")
        self.assertEqual(stream.state, cs.StreamState.PEER_FINISHED)
        stream.write(b"still allowed to talk")
        stream.halfClose()
        self.assertEqual((yield app.ended), EndReason.DONE)

    @defer.inlineCallbacks
    def test_connectionRefusedIsEndReason(self):
        # Port 1 on loopback: nothing listens, the connect is refused.
        pipe = Pipe(accept=lambda h, p: tcpConnectAccept(h, p).addErrback(
            lambda f: defer.fail(StreamRefused(EndReason.CONNECTREFUSED))))
        e = yield self.assertFailure(pipe.origin.openStream("127.0.0.1", 1), StreamRefused)
        self.assertEqual(e.reason, EndReason.CONNECTREFUSED)


class MemoryStreamTests(unittest.TestCase):
    """Deterministic: a task.Clock pump and accept callables that need no network."""

    def setUp(self):
        self.clock = task.Clock()
        self.accepted = []
        self.pipe = Pipe(accept=self.accept, resolve=self.resolve, clock=self.clock)

    def accept(self, host, port):
        if port == 25:
            return defer.fail(StreamRefused(EndReason.EXITPOLICY))
        far = FarEnd()
        self.accepted.append((host, port, far))
        return defer.succeed(far)

    def resolve(self, name):
        if name == "nowhere.example":
            return defer.fail(Exception("nxdomain"))
        return defer.succeed([(AnswerType.IPV4, bytes([198, 18, 0, 9]), 60)])

    def drain(self):
        for _ in range(50):
            self.clock.advance(0)

    def open(self, host="example.org", port=80):
        app = Collect()
        d = self.pipe.origin.openStream(host, port, app)
        self.drain()
        return self.successResultOf(d), app

    def exitStream(self):
        (stream,) = self.pipe.exit.streams.values()
        return stream

    def test_beginCarriesHostname(self):
        stream, app = self.open("example.org", 443)
        self.assertEqual(self.accepted[0][:2], ("example.org", 443))
        stream.write(b"GET /")
        self.drain()
        self.assertEqual(b"".join(self.accepted[0][2].data), b"GET /")

    def test_exitSplicesStreamToTarget(self):
        stream, app = self.open()
        far = self.accepted[0][2]
        self.assertIs(far.producer, self.exitStream())
        self.assertIs(self.exitStream()._producer, far)
        far.receiver.streamDataReceived(b"HTTP/1.0 200 OK")
        self.drain()
        self.assertEqual(b"".join(app.data), b"HTTP/1.0 200 OK")

    def test_ipv6Target(self):
        stream, _ = self.open("2001:db8::1", 80)
        self.assertEqual(self.accepted[0][:2], ("2001:db8::1", 80))
        self.assertEqual(stream.target, "[2001:db8::1]:80")
        self.assertEqual(self.pipe.origin.status()["streams"][0]["target"], "[2001:db8::1]:80")

    def test_policyRejectIsReason(self):
        d = self.pipe.origin.openStream("198.18.0.5", 25)
        self.drain()
        self.assertEqual(self.failureResultOf(d, StreamRefused).value.reason, EndReason.EXITPOLICY)
        self.assertEqual(self.pipe.origin.streams, {})
        self.assertEqual(self.pipe.exit.streams, {})

    def test_windowStopsSenderUntilSendme(self):
        stream, app = self.open()
        far = self.accepted[0][2]
        far.producer.pauseProducing()  # the target cannot take more: no SENDMEs go back
        stream.write(b"x" * (MAX_DATA * 600))
        self.drain()
        self.assertEqual(far.data, [])
        self.assertEqual(len(self.exitStream()._held), cs.STREAM_WINDOW)  # held: one window, no more
        self.assertEqual(stream.packageWindow, 0)
        self.assertGreater(stream._pendingBytes, 0)
        far.producer.resumeProducing()
        self.drain()
        self.assertEqual(sum(map(len, far.data)), MAX_DATA * 600)

    def test_producerPausedWhenBufferFull(self):
        stream, app = self.open()
        far = self.accepted[0][2]
        far.producer.pauseProducing()
        feeder = StringTransport()
        stream.registerProducer(feeder, True)
        stream.write(b"y" * (MAX_DATA * cs.STREAM_WINDOW + cs.PAUSE_ABOVE + 1))
        self.assertEqual(feeder.producerState, "paused")
        far.producer.resumeProducing()
        self.drain()
        self.assertEqual(feeder.producerState, "producing")

    def test_pausedReceiverHoldsAndStopsSendmes(self):
        stream, app = self.open()
        stream.pauseProducing()
        for _ in range(cs.SENDME_EVERY * 2):
            self.pipe.origin.relayReceived(R.DATA, stream.streamId, b"z")
        self.assertEqual(app.data, [])
        self.assertEqual(self.pipe.queues["exit"], [])  # no SENDME while paused
        stream.resumeProducing()
        self.assertEqual(b"".join(app.data), b"z" * cs.SENDME_EVERY * 2)
        self.assertEqual([c for c, _, _ in self.pipe.queues["exit"]], [R.SENDME, R.SENDME])

    def test_heldUntilReceiverSet(self):
        d = self.pipe.origin.openStream("example.org", 80)
        self.drain()
        stream = self.successResultOf(d)
        self.pipe.origin.relayReceived(R.DATA, stream.streamId, b"early")
        self.pipe.origin.relayReceived(R.END, stream.streamId, End(EndReason.DONE).encode())
        app = Collect()
        stream.setReceiver(app)
        self.assertEqual((app.data, app.readEnded), ([b"early"], True))

    def test_halfCloseFlushesThenEnds(self):
        stream, app = self.open()
        stream.packageWindow = 1
        stream.write(b"a" * (MAX_DATA * 3))
        stream.halfClose()
        self.assertEqual(stream.state, cs.StreamState.FLUSHING)
        stream.write(b"refused after half-close")
        self.drain()
        self.assertEqual(self.pipe.sent("exit", R.END), [])
        for _ in range(2):
            stream.packageWindow += 1
            stream.circuitWindowOpened()
        self.drain()
        self.assertEqual(self.pipe.sent("exit", R.END), [(stream.streamId, bytes([EndReason.DONE]))])
        self.assertEqual(stream.state, cs.StreamState.WE_FINISHED)
        far = self.accepted[0][2]
        self.assertEqual((b"".join(far.data), far.halfClosed), (b"a" * (MAX_DATA * 3), True))
        # The far end answers and finishes: both halves done.
        far.receiver.streamDataReceived(b"bye")
        far.receiver.streamReadEnded()
        self.drain()
        self.assertEqual(b"".join(app.data), b"bye")
        self.assertEqual(self.successResultOf(app.ended), EndReason.DONE)
        self.assertEqual(stream.state, cs.StreamState.CLOSED)
        self.assertEqual((self.pipe.origin.streams, self.pipe.exit.streams), ({}, {}))

    def test_peerOverrunningWindowIsViolation(self):
        stream, app = self.open()
        stream.pauseProducing()  # our reader is slow: we stop acknowledging
        for _ in range(cs.STREAM_WINDOW + 1):
            self.pipe.origin.relayReceived(R.DATA, stream.streamId, b"z")
        self.assertEqual(stream.state, cs.StreamState.CLOSED)
        # The end waits behind the window's worth of data the reader has not taken.
        self.assertNoResult(app.ended)
        stream.resumeProducing()
        self.assertEqual(b"".join(app.data), b"z" * cs.STREAM_WINDOW)
        self.assertEqual(self.successResultOf(app.ended), EndReason.TORPROTOCOL)

    def test_circuitClosedFailsEverything(self):
        stream, app = self.open()
        pending = self.pipe.origin.openStream("example.net", 80)
        resolving = self.pipe.origin.resolve("example.net")
        self.pipe.origin.circuitClosed(EndReason.DESTROY)
        self.assertEqual(self.successResultOf(app.ended), EndReason.DESTROY)
        self.assertEqual(self.failureResultOf(pending, StreamRefused).value.reason, EndReason.DESTROY)
        self.assertEqual(self.failureResultOf(resolving, StreamRefused).value.reason, EndReason.DESTROY)
        later = self.pipe.origin.openStream("example.net", 80)
        self.failureResultOf(later, StreamRefused)
        self.assertNotIn(R.END, [c for c, _, _ in self.pipe.queues["exit"]])  # no END on a dead circuit

    def test_resolve(self):
        d = self.pipe.origin.resolve("example.org")
        self.drain()
        self.assertEqual(self.successResultOf(d), [(AnswerType.IPV4, bytes([198, 18, 0, 9]), 60)])
        d = self.pipe.origin.resolve("nowhere.example")
        self.drain()
        self.assertEqual(self.successResultOf(d)[0][0], AnswerType.ERROR_TRANSIENT)
        self.failureResultOf(self.pipe.origin.resolve("bad name\x00"), StreamRefused)

    def test_resolvedAnswersCutToOneCell(self):
        many = [(AnswerType.IPV6, bytes(16), 60)] * 40
        self.pipe.exit._resolve = lambda name: defer.succeed(many)
        d = self.pipe.origin.resolve("many.example")
        self.drain()
        self.assertEqual(self.successResultOf(d), many[: MAX_DATA // 22])

    def test_originEndsWhileExitConnecting(self):
        pending = defer.Deferred()
        self.pipe.exit._accept = lambda h, p: pending
        d = self.pipe.origin.openStream("example.org", 80)
        self.drain()
        sid = next(iter(self.pipe.exit.streams))
        self.pipe.exit.relayReceived(R.END, sid, End(EndReason.DONE).encode())
        self.assertEqual(self.pipe.exit.streams, {})
        far = FarEnd()
        pending.callback(far)  # connect completes late: nothing is sent, the connection is closed
        self.assertEqual(self.pipe.sent("origin", R.CONNECTED), [])
        self.assertEqual(far.closed, [EndReason.DONE])
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)

    def test_cancelledOpenEndsStream(self):
        d = self.pipe.origin.openStream("example.org", 80)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(self.pipe.origin.streams, {})
        self.drain()
        # The exit heard the END (an abort: DONE would be a half-close) and let go.
        self.assertEqual(self.pipe.exit.streams, {})
        self.assertEqual(self.accepted[0][2].closed, [EndReason.MISC])

    def test_appGoneMidStreamAbortsAtExit(self):
        stream, app = self.open()
        stream.close(EndReason.DONE)  # the app vanished (SOCKS closes with DONE)
        self.assertEqual(self.successResultOf(app.ended), EndReason.DONE)
        self.drain()
        # Not a half-close: the exit drops the target and sends nothing more.
        far = self.accepted[0][2]
        self.assertEqual((far.closed, far.halfClosed), ([EndReason.MISC], False))
        self.assertEqual(self.pipe.exit.streams, {})
        self.assertEqual(self.pipe.origin.violations + self.pipe.exit.violations, 0)

    def test_closeAfterBothFinishedSaysDone(self):
        stream, app = self.open()
        far = self.accepted[0][2]
        far.receiver.streamReadEnded()  # the target finished
        self.drain()
        stream.close(EndReason.DONE)  # the app had read it all
        self.assertEqual(self.pipe.queues["exit"][-1], (R.END, stream.streamId, bytes([EndReason.DONE])))

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=600))
    def test_hostileBeginNeverCrashes(self, body):
        exitMux = sm.StreamMux(lambda c, s, b: None, MAX_DATA, accept=lambda h, p: defer.succeed(FarEnd()))
        exitMux.relayReceived(R.BEGIN, 7, body)
        try:
            Begin.decode(body)
        except Exception:
            self.assertEqual(exitMux.streams, {})
            self.assertEqual(exitMux.violations, 1)

    @settings(max_examples=300, deadline=None)
    @given(st.integers(0, 255), st.integers(0, 65535), st.binary(max_size=600))
    def test_hostileRelayMessagesNeverCrash(self, command, sid, body):
        stream, app = self.open()
        self.pipe.origin.relayReceived(command, sid, body)
        self.pipe.origin.relayReceived(command, stream.streamId, body)
        self.pipe.exit.relayReceived(command, sid, body)
        self.drain()


class StreamMachineTests(unittest.TestCase):
    """The lifecycle table, and what a peer's out-of-place message does to one stream."""

    def setUp(self):
        self.sent = []
        self.origin = sequentialIds(sm.StreamMux(lambda c, s, b: self.sent.append((c, s, bytes(b))), MAX_DATA))
        self.far = FarEnd()
        self.exit = sm.StreamMux(lambda c, s, b: self.sent.append((c, s, bytes(b))), MAX_DATA,
                                 accept=lambda h, p: self.connecting)
        self.connecting = defer.Deferred()

    def ends(self):
        return [(s, End.decode(b).reason) for c, s, b in self.sent if c == R.END]

    def test_everyStateIsReachableAndClosedIsFinal(self):
        targets = set(cs.TRANSITIONS.values())
        self.assertEqual(targets | {cs.StreamState.CONNECTING}, set(cs.StreamState))
        self.assertFalse([k for k in cs.TRANSITIONS if k[0] is cs.StreamState.CLOSED])
        # Every state but CLOSED can be aborted.
        for state in cs.StreamState:
            if state is not cs.StreamState.CLOSED:
                self.assertIs(cs.TRANSITIONS[state, cs.StreamEvent.ABORT], cs.StreamState.CLOSED)

    def test_illegalTransitionRaises(self):
        from automat import NoTransition

        stream = cs.CircuitStream(self.origin, 1, origin=True)
        e = self.assertRaises(NoTransition, stream._go, cs.StreamEvent.FLUSHED)
        self.assertEqual((e.state, e.symbol), (cs.StreamState.CONNECTING, cs.StreamEvent.FLUSHED))

    def test_dataBeforeConnectedAtOrigin(self):
        d = self.origin.openStream("example.org", 80)
        self.origin.relayReceived(R.DATA, 1, b"too early")
        self.assertEqual(self.failureResultOf(d, StreamRefused).value.reason, EndReason.TORPROTOCOL)
        self.assertEqual(self.ends(), [(1, EndReason.TORPROTOCOL)])
        self.assertEqual((self.origin.streams, self.origin.violations), ({}, 1))

    def test_dataBeforeConnectedAtExit(self):
        self.exit.relayReceived(R.BEGIN, 3, Begin("example.org", 80).encode())
        self.exit.relayReceived(R.DATA, 3, b"optimistic data is not supported")
        self.assertEqual(self.ends(), [(3, EndReason.TORPROTOCOL)])
        self.connecting.callback(self.far)
        self.assertEqual(self.far.closed, [EndReason.DONE])
        self.assertNotIn(R.CONNECTED, [c for c, _, _ in self.sent])

    def test_secondConnected(self):
        d = self.origin.openStream("example.org", 80)
        self.origin.relayReceived(R.CONNECTED, 1, b"")
        stream = self.successResultOf(d)
        app = Collect()
        stream.setReceiver(app)
        self.origin.relayReceived(R.CONNECTED, 1, b"")
        self.assertEqual(self.successResultOf(app.ended), EndReason.TORPROTOCOL)
        self.assertEqual(self.ends(), [(1, EndReason.TORPROTOCOL)])

    def test_connectedToTheExitIsViolation(self):
        self.exit.relayReceived(R.BEGIN, 3, Begin("example.org", 80).encode())
        self.exit.relayReceived(R.CONNECTED, 3, b"")
        self.assertEqual(self.ends(), [(3, EndReason.TORPROTOCOL)])

    def test_malformedConnectedIsViolation(self):
        d = self.origin.openStream("example.org", 80)
        self.origin.relayReceived(R.CONNECTED, 1, b"\x01\x02\x03")
        self.assertEqual(self.failureResultOf(d, StreamRefused).value.reason, EndReason.TORPROTOCOL)

    def test_endAfterCloseIsCountedNotAnswered(self):
        d = self.origin.openStream("example.org", 80)
        self.origin.relayReceived(R.CONNECTED, 1, b"")
        stream = self.successResultOf(d)
        stream.close(EndReason.DONE)
        self.sent.clear()
        self.origin.relayReceived(R.END, 1, End(EndReason.DONE).encode())
        self.assertEqual((self.sent, self.origin.violations), ([], 1))
        stream.close(EndReason.MISC)  # idempotent
        self.assertEqual(self.sent, [])

    def test_refusalWhileConnecting(self):
        d = self.origin.openStream("example.org", 80)
        self.origin.relayReceived(R.END, 1, b"")  # empty END: MISC, as in Tor
        self.assertEqual(self.failureResultOf(d, StreamRefused).value.reason, EndReason.MISC)
        self.assertEqual(self.ends(), [])

    def test_bothHalvesClose(self):
        d = self.origin.openStream("example.org", 80)
        self.origin.relayReceived(R.CONNECTED, 1, b"")
        stream = self.successResultOf(d)
        app = Collect()
        stream.setReceiver(app)
        self.origin.relayReceived(R.END, 1, End(EndReason.DONE).encode())
        self.assertEqual((stream.state, app.readEnded), (cs.StreamState.PEER_FINISHED, True))
        stream.write(b"last words")
        stream.halfClose()
        self.assertEqual(stream.state, cs.StreamState.CLOSED)
        self.assertEqual(self.successResultOf(app.ended), EndReason.DONE)
        self.assertEqual([c for c, _, _ in self.sent], [R.BEGIN, R.DATA, R.END])

    def test_abortReasonReachesReceiver(self):
        d = self.origin.openStream("example.org", 80)
        self.origin.relayReceived(R.CONNECTED, 1, b"")
        stream = self.successResultOf(d)
        app = Collect()
        stream.setReceiver(app)
        self.origin.relayReceived(R.END, 1, End(EndReason.CONNRESET).encode())
        self.assertEqual(self.successResultOf(app.ended), EndReason.CONNRESET)
        self.assertEqual(self.ends(), [])

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.sampled_from(["data", "sendme", "end-done", "end-misc", "connected", "junk",
                                     "write", "halfClose", "close", "pauseProducing",
                                     "resumeProducing"]), max_size=30))
    def test_anyEventOrderKeepsTheMachineConsistent(self, events):
        sent = []
        mux = sm.StreamMux(lambda c, s, b: sent.append((c, s)), MAX_DATA)
        d = mux.openStream("example.org", 80)
        app = Collect()
        d.addCallback(lambda s: s.setReceiver(app))
        d.addErrback(lambda f: f.trap(StreamRefused))
        stream = next(iter(mux.streams.values()))
        bodies = {"data": (R.DATA, b"x"), "sendme": (R.SENDME, b""), "end-done": (R.END, b"\x06"),
                  "end-misc": (R.END, b"\x01"), "connected": (R.CONNECTED, b""), "junk": (R.BEGIN, b"")}
        sentWhenClosed = None
        for event in events:
            if event in bodies:
                mux.relayReceived(bodies[event][0], stream.streamId, bodies[event][1])
            elif event == "write":
                stream.write(b"y" * 600)
            else:
                getattr(stream, event)()
            self.assertIsInstance(stream.state, cs.StreamState)
            self.assertEqual(stream.streamId in mux.streams, stream.state is not cs.StreamState.CLOSED)
            if stream.state is cs.StreamState.CLOSED and sentWhenClosed is None:
                sentWhenClosed = len(sent)
        # A closed stream sends nothing more; at most a half-close and an abort END.
        if sentWhenClosed is not None:
            self.assertEqual(len(sent), sentWhenClosed)
        self.assertLessEqual(len([c for c, _ in sent if c == R.END]), 2)


class CircuitWindowTests(unittest.TestCase):
    def test_streamsWaitForCircuitWindow(self):
        sent = []
        room = [3]

        def send(command, sid, body):
            if command == R.DATA:
                room[0] -= 1
            sent.append((command, bytes(body)))

        mux = sequentialIds(sm.StreamMux(send, MAX_DATA, circuitRoom=lambda: room[0]))
        d = mux.openStream("example.org", 80, Collect())
        mux.relayReceived(R.CONNECTED, 1, b"")
        stream = self.successResultOf(d)
        stream.write(b"a" * (MAX_DATA * 5 + 10))
        self.assertEqual(len([c for c, _ in sent if c == R.DATA]), 3)
        room[0] = 10
        mux.circuitWindowOpened()
        data = b"".join(b for c, b in sent if c == R.DATA)
        self.assertEqual(data, b"a" * (MAX_DATA * 5 + 10))


class ExitGlueTests(unittest.TestCase):
    """The exit's accept/resolve glue: connector + TCPStream, spliced by the mux; RESOLVED answers."""

    @defer.inlineCallbacks
    def test_exitAcceptorSplicesToTCP(self):
        from meshvpn.exit.connect import ExitConnector
        from meshvpn.exit.policy import ExitPolicy, parsePolicy
        from meshvpn.exit.streams import exitAcceptor
        from meshvpn.ratelimit import BandwidthLimiter

        port = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            protocol.Factory.forProtocol(EchoUntilEOF))
        self.addCleanup(port.stopListening)
        limiter = BandwidthLimiter(reactor)
        accept = exitAcceptor(ExitConnector(reactor, None, ExitPolicy(parsePolicy("accept 127.0.0.1:*"))), limiter)
        circuit = object()
        pipe = Pipe(accept=lambda h, p: accept(circuit, h, p))
        app = Collect()
        stream = yield pipe.origin.openStream("127.0.0.1", port.getHost().port, app)
        payload = os.urandom(300_000)
        stream.write(payload)
        while sum(map(len, app.data)) < len(payload):
            yield deferLater(0.01)
        self.assertEqual(b"".join(app.data), payload)
        self.assertEqual(limiter.circuit(circuit).status()["bytes_in"], len(payload))  # keyed by the circuit itself
        stream.halfClose()
        self.assertEqual((yield app.ended), EndReason.DONE)

    @defer.inlineCallbacks
    def test_defaultPolicyRefusesLoopback(self):
        from meshvpn.exit.connect import ExitConnector
        from meshvpn.exit.policy import defaultExitPolicy
        from meshvpn.exit.streams import exitAcceptor

        accept = exitAcceptor(ExitConnector(reactor, None, defaultExitPolicy("")))
        pipe = Pipe(accept=lambda h, p: accept(None, h, p))
        e = yield self.assertFailure(pipe.origin.openStream("127.0.0.1", 80), StreamRefused)
        self.assertEqual(e.reason, EndReason.EXITPOLICY)

    def test_resolveGlue(self):
        from meshvpn.errors import ResolveFailed
        from meshvpn.exit.streams import _fromReverse, exitResolver

        class Resolver:
            def resolve(self, name):
                if name == "nx.example":
                    return defer.fail(ResolveFailed(name, transient=False))
                return defer.succeed(["198.18.0.7", "2001:db8::7"])

            def resolvePTR(self, address):
                return defer.succeed([f"host-{address}.example"])

        resolve = exitResolver(Resolver())
        answers = self.successResultOf(resolve("example.org"))
        self.assertEqual([a[0] for a in answers], [AnswerType.IPV4, AnswerType.IPV6])
        names = self.successResultOf(resolve("7.0.18.198.in-addr.arpa"))
        self.assertEqual(names[0][1], b"host-198.18.0.7.example")
        self.assertEqual(_fromReverse("7.0.18.198.in-addr.arpa"), "198.18.0.7")
        self.assertEqual(_fromReverse(ipaddress.ip_address("2001:db8::7").reverse_pointer), "2001:db8::7")
        self.assertEqual(self.successResultOf(resolve("x.in-addr.arpa"))[0][0], AnswerType.ERROR_NONTRANSIENT)
        self.assertEqual(self.successResultOf(resolve("nx.example"))[0][0], AnswerType.ERROR_NONTRANSIENT)


class HalfCloseFirstTests(unittest.TestCase):
    """The app half-closes after its request (nc -N, uploads); the target answers at length, then closes."""

    @defer.inlineCallbacks
    def test_responseAfterAppHalfCloseArrivesWhole(self):
        # More than one stream window, less than what pauses the target's
        # socket: the target's FIN arrives while the exit still holds data.
        payload = os.urandom(cs.STREAM_WINDOW * MAX_DATA + 50_000)
        closed = defer.Deferred()

        class AnswerAfterEOF(protocol.Protocol):
            def readConnectionLost(self):
                self.transport.write(payload)
                self.transport.loseConnection()

            def connectionLost(self, reason):
                closed.callback(None)

        from zope.interface import directlyProvides
        from twisted.internet.interfaces import IHalfCloseableProtocol

        def build():
            p = AnswerAfterEOF()
            directlyProvides(p, IHalfCloseableProtocol)
            return p

        port = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            protocol.Factory.forProtocol(build))
        self.addCleanup(port.stopListening)
        pipe = Pipe(accept=tcpConnectAccept)
        app = Collect()
        stream = yield pipe.origin.openStream("127.0.0.1", port.getHost().port, app)
        stream.pauseProducing()  # a slow app: the exit's window closes
        stream.write(b"GET /")
        stream.halfClose()
        yield closed
        for _ in range(10):
            yield deferLater(0.01)
        stream.resumeProducing()
        reason = yield app.ended
        self.assertEqual(reason, EndReason.DONE)
        self.assertEqual(len(b"".join(app.data)), len(payload))
        self.assertEqual(b"".join(app.data), payload)


class StreamIdTests(unittest.TestCase):
    """Stream ids are drawn at random among the free ones: nobody who can inject a cell knows the next one."""

    def test_idsAreUnpredictable(self):
        mux = sm.StreamMux(lambda c, s, b: None, MAX_DATA)
        ids = []
        for _ in range(200):
            mux.openStream("example.org", 80)
            ids.append(list(mux.streams)[-1])
        self.assertEqual(len(set(ids)), 200)
        self.assertTrue(all(1 <= i <= 0xFFFF for i in ids))
        steps = {b - a for a, b in zip(ids, ids[1:])}
        self.assertGreater(len(steps), 150, "consecutive ids differ by a fixed step: predictable")
        self.assertNotIn(1, ids[:3], "the first stream got id 1, as a counter would give it")
        self.assertGreater(max(ids) - min(ids), 30000)  # spread over the id space, not a run

    def test_idsInUseAreNeverDrawn(self):
        """Even when the draw keeps landing on ids in use, a free one is taken."""
        mux = sm.StreamMux(lambda c, s, b: None, MAX_DATA)
        draws = iter([4, 4, 4, 9, 4, 9, 9, 9, 17])
        mux._randbelow = lambda n: next(draws)
        mux.openStream("example.org", 80)
        mux.resolve("example.org")
        mux.openStream("example.org", 80)
        self.assertEqual(sorted(list(mux.streams) + list(mux._resolving)), [5, 10, 18])

    def test_idSpaceBounded(self):
        mux = sm.StreamMux(lambda c, s, b: None, MAX_DATA)
        for _ in range(sm.MAX_STREAMS):
            mux.openStream("example.org", 80)
        self.assertEqual(len(mux.streams), sm.MAX_STREAMS)
        self.assertEqual(self.failureResultOf(mux.openStream("example.org", 80), StreamRefused).value.reason,
                         EndReason.RESOURCELIMIT)
