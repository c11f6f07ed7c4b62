"""A stream whose far end is a TCP connection made here, and an opener built on it.

L{TCPStream} is the exit's half of a stream: the connected TCP protocol,
presented as an L{IStream} so the circuit layer (or, without circuits, the
SOCKS server) can pump bytes through it with backpressure both ways, and
with bytes charged to a bandwidth throttle.  Its lifecycle is an explicit
machine (L{TCPState}, L{TCPEvent}, L{TRANSITIONS}): each half of the TCP
connection ends on its own, and only when both have ended cleanly, or the
stream is closed here, is the socket closed.

L{DirectStreamOpener} is an L{IStreamOpener} that does the exit's job on
this node (resolve, policy, connect) without any circuit.  It exists so the
client edge is testable end to end on loopback, and for a local "no
anonymity" diagnostic mode; it is never a substitute for a circuit.
"""

import enum

from automat import NoTransition
from twisted.internet import defer, error
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer, ITCPTransport
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from meshvpn.errors import ResolveFailed, StreamRefused
from meshvpn.interfaces import IStream, IStreamOpener
from meshvpn.onion.endreasons import EndReason
from meshvpn.readsize import readInBulk
from meshvpn.socketpush import TurnEndPush

MAX_HELD = 256 * 1024  # read while paused or before a receiver is set


class TCPState(enum.Enum):
    OPEN = "open"
    READ_ENDED = "read-ended"  # the target sent its FIN; we may still write
    WRITE_ENDED = "write-ended"  # our FIN went out; the target may still send
    CLOSING = "closing"  # both halves ended, or closed here: the socket is closing
    ENDED = "ended"  # the connection is gone


class TCPEvent(enum.Enum):
    PEER_EOF = "peer-eof"  # readConnectionLost
    WRITE_DONE = "write-done"  # writeConnectionLost, after our halfClose
    CLOSE = "close"  # close() here
    LOST = "lost"  # connectionLost


_T, _V = TCPState, TCPEvent
TRANSITIONS = {
    (_T.OPEN, _V.PEER_EOF): _T.READ_ENDED,
    (_T.OPEN, _V.WRITE_DONE): _T.WRITE_ENDED,
    (_T.READ_ENDED, _V.WRITE_DONE): _T.CLOSING,
    (_T.WRITE_ENDED, _V.PEER_EOF): _T.CLOSING,
    # A half that ends while the socket closes anyway changes nothing.
    (_T.CLOSING, _V.PEER_EOF): _T.CLOSING,
    (_T.CLOSING, _V.WRITE_DONE): _T.CLOSING,
}
TRANSITIONS.update({(state, _V.CLOSE): _T.CLOSING for state in (_T.OPEN, _T.READ_ENDED, _T.WRITE_ENDED)})
TRANSITIONS.update({(state, _V.LOST): _T.ENDED for state in TCPState if state is not _T.ENDED})

