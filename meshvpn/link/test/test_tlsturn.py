"""A link's cells reach the kernel in the turn they are sent, and a link says when a read is over (meshvpn.link.tlsturn)."""

import fcntl
import termios

from twisted.internet import defer, reactor, task
from twisted.internet.abstract import FileDescriptor
from twisted.test.proto_helpers import StringTransport
from twisted.trial import unittest

from meshvpn.link.test.helpers import cell
from meshvpn.link.test.test_loopback import _linkOnLoopback
from meshvpn.link.tlsturn import LinkTLSProtocol, sendNow
from meshvpn.readsize import socketOf


def _unread(transport):
    """Bytes waiting in the kernel to be read on the socket under C{transport}."""
    sock = socketOf(transport).socket
    return int.from_bytes(fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"), "little")


class SameTurnTests(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_cellsAreInThePeersSocketWhenSendCellsReturns(self):
        """
        Before, TLS held a write one turn and TCP another: the peer's socket
        was still empty when C{sendCells} returned.
        """
        link, incoming, got = yield _linkOnLoopback(self)
        self.assertIsInstance(link.transport, LinkTLSProtocol)
        yield task.deferLater(reactor, 0.05, lambda: None)  # the handshake's last bytes are read
        self.assertEqual(_unread(incoming.transport), 0)
        link.sendCells([cell(i) for i in range(3)])
        self.assertGreaterEqual(_unread(incoming.transport), 3 * 514)
        tcp = socketOf(link.transport)
        self.assertEqual((tcp.dataBuffer, tcp._tempDataBuffer), (b"", []))
        while len(got) < 3:
            yield task.deferLater(reactor, 0.005, lambda: None)
        self.assertEqual(got, [cell(i) for i in range(3)])

    @defer.inlineCallbacks
    def test_theLinkHearsEachReadAfterItsCells(self):
        link, incoming, got = yield _linkOnLoopback(self)
        heard = []
        incoming.setReadDone(lambda: heard.append(len(got)))
        link.sendCells([cell(i) for i in range(5)])
        while len(got) < 5 or not heard:
            yield task.deferLater(reactor, 0.005, lambda: None)
        self.assertEqual(heard[-1], 5, "readDone comes after the read's cells were delivered")


class _Socketish(FileDescriptor):
    """A FileDescriptor whose sends are recorded: C{accept} bytes per call, or an error."""

    def __init__(self, accept=1 << 20, error=None):
        FileDescriptor.__init__(self, reactor=_NoReactor())
        self.connected = True
        self.accept = accept
        self.error = error
        self.sent = []

    def writeSomeData(self, data):
        if self.error is not None:
            return self.error
        n = min(len(data), self.accept)
        self.sent.append(bytes(data[:n]))
        return n


class _NoReactor:
    """Enough of a reactor for FileDescriptor's start/stopWriting."""

    def __init__(self):
        self.writers = set()

    def addWriter(self, w):
        self.writers.add(w)

    def removeWriter(self, w):
        self.writers.discard(w)

    def addReader(self, r):
        pass

    def removeReader(self, r):
        pass


class SendNowTests(unittest.TestCase):
    def test_sendsAtOnceAndStopsWatchingForWritable(self):
        t = _Socketish()
        t.write(b"abc")
        self.assertIn(t, t.reactor.writers)
        sendNow(t)
        self.assertEqual(t.sent, [b"abc"])
        self.assertNotIn(t, t.reactor.writers)

    def test_whatTheKernelDoesNotTakeWaitsForWritable(self):
        t = _Socketish(accept=2)
        t.write(b"abcde")
        sendNow(t)
        self.assertEqual(t.sent, [b"ab"])
        self.assertIn(t, t.reactor.writers)  # the reactor sends the rest when the socket is writable
        t.accept = 10
        t.doWrite()
        self.assertEqual(b"".join(t.sent), b"abcde")

    def test_anErrorIsLeftToTheReactor(self):
        t = _Socketish(error=OSError("reset"))
        t.write(b"abc")
        sendNow(t)  # nothing raised, nothing lost: the reactor's doWrite meets the error and closes
        self.assertIn(t, t.reactor.writers)
        self.assertEqual(t._tempDataBuffer + [t.dataBuffer], [b"abc"])

    def test_aClosingTransportIsLeftToTheReactor(self):
        """A doWrite that drains a closing transport would finish the close the reactor must see."""
        t = _Socketish()
        t.write(b"abc")
        t.disconnecting = True
        sendNow(t)
        self.assertEqual(t.sent, [])

    def test_notASocket(self):
        t = StringTransport()
        t.write(b"abc")
        sendNow(t)  # in-memory and wrapped transports are written as before
        self.assertEqual(t.value(), b"abc")
