"""Tests for the SOCKS5 server (meshvpn.client.socks) and its parser (socksparse)."""

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IHalfCloseableProtocol, ITCPTransport
from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from meshvpn.client import socksparse as sp
from meshvpn.client.socks import (
    END_REASON_REPLY,
    TRANSITIONS,
    Event,
    HANDSHAKE_TIMEOUT,
    MAX_EARLY_DATA, MAX_EARLY_OVERRUN,
    REQUEST_TIMEOUT,
    SOCKSServerFactory,
    SOCKSService,
    State,
    checkListenAddress,
)
from meshvpn.client.socksparse import Command, Reply
from meshvpn.exit.policy import normalizeAddress
from meshvpn.errors import ConfigError, NoPath, StreamRefused
from meshvpn.interfaces import IStatusSource, IStream, IStreamOpener, IStreamReceiver
from meshvpn.onion.endreasons import EndReason


@implementer(IStream)
class FakeStream:
    def __init__(self):
        self.written = []
        self.receiver = None
        self.producer = None
        self.closed = []
        self.halfClosed = False
        self.paused = False

    def write(self, data):
        self.written.append(data)

    def halfClose(self):
        self.halfClosed = True

    def close(self, reason):
        self.closed.append(reason)

    def setReceiver(self, receiver):
        self.receiver = receiver

    def registerProducer(self, producer, streaming):
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False

    def stopProducing(self):
        self.close(EndReason.DONE)


@implementer(IStreamOpener)
class FakeOpener:
    """Records requests; the test fires each Deferred (or answers at once)."""

    def __init__(self, policy=None):
        self.opens = []
        self.resolves = []
        self.ptrs = []
        self.policy = policy

    def openStream(self, host, port, isolationKey, early=None):
        self.early = early
        d = defer.Deferred()
        self.opens.append((host, port, isolationKey, d))
        if self.policy is not None and not self.policy(host, port):
            d.errback(StreamRefused(EndReason.EXITPOLICY))
        return d

    def resolve(self, name, isolationKey):
        d = defer.Deferred()
        self.resolves.append((name, isolationKey, d))
        return d

    def resolvePTR(self, address, isolationKey):
        d = defer.Deferred()
        self.ptrs.append((address, isolationKey, d))
        return d


def greeting(*methods):
    return sp.encodeGreeting(list(methods or [0]))


