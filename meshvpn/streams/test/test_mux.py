"""Streams on a circuit: BEGIN/CONNECTED/DATA/END, half-close, windows, RESOLVE, hostile input."""

import hashlib
import os

from hypothesis import given, settings, strategies as st
from twisted.internet import defer, endpoints, protocol, reactor
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from meshvpn.errors import StreamRefused
from meshvpn.streams import mux as sm

MAX_DATA = 494


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


class Collect(protocol.Protocol):
    def __init__(self):
        self.data = []
        self.lost = defer.Deferred()
        self.readLost = False

    def dataReceived(self, data):
        self.data.append(data)

    def readConnectionLost(self):
        self.readLost = True

    def connectionLost(self, reason):
        self.lost.callback(reason.value)


def tcpConnectAccept(stream, host, port):
    """An exit accept that connects on loopback (tests only: no policy)."""
    from meshvpn.streams.circuitstream import StreamOnCircuit
    from meshvpn.exit.direct import TCPStream
    from meshvpn.streams.splice import splice

    onCircuit, tcp = StreamOnCircuit(), TCPStream()
    stream.attach(onCircuit)
    d = endpoints.TCP4ClientEndpoint(reactor, host, port).connect(protocol.Factory.forProtocol(lambda: tcp))
    return d.addCallback(lambda _: splice(onCircuit, tcp))


class EchoUntilEOF(protocol.Protocol):
    def dataReceived(self, data):
        self.transport.write(data)

    def connectionLost(self, reason):
        pass


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
        stream.loseConnection()
        reason = yield app.lost
        self.assertEqual(reason.reason, sm.REASON_DONE)
        self.assertEqual(self.pipe.origin.streams, {})
        self.assertEqual(self.pipe.origin.violations + self.pipe.exit.violations, 0)
        # Never more than a window of DATA cells outstanding in either direction.
        self.assertLessEqual(stream.packageWindow, sm.STREAM_WINDOW)

    @defer.inlineCallbacks
    def test_serverHalfClose(self):
        class SayAndShut(protocol.Protocol):
            def connectionMade(self):
                self.transport.write(b"hello")
                self.transport.loseWriteConnection() if hasattr(self.transport, "loseWriteConnection") else None

        port = yield self.listen(SayAndShut)
        app = Collect()
        stream = yield self.pipe.origin.openStream("127.0.0.1", port, app)
        while not app.readLost:
            yield deferLater(0.01)
        self.assertEqual(b"".join(app.data), b"hello")
        self.assertEqual(stream.state, sm.StreamState.PEER_FINISHED)
        stream.write(b"still allowed to talk")
        stream.loseConnection()
        yield app.lost

    @defer.inlineCallbacks
    def test_connectionRefusedIsEndReason(self):
        # Port 1 on loopback: nothing listens, the connect is refused.
        exitMux = Pipe(accept=lambda stream, h, p: tcpConnectAccept(stream, h, p).addErrback(
            lambda f: defer.fail(StreamRefused(3))))
        e = yield self.assertFailure(exitMux.origin.openStream("127.0.0.1", 1, Collect()), StreamRefused)
        self.assertEqual(e.reason, 3)


def deferLater(seconds):
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)


