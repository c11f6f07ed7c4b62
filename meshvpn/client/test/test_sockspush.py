"""The SOCKS server's replies leave in the reactor turn that made them (meshvpn.socketpush).

Each test drives a SOCKS session on a real loopback socket by calling its
protocol directly, so the reactor never runs between the request and the
check: what the application can read then was sent in that same turn.
"""

from twisted.internet import defer, task
from twisted.internet.interfaces import IPushProducer
from twisted.trial import unittest
from zope.interface import implementer

from meshvpn.client import socksparse as sp
from meshvpn.client.socks import SOCKSServerFactory
from meshvpn.interfaces import IStream
from meshvpn.test.test_socketpush import adoptedPair, received


@implementer(IStream, IPushProducer)
class _Stream:
    """A stream that is open at once and holds nothing."""

    def __init__(self):
        self.receiver = None
        self.written = []

    def setReceiver(self, receiver):
        self.receiver = receiver

    def write(self, data):
        self.written.append(data)

    def halfClose(self):
        pass

    def close(self, reason):
        pass

    def registerProducer(self, producer, streaming):
        pass

    def unregisterProducer(self):
        pass

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass


class _Opener:
    def __init__(self):
        self.pending = []

    def openStream(self, host, port, isolationKey, early=None):
        d = defer.Deferred()
        self.pending.append(d)
        return d


class SOCKSRepliesLeaveAtOnceTests(unittest.TestCase):
    def setUp(self):
        # The socket is the real reactor's; the session's timers and end-of-turn sends run on this clock.
        self.clock = task.Clock()
        self.opener = _Opener()
        self.session, self.app = adoptedPair(self, SOCKSServerFactory(self.opener, self.clock))

    def test_methodReply(self):
        self.session.dataReceived(sp.encodeGreeting([0]))
        self.assertEqual(received(self.app), sp.encodeMethod(sp.Method.NO_AUTH))

    def test_connectReply(self):
        self.session.dataReceived(sp.encodeGreeting([0]) + sp.encodeRequest(sp.Command.CONNECT, "198.18.0.10", 80))
        self.assertEqual(received(self.app), sp.encodeMethod(sp.Method.NO_AUTH))
        stream = _Stream()
        self.opener.pending[0].callback(stream)  # CONNECTED came back
        self.assertEqual(received(self.app), sp.encodeReply(sp.Reply.SUCCEEDED))
        self.assertIs(stream.receiver, self.session)
        # The answer the stream then delivers leaves at the end of the turn (one send for the turn's cells).
        stream.receiver.streamDataReceived(b"HTTP/1.1 200 OK\r\n")
        stream.receiver.streamDataReceived(b"\r\n")
        self.assertEqual(received(self.app), b"")
        self.clock.advance(0)  # the turn ends
        self.assertEqual(received(self.app), b"HTTP/1.1 200 OK\r\n\r\n")