_READ_ENDED = object()  # held in place of data: the target half-closed


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
    @param clock: what times the end-of-turn send (C{None}: the socket's reactor).
    """

    def __init__(self, throttle=None, clock=None):
        self.throttle = throttle
        self._clock = clock
        self.state = TCPState.OPEN
        self.receiver = None
        self._held = []  # bytes, then perhaps _READ_ENDED, then perhaps the EndReason
        self._heldSize = 0
        self._pauses = set()
        self._producer = None  # what feeds our socket, through registerProducer
        self._throttleSource = _PauseSource(self, "throttle")
        # What the circuit wrote this turn (the request) leaves at its end, not at the next poll.
        self._push = TurnEndPush(None)

    def _go(self, event):
        try:
            self.state = TRANSITIONS[self.state, event]
        except KeyError:
            raise NoTransition(self.state, event) from None
        return self.state

    # ---- pausing: several independent reasons share one transport

    def _pause(self, why):
        if not self._pauses and self.transport is not None and self.state is not TCPState.ENDED:
            self.transport.pauseProducing()
        self._pauses.add(why)

    def _resume(self, why):
        self._pauses.discard(why)
        if why == "receiver":
            self._flush()
        if not self._pauses and self.transport is not None and self.state is not TCPState.ENDED:
            self.transport.resumeProducing()

    # ---- from the TCP side

    def connectionMade(self):
        if ITCPTransport.providedBy(self.transport):
            # The first request bytes should leave at once, not wait on Nagle.
            try:
                self.transport.setTcpNoDelay(True)
            except OSError:
                pass
        # The target's bytes become runs of DATA cells: the larger a read, the
        # fewer runs the whole path handles per byte (meshvpn/readsize.py).
        readInBulk(self.transport)
        self._push = TurnEndPush(self.transport, self._clock)
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
        before = self.state
        if before is TCPState.ENDED:
            return
        state = self._go(TCPEvent.PEER_EOF)
        if before is TCPState.CLOSING:
            return  # the socket closes anyway
        self._deliverMarker(_READ_ENDED)
        if state is TCPState.CLOSING:
            self._bothHalvesEnded()

    def writeConnectionLost(self):
        before = self.state
        if before is TCPState.ENDED:
            return
        if self._go(TCPEvent.WRITE_DONE) is TCPState.CLOSING and before is not TCPState.CLOSING:
            self._bothHalvesEnded()

    def _bothHalvesEnded(self):
        # Twisted does not close a half-closeable connection by itself.  The
        # stream we feed is unhooked from the socket first: closing it would
        # stop that stream, dropping what it still buffers of ours.
        if self._producer is not None:
            self._producer = None
            self.transport.unregisterProducer()
        self.transport.loseConnection()

    def connectionLost(self, reason):
        self._push.stop()
        if self.throttle is not None:
            self.throttle.removeProducer(self._throttleSource)
        clean = self.state is TCPState.CLOSING or reason.check(error.ConnectionDone)
        self._go(TCPEvent.LOST)
        self._held.append(EndReason.DONE if clean else EndReason.CONNRESET)
        if self.receiver is not None:
            self._deliverAll()

    # ---- delivery to the receiver, in order

    def _deliverMarker(self, marker):
        if self.receiver is not None and not self._held:
            self.receiver.streamReadEnded()
        else:
            self._held.append(marker)

    def _flush(self):
        if self.receiver is None or "receiver" in self._pauses:
            return
        self._deliverAll()

    def _deliverAll(self):
        held, self._held, self._heldSize = self._held, [], 0
        self._pauses.discard("held")
        data = [item for item in held if type(item) is bytes]
        if data:
            self.receiver.streamDataReceived(b"".join(data))
        for item in held:
            if item is _READ_ENDED and self.receiver is not None:
                self.receiver.streamReadEnded()
            elif type(item) is EndReason and self.receiver is not None:
                receiver, self.receiver = self.receiver, None
                receiver.streamEnded(item)

    # ---- IStream

    def setReceiver(self, receiver):
        self.receiver = receiver
        if self.state is TCPState.ENDED:
            self._deliverAll()
            return
        self._flush()
        self._resume("no-receiver")

    def write(self, data):
        if self.state is TCPState.CLOSING or self.state is TCPState.ENDED:
            return
        if self.throttle is not None:
            self.throttle.account(len(data), "out")
        self.transport.write(data)
        self._push.soon()

    def halfClose(self):
        if self.state is TCPState.OPEN or self.state is TCPState.READ_ENDED:
            self.transport.loseWriteConnection()

    def close(self, reason):
        if self.state is TCPState.CLOSING or self.state is TCPState.ENDED:
            return
        self._go(TCPEvent.CLOSE)
        self.receiver = None
        self.transport.loseConnection()

    def registerProducer(self, producer, streaming):
        # The target's socket is the real consumer: when its buffer fills,
        # the producer (the app's socket, or the circuit) is paused.
        if self.state is not TCPState.ENDED:
            self._producer = producer
            self.transport.registerProducer(producer, True)

    def unregisterProducer(self):
        if self.state is not TCPState.ENDED and self._producer is not None:
            self._producer = None
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

    def openStream(self, host, port, isolationKey, early=None):
        # No circuit round trip to save: the caller writes the early bytes once connected.
        throttle = self.throttleFor(isolationKey) if self.throttleFor else None
        factory = Factory.forProtocol(lambda: TCPStream(throttle))
        factory.noisy = False  # no "Starting factory" line per stream
        return self.connector.connect(host, port, factory)

    def resolve(self, name, isolationKey):
        return defer.maybeDeferred(self.resolver.resolve, name).addErrback(_refusal)

    def resolvePTR(self, address, isolationKey):
        return defer.maybeDeferred(self.resolver.resolvePTR, address).addErrback(_refusal)
