"""Tests for meshvpn.socketpush: an edge's bytes reach the kernel without waiting for the reactor's next poll."""

import socket

from twisted.internet import protocol, reactor, task
from twisted.trial import unittest

from meshvpn.socketpush import TurnEndPush, pushNow


def adoptedPair(testCase, factory=None):
    """
    A real loopback TCP connection: the far end a plain non-blocking
    socket, the near end adopted by the reactor for C{factory}'s protocol.

    @return: C{(protocol, far)}.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    far = socket.create_connection(listener.getsockname(), timeout=5)
    near, _ = listener.accept()
    listener.close()
    near.setblocking(False)
    far.setblocking(False)
    built = []
    factory = factory or protocol.Factory.forProtocol(protocol.Protocol)
    original = factory.buildProtocol
    factory.buildProtocol = lambda addr: built.append(original(addr)) or built[-1]
    reactor.adoptStreamConnection(near.fileno(), socket.AF_INET, factory)
    near.close()
    testCase.addCleanup(far.close)
    testCase.addCleanup(built[0].transport.abortConnection)
    return built[0], far


def received(far):
    try:
        return far.recv(65536)
    except BlockingIOError:
        return b""


class PushNowTests(unittest.TestCase):
    def test_sentBeforeTheReactorRuns(self):
        proto, far = adoptedPair(self)
        proto.transport.write(b"reply")
        self.assertEqual(received(far), b"")  # Twisted alone waits for the next poll
        pushNow(proto.transport)
        self.assertEqual(received(far), b"reply")

    def test_closingSocketLeftToTheReactor(self):
        proto, far = adoptedPair(self)
        proto.transport.write(b"last words")
        proto.transport.loseConnection()
        pushNow(proto.transport)
        self.assertEqual(received(far), b"")

    def test_pausedProducerLeftToTheReactor(self):
        proto, far = adoptedPair(self)
        proto.transport.producerPaused = True
        proto.transport.write(b"x")
        pushNow(proto.transport)
        self.assertEqual(received(far), b"")
        proto.transport.producerPaused = False

    def test_notASocket(self):
        from twisted.internet.testing import StringTransport

        t = StringTransport()
        t.write(b"x")
        pushNow(t)  # nothing to push, nothing raised
        self.assertEqual(t.value(), b"x")


class TurnEndPushTests(unittest.TestCase):
    def test_oneSendForTheTurnsWrites(self):
        proto, far = adoptedPair(self)
        clock = task.Clock()
        push = TurnEndPush(proto.transport, clock)
        for chunk in (b"a" * 498, b"b" * 498, b"c" * 100):
            proto.transport.write(chunk)
            push.soon()
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        self.assertEqual(received(far), b"")
        clock.advance(0)
        self.assertEqual(received(far), b"a" * 498 + b"b" * 498 + b"c" * 100)

    def test_stopCancels(self):
        proto, far = adoptedPair(self)
        clock = task.Clock()
        push = TurnEndPush(proto.transport, clock)
        proto.transport.write(b"x")
        push.soon()
        push.stop()
        self.assertEqual(clock.getDelayedCalls(), [])
        push.soon()  # after stop: nothing scheduled
        self.assertEqual(clock.getDelayedCalls(), [])