class SOCKSTestCase(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.opener = FakeOpener()
        self.factory = SOCKSServerFactory(self.opener, self.clock)
        self.proto, self.tr = self.connect()

    def connect(self, peer="127.0.0.1"):
        proto = self.factory.buildProtocol(None)
        tr = StringTransport(peerAddress=IPv4Address("TCP", peer, 40000))
        proto.makeConnection(tr)
        return proto, tr

    def take(self, tr=None):
        tr = tr or self.tr
        v = tr.value()
        tr.clear()
        return v

    def handshake(self, proto=None, tr=None, auth=None):
        proto, tr = proto or self.proto, tr or self.tr
        if auth is None:
            proto.dataReceived(greeting(0))
            self.assertEqual(self.take(tr), b"\x05\x00")
        else:
            proto.dataReceived(greeting(0, 2))
            self.assertEqual(self.take(tr), b"\x05\x02")
            proto.dataReceived(sp.encodeAuth(*auth))
            self.assertEqual(self.take(tr), b"\x01\x00")

    def reply(self, data):
        parsed = sp.parseReply(data)
        self.assertIsNotNone(parsed, data)
        (code, host, port), used = parsed
        self.assertEqual(used, len(data))
        return code, host, port


class ConnectTests(SOCKSTestCase):
    def test_interfaces(self):
        self.assertTrue(verifyObject(IStreamReceiver, self.proto))
        self.assertTrue(verifyObject(IHalfCloseableProtocol, self.proto))
        self.assertTrue(verifyObject(IStreamOpener, self.opener))
        self.assertTrue(verifyObject(IStatusSource, SOCKSService(self.clock, self.opener, ("127.0.0.1", 0))))
        self.assertTrue(verifyObject(IStatusSource, self.factory.stats))
        self.assertTrue(verifyObject(IStream, FakeStream()))

    def _connectOK(self, host, port, expectHost):
        self.handshake()
        self.proto.dataReceived(sp.encodeRequest(Command.CONNECT, host, port))
        self.assertEqual(self.proto.state, State.CONNECTING)
        h, p, key, d = self.opener.opens[-1]
        self.assertEqual((h, p), (expectHost, port))
        stream = FakeStream()
        d.callback(stream)
        self.assertEqual(self.reply(self.take()), (Reply.SUCCEEDED, "0.0.0.0", 0))
        self.assertEqual(self.proto.state, State.OPEN)
        return stream

    def test_connectIPv4(self):
        self._connectOK("198.18.0.7", 80, "198.18.0.7")

    def test_connectIPv6(self):
        self._connectOK("2001:db8::7", 443, "2001:db8::7")

    def test_connectDomainNotResolvedLocally(self):
        stream = self._connectOK("www.example.com", 443, "www.example.com")
        self.assertEqual(self.opener.resolves, [])
        self.assertIs(stream.receiver, self.proto)

    def test_domainThatIsAnIPLiteral(self):
        self.handshake()
        raw = b"198.18.0.9"
        self.proto.dataReceived(b"\x05\x01\x00\x03" + bytes([len(raw)]) + raw + b"\x00\x50")
        self.assertEqual(self.opener.opens[-1][:2], ("198.18.0.9", 80))

    def test_dataBothWays(self):
        stream = self._connectOK("198.18.0.7", 80, "198.18.0.7")
        self.proto.dataReceived(b"GET / HTTP/1.0\r\n\r\n")
        self.assertEqual(stream.written, [b"GET / HTTP/1.0\r\n\r\n"])
        stream.receiver.streamDataReceived(b"HTTP/1.0 200 OK\r\n")
        self.assertEqual(self.take(), b"HTTP/1.0 200 OK\r\n")

    def test_backpressureWired(self):
        stream = self._connectOK("198.18.0.7", 80, "198.18.0.7")
        # The stream pauses the app's socket when its window closes...
        self.assertIs(stream.producer, self.tr)
        stream.producer.pauseProducing()
        self.assertEqual(self.tr.producerState, "paused")
        # ...and the app's socket pauses the stream when its buffer fills.
        self.assertIs(self.tr.producer, stream)
        self.assertTrue(self.tr.streaming)

    def test_pipelinedHandshakeAndEarlyData(self):
        self.proto.dataReceived(greeting(0) + sp.encodeRequest(Command.CONNECT, "198.18.0.7", 80) + b"early")
        self.assertEqual(self.take(), b"\x05\x00")
        stream = FakeStream()
        self.opener.opens[-1][3].callback(stream)
        self.assertEqual(stream.written, [b"early"])

    def test_earlyDataBounded(self):
        self.handshake()
        self.proto.dataReceived(sp.encodeRequest(Command.CONNECT, "198.18.0.7", 80))
        for _ in range(MAX_EARLY_DATA // 4096 + 1):
            self.proto.dataReceived(b"x" * 4096)
        self.assertEqual(self.tr.producerState, "paused")
        stream = FakeStream()
        self.opener.opens[-1][3].callback(stream)
        self.assertEqual(sum(map(len, stream.written)), (MAX_EARLY_DATA // 4096 + 1) * 4096)
        self.assertEqual(self.tr.producerState, "producing")

    def test_optimisticDataGoesBeforeConnected(self):
        """
        What the app sends with its CONNECT goes to the stream the opener
        attached at once (optimistic data), and is not written again once
        the stream opens; only what exceeded the optimistic limit follows.
        """
        self.handshake()
        self.proto.dataReceived(sp.encodeRequest(Command.CONNECT, "198.18.0.7", 80) + b"GET / HTTP/1.0\r\n")
        attempt = FakeStream()
        self.opener.early.attach(attempt)
        self.proto.dataReceived(b"\r\n")
        self.assertEqual(b"".join(attempt.written), b"GET / HTTP/1.0\r\n\r\n")
        self.opener.opens[-1][3].callback(attempt)
        self.assertEqual(b"".join(attempt.written), b"GET / HTTP/1.0\r\n\r\n")
        self.assertEqual(self.reply(self.take()), (Reply.SUCCEEDED, "0.0.0.0", 0))

    def test_earlyDataIgnoringThePauseRefused(self):
        """A transport that keeps delivering after the pause cannot make the session hold more without bound."""
        self.handshake()
        self.proto.dataReceived(sp.encodeRequest(Command.CONNECT, "198.18.0.7", 80))
        self.take()
        for _ in range((MAX_EARLY_DATA + MAX_EARLY_OVERRUN) // 4096 + 1):
            self.proto.dataReceived(b"x" * 4096)
        self.assertEqual(self.proto._early.size, 0)
        self.assertTrue(self.tr.disconnecting)
        self.assertEqual(self.take(), sp.encodeReply(Reply.GENERAL_FAILURE))

    def test_streamEndedClosesApp(self):
        stream = self._connectOK("198.18.0.7", 80, "198.18.0.7")
        stream.receiver.streamEnded(EndReason.DONE)
        self.assertTrue(self.tr.disconnecting)

    def test_appCloseEndsStream(self):
        stream = self._connectOK("198.18.0.7", 80, "198.18.0.7")
        self.proto.connectionLost(None)
        self.assertEqual(stream.closed, [EndReason.DONE])
        self.assertEqual(self.factory.stats.active, 0)

    def test_appHalfClosesBeforeConnected(self):
        self.handshake()
        self.proto.dataReceived(sp.encodeRequest(Command.CONNECT, "198.18.0.7", 80) + b"request")
        self.proto.readConnectionLost()
        self.assertFalse(self.tr.disconnecting)
        stream = FakeStream()
        self.opener.opens[-1][3].callback(stream)
        self.assertEqual((stream.written, stream.halfClosed), ([b"request"], True))

    def test_farEndEOFWithoutHalfCloseTransport(self):
        stream = self._connectOK("198.18.0.7", 80, "198.18.0.7")
        stream.receiver.streamReadEnded()
        self.assertTrue(self.tr.disconnecting)

    def test_halfClose(self):
        stream = self._connectOK("198.18.0.7", 80, "198.18.0.7")
        self.proto.readConnectionLost()
        self.assertTrue(stream.halfClosed)
        self.assertFalse(self.tr.disconnecting)
        # The far end finishes too: both halves done, the socket is closed.
        self.tr.loseWriteConnection = lambda: None
        stream.receiver.streamReadEnded()
        self.proto.writeConnectionLost()
        self.assertTrue(self.tr.disconnecting)

    def test_appGoneBeforeConnected(self):
        self.handshake()
        self.proto.dataReceived(sp.encodeRequest(Command.CONNECT, "198.18.0.7", 80))
        d = self.opener.opens[-1][3]
        self.proto.connectionLost(None)
        # The opener's Deferred was cancelled; a stream arriving late anyway
        # is closed at once.
        self.assertTrue(d.called)
        self.assertEqual(self.tr.value(), b"")


class IsolationTests(SOCKSTestCase):
    def _key(self, auth, peer="127.0.0.1"):
        proto, tr = self.connect(peer)
        self.handshake(proto, tr, auth)
        proto.dataReceived(sp.encodeRequest(Command.CONNECT, "198.18.0.7", 80))
        return self.opener.opens[-1][2]

    def test_credentialsIsolate(self):
        a1 = self._key((b"alice", b"x"))
        a2 = self._key((b"alice", b"x"))
        b = self._key((b"bob", b"x"))
        c = self._key((b"alice", b"y"))
        n = self._key(None)
        self.assertEqual(a1, a2)
        self.assertEqual(len({a1, b, c, n}), 4)

    def test_clientAddressIsolates(self):
        self.assertNotEqual(self._key(None, "127.0.0.1"), self._key(None, "127.0.0.2"))

    def test_emptyCredentialsAccepted(self):
        self._key((b"", b""))

    def test_passwordNeverChecked(self):
        self.handshake(auth=(b"u" * 255, b"p" * 255))


class ErrorReplyTests(SOCKSTestCase):
    def _refused(self, reason):
        self.opener.policy = lambda h, p: False
        self.handshake()
        self.opener.policy = None
        self.proto.dataReceived(sp.encodeRequest(Command.CONNECT, "198.18.0.7", 25))
        self.opener.opens[-1][3].errback(StreamRefused(reason))
        code = self.reply(self.take())[0]
        self.assertTrue(self.tr.disconnecting)
        return code

    def test_exitPolicyRejectionIsNotAllowed(self):
        # A policy-rejected target: the exit's END reason EXITPOLICY reaches
        # the app as 0x02 "connection not allowed by ruleset".
        self.opener.policy = lambda host, port: port != 25
        self.handshake()
        self.proto.dataReceived(sp.encodeRequest(Command.CONNECT, "198.18.0.7", 25))
        self.assertEqual(self.reply(self.take())[0], Reply.NOT_ALLOWED)
        self.assertTrue(self.tr.disconnecting)

    def test_endReasonMapping(self):
        expected = {
            EndReason.EXITPOLICY: Reply.NOT_ALLOWED,
            EndReason.RESOLVEFAILED: Reply.HOST_UNREACHABLE,
            EndReason.CONNECTREFUSED: Reply.CONNECTION_REFUSED,
            EndReason.TIMEOUT: Reply.TTL_EXPIRED,
            EndReason.NOROUTE: Reply.NETWORK_UNREACHABLE,
            EndReason.DESTROY: Reply.GENERAL_FAILURE,
            EndReason.MISC: Reply.GENERAL_FAILURE,
        }
        self.assertEqual(set(END_REASON_REPLY), set(EndReason))
        for reason, reply in expected.items():
            self.proto, self.tr = self.connect()
            self.assertEqual(self._refused(reason), reply, reason)

    def test_noPathIsNetworkUnreachable(self):
        self.handshake()
        self.proto.dataReceived(sp.encodeRequest(Command.CONNECT, "198.18.0.7", 80))
        self.opener.opens[-1][3].errback(NoPath())
        self.assertEqual(self.reply(self.take())[0], Reply.NETWORK_UNREACHABLE)

    def test_unexpectedErrorIsGeneralFailure(self):
        self.handshake()
        self.proto.dataReceived(sp.encodeRequest(Command.CONNECT, "198.18.0.7", 80))
        self.opener.opens[-1][3].errback(RuntimeError("bug"))
        self.assertEqual(self.reply(self.take())[0], Reply.GENERAL_FAILURE)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_requestTimeoutIsTTLExpired(self):
        self.handshake()
        self.proto.dataReceived(sp.encodeRequest(Command.CONNECT, "198.18.0.7", 80))
        self.clock.advance(REQUEST_TIMEOUT)
        self.assertEqual(self.reply(self.take())[0], Reply.TTL_EXPIRED)
        self.assertTrue(self.tr.disconnecting)

    def test_handshakeTimeout(self):
        self.proto.dataReceived(b"\x05")
        self.clock.advance(HANDSHAKE_TIMEOUT)
        self.assertTrue(self.tr.disconnecting)
        self.assertEqual(self.tr.value(), b"")

    def _badRequest(self, raw):
        self.handshake()
        self.proto.dataReceived(raw)
        code = self.reply(self.take())[0]
        self.assertTrue(self.tr.disconnecting)
        self.assertEqual(self.opener.opens, [])
        return code

    def test_bindNotSupported(self):
        self.assertEqual(self._badRequest(sp.encodeRequest(Command.BIND, "198.18.0.7", 80)), Reply.COMMAND_NOT_SUPPORTED)

    def test_udpAssociateNotSupported(self):
        self.assertEqual(
            self._badRequest(sp.encodeRequest(Command.UDP_ASSOCIATE, "0.0.0.0", 0)), Reply.COMMAND_NOT_SUPPORTED
        )

    def test_unknownCommand(self):
        self.assertEqual(self._badRequest(b"\x05\x09\x00\x01" + b"\x01\x02\x03\x04\x00\x50"), Reply.COMMAND_NOT_SUPPORTED)

    def test_unknownAddressType(self):
        self.assertEqual(self._badRequest(b"\x05\x01\x00\x02" + b"\x01\x02\x03\x04\x00\x50"), Reply.ADDRESS_TYPE_NOT_SUPPORTED)

    def test_badVersionInRequest(self):
        self.assertEqual(self._badRequest(b"\x04\x01\x00\x01\x01\x02\x03\x04\x00\x50"), Reply.GENERAL_FAILURE)

    def test_reservedByteNotZero(self):
        self.assertEqual(self._badRequest(b"\x05\x01\x01\x01\x01\x02\x03\x04\x00\x50"), Reply.GENERAL_FAILURE)

    def test_badDomain(self):
        for raw in (b"", b"a\x00b.com", b"a..b", b"sp ace.com", b"x" * 64 + b".com"):
            self.proto, self.tr = self.connect()
            req = b"\x05\x01\x00\x03" + bytes([len(raw)]) + raw + b"\x00\x50"
            self.assertEqual(self._badRequest(req), Reply.GENERAL_FAILURE, raw)

    def test_portZero(self):
        self.assertEqual(self._badRequest(sp.encodeRequest(Command.CONNECT, "198.18.0.7", 0)), Reply.GENERAL_FAILURE)

    def test_resolvePTRNeedsAddress(self):
        self.assertEqual(
            self._badRequest(sp.encodeRequest(Command.RESOLVE_PTR, "example.com", 0)), Reply.ADDRESS_TYPE_NOT_SUPPORTED
        )

    def test_notSOCKS5ClosesSilently(self):
        self.proto.dataReceived(b"\x04\x01\x00\x50\x01\x02\x03\x04\x00")
        self.assertEqual(self.tr.value(), b"")
        self.assertTrue(self.tr.disconnecting)

    def test_noAcceptableMethod(self):
        self.proto.dataReceived(greeting(0x01, 0x80))
        self.assertEqual(self.tr.value(), b"\x05\xff")
        self.assertTrue(self.tr.disconnecting)

    def test_badAuthVersion(self):
        self.proto.dataReceived(greeting(2))
        self.take()
        self.proto.dataReceived(b"\x05\x01a\x01b")
        self.assertEqual(self.tr.value(), b"\x01\x01")
        self.assertTrue(self.tr.disconnecting)

    def test_overLimitConnectionsRefused(self):
        self.factory.maxConnections = 2
        self.connect()
        self.assertIsNone(self.factory.buildProtocol(None))
        self.assertEqual(self.factory.status()["refused_over_limit"], 1)


class ResolveTests(SOCKSTestCase):
    def test_resolveAtExit(self):
        self.handshake()
        self.proto.dataReceived(sp.encodeRequest(Command.RESOLVE, "www.example.com", 0))
        name, key, d = self.opener.resolves[-1]
        self.assertEqual(name, "www.example.com")
        d.callback(["198.18.3.4", "2001:db8::1"])
        self.assertEqual(self.reply(self.take()), (Reply.SUCCEEDED, "198.18.3.4", 0))
        self.assertTrue(self.tr.disconnecting)

    def test_resolveIPv6Answer(self):
        self.handshake()
        self.proto.dataReceived(sp.encodeRequest(Command.RESOLVE, "v6.example.com", 0))
        self.opener.resolves[-1][2].callback(["2001:db8::1"])
        self.assertEqual(self.reply(self.take()), (Reply.SUCCEEDED, "2001:db8::1", 0))

    def test_resolveLiteral(self):
        self.handshake()
        self.proto.dataReceived(sp.encodeRequest(Command.RESOLVE, "198.18.0.1", 0))
        self.assertEqual(self.opener.resolves, [])
        self.assertEqual(self.reply(self.take())[:2], (Reply.SUCCEEDED, "198.18.0.1"))

    def test_resolveFailed(self):
        self.handshake()
        self.proto.dataReceived(sp.encodeRequest(Command.RESOLVE, "nx.example.com", 0))
        self.opener.resolves[-1][2].errback(StreamRefused(EndReason.RESOLVEFAILED))
        self.assertEqual(self.reply(self.take())[0], Reply.HOST_UNREACHABLE)

    def test_resolvePTR(self):
        self.handshake()
        self.proto.dataReceived(sp.encodeRequest(Command.RESOLVE_PTR, "198.18.3.4", 0))
        addr, key, d = self.opener.ptrs[-1]
        self.assertEqual(addr, "198.18.3.4")
        d.callback(["host.example.com"])
        self.assertEqual(self.reply(self.take()), (Reply.SUCCEEDED, "host.example.com", 0))

    def test_dataAfterResolveRefused(self):
        self.handshake()
        self.proto.dataReceived(sp.encodeRequest(Command.RESOLVE, "www.example.com", 0) + b"junk")
        self.assertEqual(self.reply(self.take())[0], Reply.GENERAL_FAILURE)
        self.assertTrue(self.tr.disconnecting)


class ListenTests(unittest.TestCase):
    def test_loopbackAllowed(self):
        checkListenAddress("127.0.0.1", False)
        checkListenAddress("::1", False)

    def test_remoteNeedsFlag(self):
        e = self.assertRaises(ConfigError, checkListenAddress, "0.0.0.0", False)
        self.assertIn("--socks-allow-remote", str(e))
        checkListenAddress("0.0.0.0", True)
        self.assertRaises(ConfigError, SOCKSService, task.Clock(), FakeOpener(), ("198.18.0.1", 1080))


class ClientSettingsTests(unittest.TestCase):
    def parse(self, *argv):
        from meshvpn.roles.client import Options

        o = Options()
        o.parseOptions(["--data-dir", self.mktemp(), *argv])
        return o.settings

    def test_defaultIsLoopback(self):
        s = self.parse()
        self.assertEqual((s["socks_listen"], s["socks_allow_remote"]), (("127.0.0.1", 1080), False))

    def test_remoteBindRefusedWithoutFlag(self):
        e = self.assertRaises(SystemExit, self.parse, "--socks-listen", "0.0.0.0:1080")
        self.assertIn("--socks-allow-remote", str(e))
        self.assertRaises(SystemExit, self.parse, "--socks-listen", "[::]:1080")

    def test_remoteBindWithFlag(self):
        s = self.parse("--socks-listen", "0.0.0.0:1080", "--socks-allow-remote")
        self.assertEqual((s["socks_listen"], s["socks_allow_remote"]), (("0.0.0.0", 1080), True))


class ParserPropertyTests(unittest.TestCase):
    """Whatever arrives, in whatever pieces: a reply or a close, never a crash."""

    @settings(max_examples=400, deadline=None)
    @given(st.binary(max_size=600), st.integers(1, 50))
    def test_arbitraryBytes(self, data, chunk):
        clock = task.Clock()
        opener = FakeOpener()
        proto = SOCKSServerFactory(opener, clock).buildProtocol(None)
        tr = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1))
        proto.makeConnection(tr)
        for i in range(0, len(data), chunk):
            proto.dataReceived(data[i : i + chunk])
        self.assertLessEqual(len(proto._buffer), sp.MAX_HANDSHAKE)
        for host, port, key, d in opener.opens:
            self.assertTrue(1 <= port <= 65535)
            self.assertIsInstance(host, str)
        clock.advance(REQUEST_TIMEOUT)
        proto.connectionLost(None)

    @settings(max_examples=400, deadline=None)
    @given(st.binary(min_size=0, max_size=300))
    def test_requestAfterHandshake(self, body):
        clock = task.Clock()
        opener = FakeOpener()
        proto = SOCKSServerFactory(opener, clock).buildProtocol(None)
        tr = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1))
        proto.makeConnection(tr)
        proto.dataReceived(greeting(0))
        tr.clear()
        proto.dataReceived(b"\x05" + body)
        out = tr.value()
        if out:
            # Any reply is a well-formed SOCKS5 reply with a known code.
            (code, host, port), used = sp.parseReply(out)
            self.assertEqual(used, len(out))
            self.assertIn(code, list(Reply))
            self.assertTrue(tr.disconnecting)
        else:
            self.assertIn(proto.state, (State.REQUEST, State.CONNECTING, State.RESOLVING))

    @settings(max_examples=300, deadline=None)
    @given(
        st.sampled_from([Command.CONNECT, Command.RESOLVE]),
        st.one_of(
            st.ip_addresses().map(str),
            st.from_regex(r"\A[a-z0-9]{1,20}(\.[a-z0-9]{1,20}){0,3}\Z"),
        ),
        st.integers(1, 65535),
    )
    def test_requestRoundTrip(self, command, host, port):
        req, used = sp.parseRequest(sp.encodeRequest(command, host, port))
        self.assertEqual((req.command, req.port), (command, port))
        # IPv4-mapped IPv6 becomes IPv4, so exit policies see one form.
        self.assertEqual(req.host, str(normalizeAddress(host)) if ":" in host else host)
        self.assertEqual(used, len(sp.encodeRequest(command, host, port)))

    def test_ipv4MappedIPv6(self):
        raw = b"\x05\x01\x00\x04" + bytes(10) + b"\xff\xff" + bytes([198, 18, 0, 1]) + struct.pack("!H", 80)
        req, _ = sp.parseRequest(raw)
        self.assertEqual(req.host, "198.18.0.1")

    def test_incompleteReturnsNone(self):
        full = sp.encodeRequest(Command.CONNECT, "example.com", 80)
        for i in range(len(full)):
            self.assertIsNone(sp.parseRequest(full[:i]), i)


class _EchoStream(FakeStream):
    def write(self, data):
        super().write(data)
        self.receiver.streamDataReceived(data.upper())


class _AppClient:
    """The application side over iosim: raw bytes in, everything recorded."""

    def __init__(self):
        from twisted.internet.protocol import Protocol

        self.received = bytearray()
        outer = self

        class P(Protocol):
            def dataReceived(self, data):
                outer.received += data

        self.protocol = P()


class IOSimTests(unittest.TestCase):
    def test_wholeExchangeOverIOSim(self):
        from twisted.test import iosim

        clock = task.Clock()
        opener = FakeOpener()
        factory = SOCKSServerFactory(opener, clock)
        app = _AppClient()
        client, server, pump = iosim.connectedServerAndClient(lambda: factory.buildProtocol(None), lambda: app.protocol)
        client.transport.write(greeting(0, 2) + sp.encodeAuth(b"tab1", b"") + sp.encodeRequest(Command.CONNECT, "example.com", 443))
        pump.flush()
        self.assertEqual(bytes(app.received), b"\x05\x02\x01\x00")
        host, port, key, d = opener.opens[0]
        self.assertEqual((host, port, key[2]), ("example.com", 443, (b"tab1", b"")))
        d.callback(_EchoStream())
        pump.flush()
        self.assertEqual(bytes(app.received[4:]), sp.encodeReply(Reply.SUCCEEDED))
        del app.received[:]
        client.transport.write(b"hello")
        pump.flush()
        self.assertEqual(bytes(app.received), b"HELLO")
        client.transport.loseConnection()
        pump.flush()
        self.assertEqual(factory.stats.active, 0)


_EVENTS = st.lists(
    st.one_of(
        st.tuples(st.just("data"), st.one_of(
            st.binary(max_size=40),
            st.sampled_from([greeting(0), greeting(2), greeting(0, 2), sp.encodeAuth(b"u", b"p"),
                             sp.encodeRequest(Command.CONNECT, "example.com", 80),
                             sp.encodeRequest(Command.CONNECT, "198.18.0.1", 443),
                             sp.encodeRequest(Command.RESOLVE, "example.com", 0),
                             sp.encodeRequest(Command.RESOLVE_PTR, "198.18.0.1", 0)]),
        )),
        st.tuples(st.just("open"), st.sampled_from(["ok", "policy", "refused", "nopath", "bug"])),
        st.tuples(st.just("resolve"), st.sampled_from(["ok", "fail"])),
        st.tuples(st.just("clock"), st.sampled_from([1, 31, 121])),
        st.tuples(st.just("halfclose"), st.none()),
        st.tuples(st.just("lost"), st.none()),
        st.tuples(st.just("streamend"), st.none()),
    ),
    max_size=12,
)


class StateMachinePropertyTests(unittest.TestCase):
    """Any interleaving of app bytes, opener outcomes, timers and closes keeps the invariants."""

    @settings(max_examples=400, deadline=None)
    @given(_EVENTS)
    def test_invariants(self, events):
        clock = task.Clock()
        opener = FakeOpener()
        factory = SOCKSServerFactory(opener, clock)
        proto = factory.buildProtocol(None)
        tr = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1))
        tr.loseWriteConnection = lambda: None
        proto.makeConnection(tr)
        streams = []
        ended = []
        lost = False
        for kind, arg in events:
            if kind == "data" and not lost:
                proto.dataReceived(arg)
            elif kind == "open":
                for _, _, _, d in opener.opens:
                    if not d.called:
                        if arg == "ok":
                            streams.append(FakeStream())
                            d.callback(streams[-1])
                        elif arg == "policy":
                            d.errback(StreamRefused(EndReason.EXITPOLICY))
                        elif arg == "refused":
                            d.errback(StreamRefused(EndReason.CONNECTREFUSED))
                        elif arg == "nopath":
                            d.errback(NoPath())
                        else:
                            d.errback(RuntimeError("bug"))
            elif kind == "resolve":
                for _, _, d in opener.resolves + opener.ptrs:
                    if not d.called:
                        d.callback(["198.18.0.1"]) if arg == "ok" else d.errback(StreamRefused(EndReason.RESOLVEFAILED))
            elif kind == "clock":
                clock.advance(arg)
            elif kind == "halfclose" and not lost:
                proto.readConnectionLost()
            elif kind == "lost" and not lost:
                lost = True
                proto.connectionLost(None)
            elif kind == "streamend" and proto.stream is not None:
                ended.append(proto.stream)
                proto.stream.receiver.streamEnded(EndReason.DONE)
            # Invariants after every event.
            self.assertLessEqual(len(proto._buffer), sp.MAX_HANDSHAKE)
            self.assertLessEqual(len(opener.opens) + len(opener.resolves) + len(opener.ptrs), 1)
            if proto.state == State.CLOSED:
                self.assertTrue(tr.disconnecting or lost)
        self.flushLoggedErrors(RuntimeError)
        if not lost:
            proto.connectionLost(None)
        self.assertEqual(factory.stats.active, 0)
        # Every stream handed over is closed by now, unless its far end ended it.
        for stream in streams:
            if stream not in ended:
                self.assertEqual(stream.closed[:1], [EndReason.DONE])
        # No timer is left behind.
        self.assertEqual(clock.getDelayedCalls(), [])


