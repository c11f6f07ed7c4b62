"""A link's cells reach the kernel in the turn they are sent, and a link says when a read is over (meshvpn.link.tlsturn)."""

import fcntl
import termios

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from meshvpn.link.test.helpers import cell, linkOnLoopback
from meshvpn.link.tlsturn import LinkTLSProtocol
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
        link, incoming, got = yield linkOnLoopback(self)
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
        link, incoming, got = yield linkOnLoopback(self)
        heard = []
        incoming.setReadDone(lambda: heard.append(len(got)))
        link.sendCells([cell(i) for i in range(5)])
        while len(got) < 5 or not heard:
            yield task.deferLater(reactor, 0.005, lambda: None)
        self.assertEqual(heard[-1], 5, "readDone comes after the read's cells were delivered")
