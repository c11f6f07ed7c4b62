"""Tests for the exit's connector (meshvpn.exit.connect) and direct streams (meshvpn.exit.direct).

Loopback is 'private', which the default policy rejects: tests that really
connect pass an explicit permissive policy; the default policy's refusals are
tested as such.
"""

import hashlib
import os

from twisted.internet import defer, error, protocol, task
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial import unittest

from meshvpn.client import socksparse as sp
from meshvpn.client.socks import SOCKSService
from meshvpn.client.socksparse import Command, Reply
from meshvpn.errors import ResolveFailed, StreamRefused
from meshvpn.exit.connect import ExitConnector
from meshvpn.exit.direct import DirectStreamOpener
from meshvpn.exit.dns import ExitResolver
from meshvpn.exit.policy import ExitPolicy, defaultExitPolicy
from meshvpn.onion.endreasons import EndReason
from meshvpn.ratelimit import BandwidthLimiter

PERMISSIVE = ExitPolicy.fromText("reject *:25,accept *:*")


class TableResolver:
    def __init__(self, table):
        self.table = table

    def resolve(self, name):
        v = self.table.get(name)
        if v is None:
            return defer.fail(ResolveFailed(name, False))
        return defer.succeed(list(v))

    def resolvePTR(self, address):
        return defer.fail(ResolveFailed(address, False))


class ConnectorDecisionTests(unittest.TestCase):
    """The decision, on a MemoryReactor: nothing leaves the process."""

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.resolver = TableResolver({"www.example.com": ["198.18.0.10", "2001:db8::10"], "inside.example.com": ["10.0.0.1"]})

    def connector(self, policy):
        return ExitConnector(self.reactor, self.resolver, policy, connectTimeout=5)

    def refusedReason(self, d):
        return self.failureResultOf(d, StreamRefused).value.reason

    def test_defaultPolicyRefusesLoopback(self):
        d = self.connector(defaultExitPolicy()).connect("127.0.0.1", 80, protocol.Factory.forProtocol(protocol.Protocol))
        self.assertEqual(self.refusedReason(d), EndReason.EXITPOLICY)
        self.assertEqual(self.reactor.tcpClients, [])

    def test_defaultPolicyRefusesPort(self):
        d = self.connector(defaultExitPolicy()).connect("198.18.0.1", 25, protocol.Factory())
        self.assertEqual(self.refusedReason(d), EndReason.EXITPOLICY)

    def test_nameResolvingToPrivateIsExitPolicy(self):
        resolver = ExitResolver(task.Clock(), _StaticUpstream("10.0.0.1"), defaultExitPolicy())
        c = ExitConnector(self.reactor, resolver, defaultExitPolicy())
        d = c.connect("inside.example.com", 80, protocol.Factory())
        self.assertEqual(self.refusedReason(d), EndReason.EXITPOLICY)
        self.assertEqual(self.reactor.tcpClients, [])

    def test_policyCheckedAfterResolution(self):
        # Even a resolver that lets private answers through cannot get them past the connector.
        d = self.connector(defaultExitPolicy()).connect("inside.example.com", 80, protocol.Factory())
        self.assertEqual(self.refusedReason(d), EndReason.EXITPOLICY)

    def test_resolveFailed(self):
        d = self.connector(PERMISSIVE).connect("nx.example.com", 80, protocol.Factory())
        self.assertEqual(self.refusedReason(d), EndReason.RESOLVEFAILED)

    def test_badPort(self):
        for port in (0, 65536, "80"):
            d = self.connector(PERMISSIVE).connect("198.18.0.1", port, protocol.Factory())
            self.assertEqual(self.refusedReason(d), EndReason.EXITPOLICY)

    def _failWith(self, exc, expected):
        n = len(self.reactor.tcpClients)
        d = self.connector(PERMISSIVE).connect("www.example.com", 443, protocol.Factory())
        host, port, factory, timeout, _ = self.reactor.tcpClients[n]
        self.assertEqual((host, port, timeout), ("198.18.0.10", 443, 5))
        factory.clientConnectionFailed(None, Failure(exc))
        # The second address is tried too, then the reason is reported.
        host, port, factory, timeout, _ = self.reactor.tcpClients[n + 1]
        self.assertEqual(host, "2001:db8::10")
        factory.clientConnectionFailed(None, Failure(exc))
        self.assertEqual(self.refusedReason(d), expected)

    def test_refused(self):
        self._failWith(error.ConnectionRefusedError(), EndReason.CONNECTREFUSED)

    def test_timeout(self):
        self._failWith(error.TimeoutError(), EndReason.TIMEOUT)
        self._failWith(error.TCPTimedOutError(), EndReason.TIMEOUT)

    def test_noRoute(self):
        self._failWith(error.NoRouteError(), EndReason.NOROUTE)
        self._failWith(error.ConnectError(osError=101), EndReason.NOROUTE)  # ENETUNREACH

    def test_other(self):
        self._failWith(error.ConnectError("weird"), EndReason.MISC)