@implementer(ITCPTransport)
class TCPStringTransport(StringTransport):
    """A transport that can half-close, as a real TCP connection can."""

    writeClosed = False
    noDelay = False

    def loseWriteConnection(self):
        self.writeClosed = True

    def setTcpNoDelay(self, enabled):
        self.noDelay = enabled

    def getTcpNoDelay(self):
        return self.noDelay

    def setTcpKeepAlive(self, enabled):
        pass

    def getTcpKeepAlive(self):
        return False


class SessionMachineTests(SOCKSTestCase):
    """The session's transition table and the half-closes of an open session."""

    def connect(self, peer="127.0.0.1"):
        proto = self.factory.buildProtocol(None)
        tr = TCPStringTransport(peerAddress=IPv4Address("TCP", peer, 40000))
        proto.makeConnection(tr)
        return proto, tr

    def open(self):
        self.handshake(auth=(b"u", b"p"))
        self.assertEqual(self.proto.state, State.REQUEST)
        self.proto.dataReceived(sp.encodeRequest(Command.CONNECT, "198.18.0.7", 80))
        self.assertEqual(self.proto.state, State.CONNECTING)
        stream = FakeStream()
        self.opener.opens[-1][3].callback(stream)
        self.take()
        self.assertEqual(self.proto.state, State.OPEN)
        return stream

    def test_table(self):
        # Every state but CLOSED can close; CLOSED is final.
        for state in State:
            self.assertEqual((state, Event.CLOSE) in TRANSITIONS, state is not State.CLOSED)
        self.assertFalse([key for key in TRANSITIONS if key[0] is State.CLOSED])
        reachable = {State.GREETING} | set(TRANSITIONS.values())
        self.assertEqual(reachable, set(State))

    def test_illegalEventRaises(self):
        from automat import NoTransition

        e = self.assertRaises(NoTransition, self.proto._go, Event.CONNECTED)
        self.assertEqual((e.state, e.symbol), (State.GREETING, Event.CONNECTED))

    def test_noDelayOnTCP(self):
        self.assertTrue(self.tr.noDelay)

    def test_farEndFinishesFirst(self):
        stream = self.open()
        stream.receiver.streamReadEnded()
        self.assertEqual(self.proto.state, State.STREAM_FINISHED)
        self.assertTrue(self.tr.writeClosed)
        self.assertFalse(self.tr.disconnecting)
        # The app may still send, and then finishes too.
        self.proto.dataReceived(b"more")
        self.assertEqual(stream.written, [b"more"])
        self.proto.writeConnectionLost()
        self.proto.readConnectionLost()
        self.assertEqual(self.proto.state, State.CLOSED)
        self.assertTrue(stream.halfClosed)  # a clean end, not an abort
        self.assertIsNone(self.tr.producer)  # so closing the socket does not stop the stream
        self.assertTrue(self.tr.disconnecting)
        self.proto.connectionLost(None)
        self.assertEqual(stream.closed, [])

    def test_appFinishesFirst(self):
        stream = self.open()
        self.proto.readConnectionLost()
        self.assertEqual(self.proto.state, State.APP_FINISHED)
        self.assertTrue(stream.halfClosed)
        stream.receiver.streamDataReceived(b"answer")
        self.assertEqual(self.take(), b"answer")
        stream.receiver.streamReadEnded()
        self.assertEqual(self.proto.state, State.CLOSED)
        self.assertTrue(self.tr.disconnecting)

    def test_appFinishesWhileConnecting(self):
        self.handshake()
        self.proto.dataReceived(sp.encodeRequest(Command.CONNECT, "198.18.0.7", 80) + b"req")
        self.proto.readConnectionLost()
        self.assertEqual(self.proto.state, State.CONNECTING_APP_FINISHED)
        stream = FakeStream()
        self.opener.opens[-1][3].callback(stream)
        self.assertEqual(self.proto.state, State.APP_FINISHED)
        self.assertEqual((stream.written, stream.halfClosed), ([b"req"], True))

    def test_streamEndedClosesSession(self):
        stream = self.open()
        stream.receiver.streamEnded(EndReason.CONNRESET)
        self.assertEqual(self.proto.state, State.CLOSED)
        self.assertTrue(self.tr.disconnecting)
        # Late events from either side change nothing.
        stream.receiver.streamDataReceived(b"late")
        stream.receiver.streamReadEnded()
        self.proto.dataReceived(b"late")
        self.proto.readConnectionLost()
        self.assertEqual((self.take(), stream.written), (b"", []))

    def test_eofDuringHandshakeCloses(self):
        self.proto.dataReceived(greeting(0))
        self.proto.readConnectionLost()
        self.assertEqual(self.proto.state, State.CLOSED)
        self.assertTrue(self.tr.disconnecting)

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.sampled_from(["app-data", "app-eof", "app-write-done", "app-lost", "stream-data",
                                     "stream-eof", "stream-end", "connected", "refused", "timeout"]),
                    max_size=12))
    def test_anyEventOrder(self, events):
        proto, tr = self.connect()
        proto.dataReceived(greeting(0) + sp.encodeRequest(Command.CONNECT, "198.18.0.7", 80))
        tr.clear()
        pending = self.opener.opens[-1][3]
        stream = FakeStream()
        lost = farEnded = False
        for event in events:
            wasClosed = proto.state is State.CLOSED
            if event == "app-data":
                proto.dataReceived(b"x")
            elif event == "app-eof":
                proto.readConnectionLost()
            elif event == "app-write-done":
                proto.writeConnectionLost()
            elif event == "app-lost" and not lost:
                lost = True
                proto.connectionLost(None)
            elif event == "connected" and not pending.called:
                pending.callback(stream)
            elif event == "refused" and not pending.called:
                pending.errback(StreamRefused(EndReason.CONNECTREFUSED))
            elif event == "timeout":
                self.clock.advance(REQUEST_TIMEOUT)
            elif stream.receiver is not None and event.startswith("stream-"):
                if event == "stream-data":
                    stream.receiver.streamDataReceived(b"y")
                elif event == "stream-eof":
                    stream.receiver.streamReadEnded()
                else:
                    farEnded = True
                    stream.receiver.streamEnded(EndReason.DONE)
            self.assertIsInstance(proto.state, State)
            if wasClosed:
                self.assertIs(proto.state, State.CLOSED)
        if not lost:
            proto.connectionLost(None)
        self.assertIs(proto.state, State.CLOSED)
        self.assertEqual(self.factory.stats.active, 1)  # only setUp's connection is left
        # A stream handed to the session is never left open behind it.
        if stream.receiver is proto or stream.written:
            self.assertTrue(stream.halfClosed or stream.closed or farEnded)