class MemoryStreamTests(unittest.TestCase):
    """Deterministic: a task.Clock pump and accept callables that need no network."""

    def setUp(self):
        from twisted.internet.task import Clock

        self.clock = Clock()
        self.accepted = []
        self.pipe = Pipe(accept=self.accept, resolve=self.resolve, clock=self.clock)

    def accept(self, stream, host, port):
        if port == 25:
            return defer.fail(StreamRefused(sm.REASON_EXITPOLICY))
        server = Collect()
        stream.attach(server)
        self.accepted.append((host, port, stream, server))
        return defer.succeed(None)

    def resolve(self, name):
        if name == "nowhere.example":
            return defer.fail(Exception("nxdomain"))
        return defer.succeed([(sm.RESOLVED_IPV4, bytes([198, 18, 0, 9]), 60)])

    def drain(self):
        for _ in range(50):
            self.clock.advance(0)

    def open(self, host="example.org", port=80):
        app = Collect()
        d = self.pipe.origin.openStream(host, port, app)
        self.drain()
        return self.successResultOf(d), app

    def test_beginCarriesHostname(self):
        stream, app = self.open("example.org", 443)
        self.assertEqual(self.accepted[0][:2], ("example.org", 443))
        stream.write(b"GET /")
        self.drain()
        self.assertEqual(b"".join(self.accepted[0][3].data), b"GET /")

    def test_ipv6Target(self):
        self.open("2001:db8::1", 80)
        self.assertEqual(self.accepted[0][:2], ("2001:db8::1", 80))

    def test_policyRejectIsReason(self):
        d = self.pipe.origin.openStream("198.18.0.5", 25, Collect())
        self.drain()
        self.assertEqual(self.failureResultOf(d, StreamRefused).value.reason, sm.REASON_EXITPOLICY)
        self.assertEqual(self.pipe.origin.streams, {})

    def test_windowStopsSenderUntilSendme(self):
        stream, app = self.open()
        server = self.accepted[0][3]
        server.transport.pauseProducing()  # the exit's reader stops: no SENDMEs go back
        stream.write(b"x" * (MAX_DATA * 600))
        self.drain()
        self.assertEqual(len(server.data), sm.STREAM_WINDOW)
        self.assertEqual(stream.packageWindow, 0)
        self.assertGreater(stream._pendingBytes, 0)
        server.transport.resumeProducing()
        self.drain()
        self.assertEqual(sum(map(len, server.data)), MAX_DATA * 600)

    def test_producerPausedWhenBufferFull(self):
        stream, app = self.open()
        self.accepted[0][3].transport.pauseProducing()
        feeder = StringTransport()
        stream.registerProducer(feeder, True)
        stream.write(b"y" * (MAX_DATA * sm.STREAM_WINDOW + sm.PAUSE_ABOVE + 1))
        self.assertEqual(feeder.producerState, "paused")
        self.accepted[0][3].transport.resumeProducing()
        self.drain()
        self.assertEqual(feeder.producerState, "producing")

    def test_peerOverrunningWindowIsViolation(self):
        stream, app = self.open()
        stream.pauseProducing()  # our reader is slow: we stop acknowledging
        for _ in range(sm.STREAM_WINDOW + 1):
            self.pipe.origin.relayReceived(sm.DATA, stream.streamId, b"z")
        self.assertEqual(stream.state, sm.StreamState.CLOSED)
        self.assertEqual(self.successResultOf(app.lost).reason, sm.REASON_TORPROTOCOL)

    def test_circuitClosedFailsEverything(self):
        stream, app = self.open()
        pending = self.pipe.origin.openStream("example.net", 80, Collect())
        self.pipe.origin.circuitClosed(sm.REASON_DESTROY)
        self.assertEqual(self.successResultOf(app.lost).reason, sm.REASON_DESTROY)
        self.assertEqual(self.failureResultOf(pending, StreamRefused).value.reason, sm.REASON_DESTROY)
        later = self.pipe.origin.openStream("example.net", 80, Collect())
        self.failureResultOf(later, StreamRefused)

    def test_resolve(self):
        d = self.pipe.origin.resolve("example.org")
        self.drain()
        self.assertEqual(self.successResultOf(d), [(sm.RESOLVED_IPV4, bytes([198, 18, 0, 9]), 60)])
        d = self.pipe.origin.resolve("nowhere.example")
        self.drain()
        self.assertEqual(self.successResultOf(d)[0][0], sm.RESOLVED_ERROR_TRANSIENT)

    def test_originEndsWhileExitConnecting(self):
        pending = defer.Deferred()
        self.pipe.exit._accept = lambda stream, h, p: pending
        d = self.pipe.origin.openStream("example.org", 80, Collect())
        self.drain()
        sid = next(iter(self.pipe.exit.streams))
        self.pipe.exit.relayReceived(sm.END, sid, bytes([sm.REASON_DONE]))
        self.assertEqual(self.pipe.exit.streams, {})
        pending.callback(None)  # connect completes late: nothing is sent for the dead stream
        self.assertNotIn(sm.CONNECTED, [c for _, c, _, _ in self.pipe.log])
        if not d.called:
            d.cancel()
            self.failureResultOf(d, defer.CancelledError)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=600))
    def test_hostileBeginNeverCrashes(self, body):
        exitMux = sm.StreamMux(lambda c, s, b: None, MAX_DATA, accept=lambda *a: defer.succeed(None))
        exitMux.relayReceived(sm.BEGIN, 7, body)
        try:
            sm.parseBegin(body)
        except sm.StreamProtocolError:
            self.assertEqual(exitMux.streams, {})

    @settings(max_examples=300, deadline=None)
    @given(st.integers(0, 255), st.integers(0, 65535), st.binary(max_size=600))
    def test_hostileRelayMessagesNeverCrash(self, command, sid, body):
        stream, app = self.open()
        self.pipe.origin.relayReceived(command, sid, body)
        self.pipe.origin.relayReceived(command, stream.streamId, body)
        self.pipe.exit.relayReceived(command, sid, body)
        self.drain()

    @given(st.binary(max_size=300))
    def test_resolvedParser(self, body):
        try:
            answers = sm.parseResolved(body)
        except sm.StreamProtocolError:
            return
        self.assertEqual(sm.encodeResolved(answers), body)