class _StaticUpstream:
    def __init__(self, address):
        self.address = address

    def lookupAddress(self, name):
        from twisted.names import dns

        rr = dns.RRHeader(name, dns.A, dns.IN, 60, dns.Record_A(self.address, 60))
        return defer.succeed(([rr], [], []))

    def lookupIPV6Address(self, name):
        return defer.succeed(([], [], []))


class _Sender(protocol.Protocol):
    """The loopback 'web server': sends its payload, then closes."""

    def connectionMade(self):
        self.transport.write(self.factory.payload)
        self.transport.loseConnection()


class _Echo(protocol.Protocol):
    def dataReceived(self, data):
        self.transport.write(data)

    def connectionLost(self, reason):
        lost = self.factory.lost
        if lost is not None and not lost.called:
            lost.callback(None)


class _EchoFactory(protocol.Factory):
    protocol = _Echo
    lost = None  # a Deferred fired when a connection ends, if a test sets one


class _SOCKSClient(protocol.Protocol):
    """A minimal SOCKS5 client: CONNECT, then collect everything."""

    def __init__(self, host, port, send=b""):
        self.host, self.port, self.send = host, port, send
        self.buf = b""
        self.reply = None
        self.body = []
        self.done = defer.Deferred()

    def connectionMade(self):
        self.transport.write(sp.encodeGreeting([0]) + sp.encodeRequest(Command.CONNECT, self.host, self.port))

    def dataReceived(self, data):
        if self.reply is not None:
            self.body.append(data)
            return
        self.buf += data
        if len(self.buf) >= 2 and self.buf[:2] == b"\x05\x00":
            parsed = sp.parseReply(self.buf[2:])
            if parsed is not None:
                (self.reply, _, _), used = parsed
                rest = self.buf[2 + used :]
                if rest:
                    self.body.append(rest)
                if self.reply == Reply.SUCCEEDED and self.send:
                    self.transport.write(self.send)

    def connectionLost(self, reason):
        self.done.callback((self.reply, b"".join(self.body)))


