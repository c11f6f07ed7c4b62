"""The client's view of a stream on a circuit: the L{IStream} the SOCKS server speaks to.

L{meshvpn.streams.mux} gives each stream as a Twisted transport; the
SOCKS side wants an L{IStream} with a receiver.  L{StreamOnCircuit} is the
protocol that sits on the circuit stream and presents it that way, holding
what arrives while its reader is paused (at most one stream window, since
no SENDME goes back meanwhile).  L{openStreamOn}, L{resolveOn} and
L{resolvePTROn} are what L{CircuitStreamOpener} calls on a circuit.
"""

import ipaddress

from twisted.internet.protocol import Protocol
from zope.interface import implementer

from meshvpn.errors import StreamRefused
from meshvpn.interfaces import IStream
from meshvpn.onion.endreasons import EndReason
from meshvpn.streams.mux import RESOLVED_IPV4, RESOLVED_IPV6

RESOLVED_HOSTNAME = 0


@implementer(IStream)
class StreamOnCircuit(Protocol):
    def __init__(self):
        self.receiver = None
        self._held = []  # ("data", bytes) / ("read-ended",) / ("ended", reason)
        self._paused = False
        self._closed = False

    # from the circuit stream

    def dataReceived(self, data):
        self._deliver(("data", data))

    def readConnectionLost(self):
        self._deliver(("read-ended",))

    def connectionLost(self, reason):
        self._closed = True
        code = reason.value.reason if reason.check(StreamRefused) else EndReason.MISC
        self._deliver(("ended", EndReason.fromWire(int(code))))

    def _deliver(self, event):
        if self.receiver is None or self._paused or self._held:
            self._held.append(event)
            if self.receiver is not None and not self._paused:
                self._drain()
            return
        self._dispatch(event)

    def _dispatch(self, event):
        kind = event[0]
        if kind == "data":
            self.receiver.streamDataReceived(event[1])
        elif kind == "read-ended":
            self.receiver.streamReadEnded()
        else:
            self.receiver.streamEnded(event[1])

    def _drain(self):
        while self._held and not self._paused and self.receiver is not None:
            self._dispatch(self._held.pop(0))

    # IStream, from the SOCKS side

    def setReceiver(self, receiver):
        self.receiver = receiver
        self._drain()

    def write(self, data):
        if not self._closed:
            self.transport.write(data)

    def halfClose(self):
        if not self._closed:
            self.transport.loseConnection()

    def close(self, reason=EndReason.DONE):
        if not self._closed:
            self._closed = True
            self.transport.close(int(reason))

    def registerProducer(self, producer, streaming):
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self):
        self.transport.unregisterProducer()

    def pauseProducing(self):
        self._paused = True
        self.transport.pauseProducing()

    def resumeProducing(self):
        self._paused = False
        self._drain()
        if not self._closed:
            self.transport.resumeProducing()

    def stopProducing(self):
        self.close(EndReason.DONE)


def openStreamOn(circuit, host, port):
    """@return: a Deferred L{StreamOnCircuit} once the exit says CONNECTED."""
    stream = StreamOnCircuit()
    return circuit.streamHandler.openStream(host, port, stream).addCallback(lambda _: stream)


def _reverseName(address):
    return ipaddress.ip_address(address).reverse_pointer


def resolveOn(circuit, name):
    """RESOLVE at the exit. @return: a Deferred non-empty list of address strings."""

    def addresses(answers):
        found = []
        for kind, value, _ttl in answers:
            if kind == RESOLVED_IPV4:
                found.append(str(ipaddress.IPv4Address(value)))
            elif kind == RESOLVED_IPV6:
                found.append(str(ipaddress.IPv6Address(value)))
        if not found:
            raise StreamRefused(EndReason.RESOLVEFAILED, f"exit could not resolve {name}")
        return found

    return circuit.streamHandler.resolve(name).addCallback(addresses)


def resolvePTROn(circuit, address):
    """Reverse RESOLVE at the exit. @return: a Deferred non-empty list of names."""

    def names(answers):
        found = [value.decode("ascii", "replace") for kind, value, _ in answers if kind == RESOLVED_HOSTNAME]
        if not found:
            raise StreamRefused(EndReason.RESOLVEFAILED, f"exit found no name for {address}")
        return found

    return circuit.streamHandler.resolve(_reverseName(address)).addCallback(names)
