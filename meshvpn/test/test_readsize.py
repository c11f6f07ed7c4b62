"""
meshvpn.readsize: the socket under a wrapped transport is found (or not,
without following a chain for ever), and once widened, one read takes more
than Twisted's default 64 KiB when more is waiting.
"""

import select

from twisted.internet import protocol
from twisted.internet.abstract import FileDescriptor
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from meshvpn.readsize import BULK_READ, readInBulk, socketOf
from meshvpn.test.test_socketpush import adoptedPair


class _Wrapper:
    def __init__(self, transport):
        self.transport = transport


class _Chunks(protocol.Protocol):
    def connectionMade(self):
        self.chunks = []
        readInBulk(self.transport)

    def dataReceived(self, data):
        self.chunks.append(len(data))


class SocketOfTests(unittest.TestCase):
    def test_throughWrappers(self):
        sock = FileDescriptor()
        self.assertIs(socketOf(_Wrapper(_Wrapper(sock))), sock)
        self.assertTrue(readInBulk(_Wrapper(sock)))
        self.assertEqual(sock.bufferSize, BULK_READ)

    def test_inMemoryTransport(self):
        """A test's in-memory transport has no socket: nothing is changed, nothing raises."""
        self.assertIsNone(socketOf(StringTransport()))
        self.assertFalse(readInBulk(StringTransport()))

    def test_cycleIsNotFollowedForEver(self):
        a = _Wrapper(None)
        a.transport = _Wrapper(a)
        self.assertIsNone(socketOf(a))

    def test_tooLongAChain(self):
        t = FileDescriptor()
        for _ in range(20):
            t = _Wrapper(t)
        self.assertIsNone(socketOf(t))


class OneReadTests(unittest.TestCase):
    def test_oneReadTakesWhatWaits(self):
        """With 120 KB waiting in the kernel, one read (one reactor turn) delivers more than 64 KiB."""
        near, far = adoptedPair(self, protocol.Factory.forProtocol(_Chunks))
        self.assertEqual(near.transport.bufferSize, BULK_READ)
        far.setblocking(True)
        far.sendall(b"x" * 120_000)
        select.select([near.transport.fileno()], [], [], 5)
        near.transport.doRead()
        self.assertGreater(near.chunks[0], 65536)