class LoopbackTests(unittest.TestCase):
    """Real TCP on 127.0.0.1 only."""

    def setUp(self):
        from twisted.internet import reactor

        self.reactor = reactor

    def listen(self, factory):
        port = self.reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port

    @defer.inlineCallbacks
    def test_connects(self):
        f = _EchoFactory()
        port = self.listen(f)
        c = ExitConnector(self.reactor, TableResolver({}), PERMISSIVE)
        p = yield c.connect("127.0.0.1", port, protocol.Factory.forProtocol(protocol.Protocol))
        self.assertTrue(p.transport.connected)
        p.transport.loseConnection()

    @defer.inlineCallbacks
    def test_refusedOnClosedPort(self):
        listening = self.reactor.listenTCP(0, _EchoFactory(), interface="127.0.0.1")
        port = listening.getHost().port
        yield listening.stopListening()
        c = ExitConnector(self.reactor, TableResolver({}), PERMISSIVE)
        with self.assertRaises(StreamRefused) as cm:
            yield c.connect("127.0.0.1", port, protocol.Factory.forProtocol(protocol.Protocol))
        self.assertEqual(cm.exception.reason, EndReason.CONNECTREFUSED)

    @defer.inlineCallbacks
    def _throughSOCKS(self, policy, targetPort, send=b"", host="127.0.0.1", limiter=None):
        connector = ExitConnector(self.reactor, TableResolver({"web.test.invalid": ["127.0.0.1"]}), policy)
        opener = DirectStreamOpener(connector, connector.resolver, (lambda key: limiter.circuit(1)) if limiter else None)
        socks = SOCKSService(self.reactor, opener, ("127.0.0.1", 0))
        socks.startService()
        self.addCleanup(socks.stopService)
        yield socks.whenListening
        client = _SOCKSClient(host, targetPort, send)
        yield protocol.ClientCreator(self.reactor, lambda: client).connectTCP("127.0.0.1", socks.port.getHost().port)
        result = yield client.done
        return result

    @defer.inlineCallbacks
    def test_socksDownloadByteExact(self):
        payload = os.urandom(3 * 1024 * 1024)
        f = protocol.Factory.forProtocol(_Sender)
        f.payload = payload
        port = self.listen(f)
        reply, body = yield self._throughSOCKS(PERMISSIVE, port, host="web.test.invalid")
        self.assertEqual(reply, Reply.SUCCEEDED)
        self.assertEqual(hashlib.sha256(body).hexdigest(), hashlib.sha256(payload).hexdigest())

    @defer.inlineCallbacks
    def test_socksEcho(self):
        echo = _EchoFactory()
        echo.lost = defer.Deferred()
        port = self.listen(echo)
        # The echo server never closes; the client closes after its echo.
        connector = ExitConnector(self.reactor, TableResolver({}), PERMISSIVE)
        socks = SOCKSService(self.reactor, DirectStreamOpener(connector, connector.resolver), ("127.0.0.1", 0))
        socks.startService()
        self.addCleanup(socks.stopService)
        yield socks.whenListening
        client = _SOCKSClient("127.0.0.1", port, b"ping" * 1000)
        got = defer.Deferred()
        client.dataReceived = _wrap(client.dataReceived, client, 4000, got)
        yield protocol.ClientCreator(self.reactor, lambda: client).connectTCP("127.0.0.1", socks.port.getHost().port)
        yield got
        self.assertEqual(b"".join(client.body), b"ping" * 1000)
        client.transport.loseConnection()
        yield client.done
        # Closing the app's socket ends the stream, which closes the target.
        yield echo.lost
        for _ in range(100):
            if socks.status()["active_connections"] == 0:
                break
            yield task.deferLater(self.reactor, 0.001, lambda: None)
        self.assertEqual(socks.status()["active_connections"], 0)

    @defer.inlineCallbacks
    def test_socksOverIPv6Loopback(self):
        payload = os.urandom(100 * 1024)
        f = protocol.Factory.forProtocol(_Sender)
        f.payload = payload
        web = self.reactor.listenTCP(0, f, interface="::1")
        self.addCleanup(web.stopListening)
        connector = ExitConnector(self.reactor, TableResolver({"v6.test.invalid": ["::1"]}), PERMISSIVE)
        socks = SOCKSService(self.reactor, DirectStreamOpener(connector, connector.resolver), ("::1", 0))
        socks.startService()
        self.addCleanup(socks.stopService)
        yield socks.whenListening
        for host in ("::1", "v6.test.invalid"):
            client = _SOCKSClient(host, web.getHost().port)
            yield protocol.ClientCreator(self.reactor, lambda: client).connectTCP("::1", socks.port.getHost().port)
            reply, body = yield client.done
            self.assertEqual((reply, body), (Reply.SUCCEEDED, payload))

    @defer.inlineCallbacks
    def test_socksDefaultPolicyNotAllowed(self):
        # The real default policy: loopback is private, so the SOCKS app gets
        # 0x02 "connection not allowed by ruleset".
        port = self.listen(_EchoFactory())
        reply, body = yield self._throughSOCKS(defaultExitPolicy(), port)
        self.assertEqual(reply, Reply.NOT_ALLOWED)

    @defer.inlineCallbacks
    def test_socksRejectedPortNotAllowed(self):
        reply, _ = yield self._throughSOCKS(PERMISSIVE, 25)
        self.assertEqual(reply, Reply.NOT_ALLOWED)

    @defer.inlineCallbacks
    def test_socksBandwidthAccounted(self):
        payload = os.urandom(200 * 1024)
        f = protocol.Factory.forProtocol(_Sender)
        f.payload = payload
        port = self.listen(f)
        limiter = BandwidthLimiter(self.reactor, circuitRate=50 * 1024 * 1024, circuitBurst=64 * 1024)
        reply, body = yield self._throughSOCKS(PERMISSIVE, port, limiter=limiter)
        self.assertEqual(body, payload)
        self.assertEqual(limiter.status()["circuits"]["1"]["bytes_in"], len(payload))
        self.assertGreaterEqual(limiter.status()["circuits"]["1"]["pauses"], 1)


def _wrap(original, client, expected, got):
    def dataReceived(data):
        original(data)
        if client.reply is not None and sum(map(len, client.body)) >= expected and not got.called:
            got.callback(None)

    return dataReceived
