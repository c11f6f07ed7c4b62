"""A stream whose far end is a TCP connection made here, and an opener built on it.

L{TCPStream} is the exit's half of a stream: the connected TCP protocol,
presented as an L{IStream} so the circuit layer (or, without circuits, the
SOCKS server) can pump bytes through it with backpressure both ways, and
with bytes charged to a bandwidth throttle.

L{DirectStreamOpener} is an L{IStreamOpener} that does the exit's job on
this node (resolve, policy, connect) without any circuit.  It exists so the
client edge is testable end to end on loopback, and for a local "no
anonymity" diagnostic mode; it is never a substitute for a circuit.
"""

from twisted.internet import defer, error
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer, ITCPTransport
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from meshvpn.errors import ResolveFailed, StreamRefused
from meshvpn.interfaces import IStream, IStreamOpener
from meshvpn.onion.endreasons import EndReason

MAX_HELD = 256 * 1024  # read while paused or before a receiver is set


@implementer(IPushProducer)
class _PauseSource:
    """One reason to pause a transport (the receiver, the throttle, ...)."""

    def __init__(self, stream, name):
        self.stream, self.name = stream, name

    def pauseProducing(self):
        self.stream._pause(self.name)

    def resumeProducing(self):
        self.stream._resume(self.name)

    def stopProducing(self):
        self.stream.close(EndReason.DONE)


@implementer(IStream, IHalfCloseableProtocol)
class TCPStream(Protocol):
    """
    @param throttle: a L{meshvpn.ratelimit.CircuitThrottle} or C{None}.
    """

    def __init__(self, throttle=None):
        self.throttle = throttle
        self.receiver = None
        self._held = []
        self._heldSize = 0
        self._pauses = set()
        self._readEnded = False
        self._writeEnded = False
        self._ended = None
        self._closing = False
        self._throttleSource = _PauseSource(self, "throttle")

    # ---- pausing: several independent reasons share one transport

    def _pause(self, why):
        if not self._pauses and self.transport is not None and self._ended is None:
            self.transport.pauseProducing()
        self._pauses.add(why)

    def _resume(self, why):
        self._pauses.discard(why)
        if why == "receiver":
            self._flush()
        if not self._pauses and self.transport is not None and self._ended is None:
            self.transport.resumeProducing()

    # ---- from the TCP side

    def connectionMade(self):
        if ITCPTransport.providedBy(self.transport):
            # The first request bytes should leave at once, not wait on Nagle.
            try:
                self.transport.setTcpNoDelay(True)
            except OSError:
                pass
        if self.throttle is not None:
            self.throttle.addProducer(self._throttleSource)
        if self.receiver is None:
            self._pause("no-receiver")

    def dataReceived(self, data):
        if self.throttle is not None:
            self.throttle.account(len(data), "in")
        if self.receiver is not None and not self._held and "receiver" not in self._pauses:
            self.receiver.streamDataReceived(data)
            return
        self._held.append(data)
        self._heldSize += len(data)
        if self._heldSize >= MAX_HELD:
            self._pause("held")

    def readConnectionLost(self):
        self._readEnded = True
        if self._writeEnded:
            # Both halves done; Twisted leaves closing to us.
            self.transport.loseConnection()
        elif self.receiver is not None and not self._held:
            self.receiver.streamReadEnded()

    def writeConnectionLost(self):
        self._writeEnded = True
        if self._readEnded:
            self.transport.loseConnection()

    def connectionLost(self, reason):
        if self.throttle is not None:
            self.throttle.removeProducer(self._throttleSource)
        clean = self._closing or reason.check(error.ConnectionDone)
        self._ended = EndReason.DONE if clean else EndReason.CONNRESET
        if self.receiver is not None:
            self._deliverEnd()

    def _flush(self):
        if self.receiver is None or "receiver" in self._pauses:
            return
        held, self._held, self._heldSize = self._held, [], 0
        if held:
            self.receiver.streamDataReceived(b"".join(held))
        self._pauses.discard("held")
        if self._readEnded and self._ended is None:
            self.receiver.streamReadEnded()

    def _deliverEnd(self):
        held, self._held, self._heldSize = self._held, [], 0
        receiver, self.receiver = self.receiver, None
        if held:
            receiver.streamDataReceived(b"".join(held))
        receiver.streamEnded(self._ended)

    # ---- IStream

    def setReceiver(self, receiver):
        self.receiver = receiver
        if self._ended is not None:
            self._deliverEnd()
            return
        self._flush()
        self._resume("no-receiver")

    def write(self, data):
        if self._ended is not None or self._closing:
            return
        if self.throttle is not None:
            self.throttle.account(len(data), "out")
        self.transport.write(data)

    def halfClose(self):
        if self._ended is None and not self._closing:
            self.transport.loseWriteConnection()

    def close(self, reason):
        if self._closing or self._ended is not None:
            return
        self._closing = True
        self.receiver = None
        self.transport.loseConnection()

    def registerProducer(self, producer, streaming):
        # The target's socket is the real consumer: when its buffer fills,
        # the producer (the app's socket, or the circuit) is paused.
        if self._ended is None:
            self.transport.registerProducer(producer, True)

    def unregisterProducer(self):
        if self._ended is None:
            self.transport.unregisterProducer()

    def pauseProducing(self):
        self._pause("receiver")

    def resumeProducing(self):
        self._resume("receiver")

    def stopProducing(self):
        self.close(EndReason.DONE)


def _refusal(failure):
    failure.trap(ResolveFailed)
    reason = EndReason.EXITPOLICY if failure.value.refused else EndReason.RESOLVEFAILED
    raise StreamRefused(reason, str(failure.value))


@implementer(IStreamOpener)
class DirectStreamOpener:
    """
    Opens streams from this node itself through an L{ExitConnector}.

    @param throttleFor: optional C{callable(isolationKey)} returning the
        L{meshvpn.ratelimit.CircuitThrottle} to charge.
    """

    def __init__(self, connector, resolver, throttleFor=None):
        self.connector = connector
        self.resolver = resolver
        self.throttleFor = throttleFor

    def openStream(self, host, port, isolationKey):
        throttle = self.throttleFor(isolationKey) if self.throttleFor else None
        return self.connector.connect(host, port, Factory.forProtocol(lambda: TCPStream(throttle)))

    def resolve(self, name, isolationKey):
        return defer.maybeDeferred(self.resolver.resolve, name).addErrback(_refusal)

    def resolvePTR(self, address, isolationKey):
        return defer.maybeDeferred(self.resolver.resolvePTR, address).addErrback(_refusal)
