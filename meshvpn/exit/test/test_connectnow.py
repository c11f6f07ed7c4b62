"""Tests for the exit's same-turn TCP connect (meshvpn.exit.connectnow), on real loopback sockets."""

import socket

from twisted.internet import defer, error, protocol, reactor
from twisted.internet.interfaces import ITCPTransport
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from meshvpn.exit import connectnow
from meshvpn.exit.budget import ExitBudget
from meshvpn.exit.connect import ExitConnector
from meshvpn.exit.policy import ExitPolicy
from meshvpn.exit.streams import exitAcceptor
from meshvpn.onion.endreasons import EndReason

PERMISSIVE = ExitPolicy.fromText("accept *:*")


class _Echo(protocol.Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class _Client(protocol.Protocol):
    def __init__(self):
        self.made = False
        self.got = b""
        self.echoed = defer.Deferred()
        self.lost = defer.Deferred()

    def connectionMade(self):
        self.made = True

    def dataReceived(self, data):
        self.got += data
        if len(self.got) >= 5 and not self.echoed.called:
            self.echoed.callback(self.got)

    def connectionLost(self, reason):
        self.lost.callback(None)


def _factory():
    return protocol.Factory.forProtocol(_Client)


class ConnectNowTests(unittest.TestCase):
    def listen(self, interface="127.0.0.1"):
        f = protocol.Factory.forProtocol(_Echo)
        f.noisy = False
        port = reactor.listenTCP(0, f, interface=interface)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def hangingPort(self):
        """
        A loopback port whose SYNs go unanswered: a listener with a backlog
        of 0 that never accepts holds one connection, then drops new SYNs.
        """
        s = socket.socket()
        self.addCleanup(s.close)
        s.bind(("127.0.0.1", 0))
        s.listen(0)
        port = s.getsockname()[1]
        filler = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.addCleanup(filler.close)
        return port

    @defer.inlineCallbacks
    def roundTrip(self, client):
        self.assertTrue(client.made)
        self.assertTrue(ITCPTransport.providedBy(client.transport))
        client.transport.setTcpNoDelay(True)
        client.transport.write(b"hello")
        self.assertEqual((yield client.echoed), b"hello")
        client.transport.loseConnection()
        yield client.lost

    @defer.inlineCallbacks
    def test_connectsInTheSameTurnOnLoopback(self):
        # The kernel finishes a loopback handshake inside connect(): the
        # protocol is connected before connectTCP returns, no reactor turn
        # between.  (Allowing a few tries: a loaded kernel may defer the
        # handshake's softirq work, and then the reactor's path is taken.)
        port = self.listen()
        sameTurn = 0
        for _ in range(5):
            d = connectnow.connectTCP(reactor, "127.0.0.1", port, _factory(), 5)
            sameTurn += d.called
            yield self.roundTrip((yield d))
        self.assertGreater(sameTurn, 0)

    @defer.inlineCallbacks
    def test_connectsWhenTheReactorMustWait(self):
        port = self.listen()
        d = connectnow.connectTCP(reactor, "127.0.0.1", port, _factory(), 5, writable=lambda skt: False)
        self.assertFalse(d.called)
        yield self.roundTrip((yield d))
        self.assertNotIn(d, [getattr(w, "deferred", None) for w in reactor.getWriters()])

    @defer.inlineCallbacks
    def test_ipv6(self):
        try:
            port = self.listen("::1")
        except error.CannotListenError:
            raise unittest.SkipTest("no IPv6 loopback here")
        yield self.roundTrip((yield connectnow.connectTCP(reactor, "::1", port, _factory(), 5)))

    def closedPort(self):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        return port

    @defer.inlineCallbacks
    def test_refused(self):
        for writable in (connectnow.writableNow, lambda skt: False):
            d = connectnow.connectTCP(reactor, "127.0.0.1", self.closedPort(), _factory(), 5, writable=writable)
            with self.assertRaises(error.ConnectionRefusedError):
                yield d

    @defer.inlineCallbacks
    def test_timeout(self):
        d = connectnow.connectTCP(reactor, "127.0.0.1", self.hangingPort(), _factory(), 0.3)
        with self.assertRaises(error.TimeoutError):
            yield d
        self.assertEqual([w for w in reactor.getWriters() if isinstance(w, connectnow._Attempt)], [])

    def test_cancel(self):
        d = connectnow.connectTCP(reactor, "127.0.0.1", self.hangingPort(), _factory(), 30)
        attempts = [w for w in reactor.getWriters() if isinstance(w, connectnow._Attempt)]
        self.assertEqual(len(attempts), 1)
        d.cancel()
        self.failureResultOf(d, error.ConnectingCancelledError)
        self.assertEqual([w for w in reactor.getWriters() if isinstance(w, connectnow._Attempt)], [])
        self.assertEqual(attempts[0].fileno(), -1)
        self.assertFalse(attempts[0]._timer.active())  # trial would also call a live timer a dirty reactor

    @defer.inlineCallbacks
    def test_noProtocol(self):
        port = self.listen()
        factory = protocol.Factory()
        factory.buildProtocol = lambda addr: None
        for writable in (connectnow.writableNow, lambda skt: False):
            with self.assertRaises(error.NoProtocol):
                yield connectnow.connectTCP(reactor, "127.0.0.1", port, factory, 5, writable=writable)


class QuietExitTests(unittest.TestCase):
    """A BEGIN's connection goes through the same-turn connect and writes no log line."""

    @defer.inlineCallbacks
    def test_beginLogsNothing(self):
        f = protocol.Factory.forProtocol(_Echo)
        f.noisy = False
        listening = reactor.listenTCP(0, f, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        budget = ExitBudget(maxSockets=10)
        accept = exitAcceptor(ExitConnector(reactor, None, PERMISSIVE), budget=budget)
        stream = yield accept(object(), "127.0.0.1", listening.getHost().port)
        self.assertTrue(ITCPTransport.providedBy(stream.transport))
        lost = defer.Deferred()
        stream.connectionLost = lambda reason, orig=stream.connectionLost: (orig(reason), lost.callback(None))
        stream.close(EndReason.DONE)
        yield lost
        self.assertEqual(budget.held(0), 0)
        self.assertEqual([e.get("log_format") for e in events], [])
