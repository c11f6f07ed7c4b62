"""Splice a TCP connection and a circuit stream together, both ways, with backpressure.

Used at both ends: the client joins an app's SOCKS connection to its stream,
the exit joins its outgoing TCP connection to the stream.  Each side is the
other's producer, so neither ever buffers more than its bounded window.
A TCP half-close becomes END(DONE) and END(DONE) becomes a TCP half-close.
"""

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from zope.interface import implementer

from meshvpn.errors import StreamRefused
from meshvpn.onion.streammux import REASON_DONE, REASON_MISC


@implementer(IHalfCloseableProtocol)
class TCPSide(Protocol):
    """The protocol on the TCP connection; forwards into the stream."""

    def __init__(self, bridge):
        self.bridge = bridge

    def connectionMade(self):
        self.bridge.tcpConnected(self.transport)

    def dataReceived(self, data):
        self.bridge.stream.write(data)

    def readConnectionLost(self):
        self.bridge.stream.loseConnection()

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        self.bridge.tcpLost()


class StreamSide(Protocol):
    """The protocol on the circuit stream; forwards into the TCP connection."""

    def __init__(self, bridge):
        self.bridge = bridge

    def dataReceived(self, data):
        self.bridge.tcp.write(data)

    def readConnectionLost(self):
        tcp = self.bridge.tcp
        if tcp is not None and hasattr(tcp, "loseWriteConnection"):
            tcp.loseWriteConnection()
        elif tcp is not None:
            tcp.loseConnection()

    def connectionLost(self, reason):
        self.bridge.streamLost(reason)


class Bridge:
    """
    One spliced pair.  Create it with the stream, attach C{streamSide} to
    the stream and C{tcpSide} to the TCP connection (in either order).
    """

    def __init__(self, stream=None):
        self.stream = stream
        self.tcp = None
        self.tcpSide = TCPSide(self)
        self.streamSide = StreamSide(self)
        self._done = False

    def tcpConnected(self, transport):
        self.tcp = transport
        if self.stream is not None:
            self._wire()

    def attachStream(self, stream):
        self.stream = stream
        stream.attach(self.streamSide)
        if self.tcp is not None:
            self._wire()

    def _wire(self):
        self.stream.registerProducer(self.tcp, True)
        self.tcp.registerProducer(self.stream, True)

    def tcpLost(self):
        if not self._done:
            self._done = True
            if self.stream is not None:
                self.stream.unregisterProducer()
                self.stream.loseConnection()

    def streamLost(self, reason):
        if self._done:
            return
        self._done = True
        if self.tcp is None:
            return
        self.tcp.unregisterProducer()
        clean = reason.check(StreamRefused) and reason.value.reason == REASON_DONE
        if clean:
            self.tcp.loseConnection()
        else:
            self.tcp.abortConnection()


def endReasonOf(failure):
    return failure.value.reason if failure.check(StreamRefused) else REASON_MISC
