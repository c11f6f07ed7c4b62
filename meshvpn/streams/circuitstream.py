"""One stream on a circuit: the L{IStream} both ends hand out, and its lifecycle.

The origin's L{meshvpn.streams.mux.StreamMux} gives a L{CircuitStream} to the
SOCKS server once the exit says CONNECTED; the exit's mux splices one to
the TCP connection it made (L{meshvpn.streams.splice}).  Either way the
stream itself is what the other side talks to: no adapter sits between.

Backpressure is Twisted's producer/consumer both ways:

- sending: at most C{STREAM_WINDOW} DATA cells in flight; beyond that bytes
  wait in a bounded buffer and the producer feeding L{CircuitStream.write}
  is paused;
- receiving: a SENDME goes back every C{SENDME_EVERY} delivered cells, but
  not while our receiver has paused us (or has not been set), so a slow
  reader closes the sender's window instead of making anyone buffer without
  bound; what arrives meanwhile is held, at most one window.

On a circuit that negotiated XON/XOFF (L{meshvpn.onion.flow.FLOW_XON};
Tor's proposal 324, flow control) the stream has no window of its own: the
circuit's congestion window paces it, and the receiving edge says XOFF
when more than C{XOFF_ABOVE} bytes wait for a reader that paused it, XON
once they drain below C{XON_BELOW}.  The sender stops on XOFF within one
round trip; a peer that keeps sending past C{HOLD_LIMIT} (XOFF_ABOVE plus
a whole maximum congestion window) ignored it, and the stream ends with
RESOURCELIMIT.  Stream SENDMEs are then a protocol violation.

On a circuit that negotiated optimistic data (L{meshvpn.onion.flow.FLOW_EARLY})
the origin's stream takes writes while it is still connecting and sends
them right after BEGIN (L{meshvpn.streams.optimistic}); the exit's stream
holds such DATA until its connection is made, at most
L{meshvpn.onion.flow.EARLY_DATA_LIMIT} bytes: more is a protocol violation.

The lifecycle is an explicit machine (L{StreamState}, L{StreamEvent},
L{TRANSITIONS}): END with reason DONE is a half-close (like a TCP FIN), any
other reason, a dead circuit or a protocol violation aborts.  A peer's
message that the machine has no transition for (a second CONNECTED, DATA
before CONNECTED) is a protocol violation that ends only this stream.
Transitions happen per stream event, never per cell: the DATA path only
compares the state.
"""

import enum

from automat import NoTransition
from twisted.internet import defer
from twisted.internet.interfaces import IConsumer, IPushProducer
from zope.interface import implementer

from meshvpn.errors import StreamRefused
from meshvpn.interfaces import IStream
from meshvpn.onion.cells import CellError, RelayCommand
from meshvpn.onion.endreasons import EndReason
from meshvpn.onion.flow import EARLY_DATA_LIMIT, VegasParams
from meshvpn.onion.streammsgs import Connected, End

STREAM_WINDOW = 500  # cells, Tor's stream window
SENDME_EVERY = 50
PAUSE_ABOVE = 256 * 1024  # buffered bytes before the feeding producer is paused
ABORT_ABOVE = 4 * 1024 * 1024  # a writer that ignores pausing is cut off
XOFF_ABOVE = 512 * 1024  # held bytes (reader paused) before XOFF
XON_BELOW = 128 * 1024  # held bytes after which XON lets the sender go on
# XOFF takes a round trip: a sender may have a whole congestion window in
# flight when it arrives; past that it ignored the XOFF.
HOLD_LIMIT = XOFF_ABOVE + VegasParams.maximum * 494 + 256 * 1024
# All streams of a circuit together: a far end that keeps many paused
# streams near their XOFF mark cannot make this end hold more than this.
CIRCUIT_HOLD_LIMIT = 32 * 1024 * 1024
_UNLIMITED = 1 << 60

# Read once here: the DATA path compares against these per cell.
_DATA, _SENDME, _END, _CONNECTED = RelayCommand.DATA, RelayCommand.SENDME, RelayCommand.END, RelayCommand.CONNECTED
_XON, _XOFF = RelayCommand.XON, RelayCommand.XOFF