class CircuitWindowTests(unittest.TestCase):
    def test_streamsWaitForCircuitWindow(self):
        sent = []
        room = [3]

        def send(command, sid, body):
            if command == sm.DATA:
                room[0] -= 1
            sent.append((command, bytes(body)))

        mux = sm.StreamMux(send, MAX_DATA, circuitRoom=lambda: room[0])
        stream = sm.CircuitStream(mux, 1, sm.StreamState.OPEN)
        mux.streams[1] = stream
        stream.attach(Collect())
        stream.write(b"a" * (MAX_DATA * 5 + 10))
        self.assertEqual(len([c for c, _ in sent if c == sm.DATA]), 3)
        room[0] = 10
        mux.circuitWindowOpened()
        data = b"".join(b for c, b in sent if c == sm.DATA)
        self.assertEqual(data, b"a" * (MAX_DATA * 5 + 10))


class ExitGlueTests(unittest.TestCase):
    """The exit's accept/resolve glue: connector + TCPStream + splice, and RESOLVED answers."""

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
        pipe = Pipe(accept=lambda stream, h, p: accept(circuit, stream, h, p))
        app = Collect()
        stream = yield pipe.origin.openStream("127.0.0.1", port.getHost().port, app)
        payload = os.urandom(300_000)
        stream.write(payload)
        while sum(map(len, app.data)) < len(payload):
            yield deferLater(0.01)
        self.assertEqual(b"".join(app.data), payload)
        self.assertEqual(limiter.status()["circuits"][str(id(circuit))]["bytes_in"], len(payload))
        stream.loseConnection()
        reason = yield app.lost
        self.assertEqual(reason.reason, sm.REASON_DONE)

    @defer.inlineCallbacks
    def test_defaultPolicyRefusesLoopback(self):
        from meshvpn.exit.connect import ExitConnector
        from meshvpn.exit.policy import defaultExitPolicy
        from meshvpn.exit.streams import exitAcceptor

        accept = exitAcceptor(ExitConnector(reactor, None, defaultExitPolicy("")))
        pipe = Pipe(accept=lambda stream, h, p: accept(None, stream, h, p))
        e = yield self.assertFailure(pipe.origin.openStream("127.0.0.1", 80, Collect()), StreamRefused)
        self.assertEqual(e.reason, sm.REASON_EXITPOLICY)

    def test_resolveGlue(self):
        from meshvpn.exit.streams import _fromReverse, exitResolver

        class Resolver:
            def resolve(self, name):
                return defer.succeed(["198.18.0.7", "2001:db8::7"])

            def resolvePTR(self, address):
                return defer.succeed([f"host-{address}.example"])

        resolve = exitResolver(Resolver())
        answers = self.successResultOf(resolve("example.org"))
        self.assertEqual([a[0] for a in answers], [sm.RESOLVED_IPV4, sm.RESOLVED_IPV6])
        names = self.successResultOf(resolve("7.0.18.198.in-addr.arpa"))
        self.assertEqual(names[0][1], b"host-198.18.0.7.example")
        self.assertEqual(_fromReverse("7.0.18.198.in-addr.arpa"), "198.18.0.7")
        import ipaddress

        self.assertEqual(_fromReverse(ipaddress.ip_address("2001:db8::7").reverse_pointer), "2001:db8::7")
        self.assertEqual(self.successResultOf(resolve("x.in-addr.arpa"))[0][0], sm.RESOLVED_ERROR)