class StreamState(enum.Enum):
    CONNECTING = "connecting"  # origin: BEGIN sent; exit: connecting out
    OPEN = "open"
    FLUSHING = "flushing"  # we half-closed: buffered bytes still leave, then END(DONE)
    WE_FINISHED = "we-finished"  # END(DONE) sent, still reading
    PEER_FINISHED = "peer-finished"  # END(DONE) received, we may still write
    LAST_FLUSH = "last-flush"  # both half-closed: buffered bytes leave, then END(DONE) closes
    CLOSED = "closed"


class StreamEvent(enum.Enum):
    CONNECTED = "connected"  # CONNECTED received (origin) or the exit's connection made
    HALF_CLOSE = "half-close"  # our side has no more to send
    FLUSHED = "flushed"  # the buffer emptied after a half-close: END(DONE) went out
    PEER_DONE = "peer-done"  # END(DONE) received
    ABORT = "abort"  # END(other) sent or received, the circuit died, a protocol violation


_S, _E = StreamState, StreamEvent
TRANSITIONS = {
    (_S.CONNECTING, _E.CONNECTED): _S.OPEN,
    (_S.CONNECTING, _E.ABORT): _S.CLOSED,
    (_S.OPEN, _E.HALF_CLOSE): _S.FLUSHING,
    (_S.OPEN, _E.PEER_DONE): _S.PEER_FINISHED,
    (_S.OPEN, _E.ABORT): _S.CLOSED,
    (_S.FLUSHING, _E.FLUSHED): _S.WE_FINISHED,
    (_S.FLUSHING, _E.PEER_DONE): _S.LAST_FLUSH,
    (_S.FLUSHING, _E.ABORT): _S.CLOSED,
    (_S.WE_FINISHED, _E.PEER_DONE): _S.CLOSED,
    (_S.WE_FINISHED, _E.ABORT): _S.CLOSED,
    (_S.PEER_FINISHED, _E.HALF_CLOSE): _S.LAST_FLUSH,
    (_S.PEER_FINISHED, _E.ABORT): _S.CLOSED,
    (_S.LAST_FLUSH, _E.FLUSHED): _S.CLOSED,
    (_S.LAST_FLUSH, _E.ABORT): _S.CLOSED,
}

# Tuples, not sets: the per-cell test is then an identity comparison.
_READABLE = (_S.OPEN, _S.FLUSHING, _S.WE_FINISHED)  # the peer may still send DATA
_WRITABLE = (_S.OPEN, _S.PEER_FINISHED)  # write() and halfClose() are taken
_FINISHING = (_S.FLUSHING, _S.LAST_FLUSH)  # END(DONE) goes once the buffer is empty

_READ_ENDED = object()  # held in place of data: the peer half-closed


@implementer(IStream, IConsumer, IPushProducer)
class CircuitStream:
    """
    One stream of a L{meshvpn.streams.mux.StreamMux}.

    @ivar opening: at the origin, the Deferred that fires with this stream
        on CONNECTED or fails with L{StreamRefused}; C{None} at the exit.
    @ivar target: C{HOST:PORT} at the origin (for status); C{None} at the exit.
    @ivar xon: the circuit negotiated XON/XOFF: no stream window, no stream SENDMEs.
    @ivar early: the circuit negotiated optimistic data: the origin may send
        DATA while connecting, the exit holds it until connected.
    """

    def __init__(self, mux, streamId, target=None, origin=False, xon=False, early=False):
        self.mux = mux
        self.streamId = streamId
        self.target = target
        self.state = StreamState.CONNECTING
        self.opening = defer.Deferred(self._cancelOpening) if origin else None
        self.receiver = None
        self.xon = xon
        self.early = early
        self._earlyBytes = 0  # exit: optimistic bytes received while connecting
        # In XON mode the windows are never the limit (the DATA path stays
        # the same code): XOFF closes packageWindow, XON reopens it.
        self.packageWindow = self.deliverWindow = _UNLIMITED if xon else STREAM_WINDOW
        self._ackEvery = _UNLIMITED if xon else SENDME_EVERY
        self.bytesSent = self.bytesReceived = 0
        self._unacked = 0
        self._held = []  # bytes, then perhaps _READ_ENDED, then perhaps the EndReason
        self._heldBytes = 0
        self._xoffSent = False
        self._readPaused = False
        self._pending = []
        self._pendingBytes = 0
        self._producer = None
        self._producerPaused = False

    def _go(self, event):
        try:
            self.state = TRANSITIONS[self.state, event]
        except KeyError:
            raise NoTransition(self.state, event) from None
        return self.state

    # ---- IStream: the side that reads and writes this stream

    def setReceiver(self, receiver):
        self.receiver = receiver
        self._drain()

    def write(self, data):
        if (self.state not in _WRITABLE and not (self.early and self.state is StreamState.CONNECTING
                                                 and self.opening is not None)) or not data:
            return
        self._pending.append(data)
        self._pendingBytes += len(data)
        self._flush()
        if self._pendingBytes > ABORT_ABOVE:
            self.close(EndReason.RESOURCELIMIT)
        elif self._pendingBytes > PAUSE_ABOVE and self._producer is not None and not self._producerPaused:
            self._producerPaused = True
            self._producer.pauseProducing()

    def halfClose(self):
        """Flush what is buffered, then END(DONE); keep reading."""
        if self.state in _WRITABLE:
            self._go(StreamEvent.HALF_CLOSE)
            self._flush()

    def close(self, reason=EndReason.DONE):
        """
        Abort: END(reason) at once, drop what is buffered.  Idempotent.

        On the wire END(DONE) is a half-close, so while the peer may still
        send (it has not finished) an abort says MISC instead: otherwise the
        peer would keep sending to a stream this end has forgotten.
        """
        if self.state is StreamState.CLOSED:
            return
        wire = EndReason.MISC if reason == EndReason.DONE and self.state in _READABLE else reason
        self.mux.sendRelay(_END, self.streamId, End(wire).encode())
        # Whoever closes wants nothing more, but hears the end at once.
        self._dropHeld()
        self._abort(reason, f"closed here: {EndReason.fromWire(reason).name}")

    def _dropHeld(self):
        self.mux.heldBytes -= self._heldBytes
        self._held, self._heldBytes = [], 0
        self._readPaused = False

    def registerProducer(self, producer, streaming):
        self._producer = producer
        if self._producerPaused:
            producer.pauseProducing()

    def unregisterProducer(self):
        self._producer = None

    def pauseProducing(self):
        self._readPaused = True

    def resumeProducing(self):
        self._readPaused = False
        self._drain()

    def stopProducing(self):
        self.close(EndReason.DONE)

    # ---- sending

    def _flush(self, budget=_UNLIMITED):
        """
        Send what is pending as the windows allow, at most C{budget} cells.

        @return: C{True} if the budget ran out with data still pending and
            room in the windows (the mux gives the stream another turn).
        """
        mux = self.mux
        maxData = mux.maxData
        send = mux.sendRelay
        sid = self.streamId
        pending = self._pending
        more = False
        while pending and self.packageWindow > 0:
            if budget <= 0:
                more = True
                break
            room = min(self.packageWindow, mux.circuitRoom(), budget)
            if room <= 0:
                mux.waitForRoom(self)
                break
            chunk = pending[0]
            if len(chunk) >= maxData:
                # Send whole cells from the front; keep the remainder queued.
                view = memoryview(chunk)
                cells = min(len(chunk) // maxData, room)
                if cells > 1 and mux.sendData is not None:
                    mux.sendData(sid, [view[k * maxData:(k + 1) * maxData] for k in range(cells)])
                else:
                    for k in range(cells):
                        send(_DATA, sid, view[k * maxData : (k + 1) * maxData])
                self.packageWindow -= cells
                budget -= cells
                sent = cells * maxData
                rest = chunk[sent:]
                if rest:
                    pending[0] = rest
                else:
                    pending.pop(0)
                self._pendingBytes -= sent
                self.bytesSent += sent
                mux.bytesSent += sent
                continue
            # Coalesce small writes into one cell.
            body, size = [], 0
            while pending and size + len(pending[0]) <= maxData:
                piece = pending.pop(0)
                body.append(piece)
                size += len(piece)
            if pending and size < maxData:
                # Fill the cell with the front of the next chunk.
                head = pending[0]
                body.append(head[: maxData - size])
                pending[0] = head[maxData - size :]
                size = maxData
            send(_DATA, sid, b"".join(body))
            self.packageWindow -= 1
            budget -= 1
            self._pendingBytes -= size
            self.bytesSent += size
            mux.bytesSent += size
        if self._producerPaused and self._pendingBytes <= PAUSE_ABOVE // 2 and self._producer is not None:
            self._producerPaused = False
            self._producer.resumeProducing()
        if not pending and self.state in _FINISHING:
            self.mux.sendRelay(_END, sid, End(EndReason.DONE).encode())
            if self._go(StreamEvent.FLUSHED) is StreamState.CLOSED:
                self._ended(EndReason.DONE)
        return more

    # ---- receiving: the mux hands over this stream's relay messages

    def relayReceived(self, command, body):
        if command == _DATA:
            if self.state not in _READABLE and not self._earlyAccepted(body):
                return self._violation("DATA on a stream that is not open")
            self.deliverWindow -= 1
            if self.deliverWindow < 0:
                return self._violation("peer sent beyond the stream window")
            data = bytes(body)
            n = len(data)
            self.bytesReceived += n
            self.mux.bytesReceived += n
            if self._held or self._readPaused or self.receiver is None:
                self._held.append(data)
                self._heldBytes += n
                mux = self.mux
                mux.heldBytes += n
                if self.xon and (self._heldBytes > XOFF_ABOVE or mux.heldBytes > CIRCUIT_HOLD_LIMIT):
                    self._tooMuchHeld()
            else:
                self.receiver.streamDataReceived(data)
            self._unacked += 1
            if self._unacked >= self._ackEvery:
                self._acknowledge()
        elif command == _XOFF or command == _XON:
            self._xonReceived(command, body)
        elif command == _SENDME:
            if self.state is StreamState.CONNECTING:
                return self._violation("SENDME before CONNECTED")
            if self.xon:
                return self._violation("stream SENDME on a circuit that uses XON/XOFF")
            self.packageWindow += SENDME_EVERY
            if self.packageWindow > STREAM_WINDOW:
                return self._violation("SENDME beyond the stream window")
            self._flush()
        elif command == _END:
            self._endReceived(End.decode(body).reason)
        elif command == _CONNECTED:
            self._connectedReceived(body)
        else:
            self._violation(f"relay command {command} on a stream")

    def _earlyAccepted(self, body):
        """At the exit, while connecting: optimistic DATA within the limit is held for the connection."""
        if not self.early or self.opening is not None or self.state is not StreamState.CONNECTING:
            return False
        self._earlyBytes += len(body)
        return self._earlyBytes <= EARLY_DATA_LIMIT

    def _endReceived(self, reason):
        if reason == EndReason.DONE and (self.state, StreamEvent.PEER_DONE) in TRANSITIONS:
            # The receiver always hears the half-close, then the end if both halves are done.
            self._deliver(_READ_ENDED)
            if self._go(StreamEvent.PEER_DONE) is StreamState.CLOSED:
                self._ended(EndReason.DONE)
        else:
            # A refusal while connecting, an abort, or a second END.
            if self.state is StreamState.CONNECTING:
                self._dropHeld()  # optimistic data for a connection that will not be spliced
            self._abort(reason, f"the far end ended the stream: {reason.name}")

    def _connectedReceived(self, body):
        if self.opening is None or self.state is not StreamState.CONNECTING:
            return self._violation("CONNECTED on a stream that is not connecting")
        try:
            Connected.decode(body)
        except CellError as e:
            return self._violation(str(e))
        self._go(StreamEvent.CONNECTED)
        opening, self.opening = self.opening, None
        opening.callback(self)

    def connectedOut(self):
        """At the exit: the outgoing connection is made, CONNECTED goes back."""
        self._go(StreamEvent.CONNECTED)
        self.mux.sendRelay(_CONNECTED, self.streamId, Connected().encode())

    def circuitWindowOpened(self, budget=_UNLIMITED):
        """
        The circuit's window opened again after this stream waited for it:
        send at most C{budget} cells (the mux shares the room out in turns).

        @return: C{True} if the stream could send more in another turn.
        """
        return self._flush(budget)

    def circuitClosed(self, reason):
        """The circuit is gone: no END can be sent, the stream just ends."""
        if self.state is not StreamState.CLOSED:
            self._abort(reason, "circuit closed")

    def _tooMuchHeld(self):
        """The reader is paused and bytes pile up: XOFF, or cut off a sender that ignored it."""
        if self._heldBytes > HOLD_LIMIT or self.mux.heldBytes > CIRCUIT_HOLD_LIMIT:
            self.mux.violations += 1
            self.close(EndReason.RESOURCELIMIT)
        elif not self._xoffSent:
            self._xoffSent = True
            self.mux.sendRelay(_XOFF, self.streamId, b"")

    def _xonReceived(self, command, body):
        if not self.xon:
            return self._violation("XON/XOFF on a circuit that did not negotiate it")
        if body:
            return self._violation("XON/XOFF with a body")
        if self.state is StreamState.CONNECTING:
            return self._violation("XON/XOFF before CONNECTED")
        if command == _XOFF:
            self.packageWindow = 0
        else:
            self.packageWindow = _UNLIMITED
            self._flush()

    def _acknowledge(self):
        if self._xoffSent and self._heldBytes <= XON_BELOW and self.state is not StreamState.CLOSED:
            self._xoffSent = False
            self.mux.sendRelay(_XON, self.streamId, b"")
        if self._readPaused or self._held:
            return
        while self._unacked >= self._ackEvery and self.state is not StreamState.CLOSED:
            self._unacked -= SENDME_EVERY
            self.deliverWindow += SENDME_EVERY
            self.mux.sendRelay(_SENDME, self.streamId, b"")

    def _violation(self, why):
        self.mux.violations += 1
        if self.state is not StreamState.CLOSED:
            self.mux.sendRelay(_END, self.streamId, End(EndReason.TORPROTOCOL).encode())
            if self.state is StreamState.CONNECTING:
                self._dropHeld()  # nobody will ever read what it held
            self._abort(EndReason.TORPROTOCOL, why)

    # ---- delivery to the receiver, in order, held while it cannot take it

    def _deliver(self, item):
        # Only the end of reading or the stream's end passes here (never bytes).
        if self._held or self._readPaused or self.receiver is None:
            self._held.append(item)
        else:
            self._dispatch(item)

    def _dispatch(self, item):
        if type(item) is bytes:
            self._heldBytes -= len(item)
            self.mux.heldBytes -= len(item)
            self.receiver.streamDataReceived(item)
        elif item is _READ_ENDED:
            self.receiver.streamReadEnded()
        else:
            receiver, self.receiver = self.receiver, None
            receiver.streamEnded(item)

    def _drain(self):
        held = self._held
        while held and not self._readPaused and self.receiver is not None:
            self._dispatch(held.pop(0))
        self._acknowledge()

    # ---- handing the stream over to a multipath set (meshvpn.streams.multipathstream)

    def takePending(self):
        """
        The bytes written and not yet sent, now the caller's to send (in
        order, before anything written later): the stream sends no more DATA.
        """
        pending, self._pending, self._pendingBytes = self._pending, [], 0
        self.packageWindow = 0
        self.mux._blocked.pop(self.streamId, None)
        return pending

    def detach(self):
        """
        Leave the circuit without an END: a multipath set carries the stream
        on from here.  @return: C{(pending, held, receiver, producer)}: bytes
        not yet sent, bytes received and not yet handed to the reader, the
        reader, and the producer that fed the stream.
        """
        pending = self.takePending()
        held = [item for item in self._held if type(item) is bytes]
        self.mux.heldBytes -= self._heldBytes
        self._held, self._heldBytes = [], 0
        receiver, producer = self.receiver, self._producer
        self.receiver = self._producer = None
        self.state = StreamState.CLOSED
        self.mux.forget(self)
        return pending, held, receiver, producer

    # ---- the end

    def _abort(self, reason, why):
        self._go(StreamEvent.ABORT)
        self._ended(EndReason.fromWire(reason), why)

    def _ended(self, reason, why=""):
        """Now CLOSED: forget the stream and tell whoever waits for it."""
        self._pending, self._pendingBytes = [], 0
        self.mux.forget(self)
        opening, self.opening = self.opening, None
        if opening is not None:
            # Never opened: the opener hears why, no receiver was told anything.
            opening.errback(StreamRefused(reason, why or f"stream ended: {reason.name}"))
        else:
            self._deliver(reason)

    def _cancelOpening(self, opening):
        # The application gave up before CONNECTED: tell the exit (which may
        # have just connected: MISC, not a half-close), and let the
        # canceller's CancelledError be what the opener sees.
        self.opening = None
        self.close(EndReason.MISC)
