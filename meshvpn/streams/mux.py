"""TCP-like streams multiplexed on one circuit: BEGIN/CONNECTED/DATA/END, RESOLVE, stream windows.

The same L{StreamMux} runs at both ends of a circuit: at the origin it opens
streams (for SOCKS) and at the exit it accepts them (connecting out).  A
L{CircuitStream} is a Twisted transport, so whatever sits on it (a SOCKS
connection's relay, the exit's outgoing TCP connection) is an ordinary
protocol, and backpressure is Twisted's producer/consumer both ways:

- sending: a stream may have at most C{STREAM_WINDOW} DATA cells in flight;
  beyond that its bytes wait in a bounded buffer and the producer feeding it
  (the app's TCP connection) is paused;
- receiving: a SENDME goes back every C{SENDME_EVERY} delivered cells, but
  not while the protocol we deliver to has paused us, so a slow reader
  closes the sender's window instead of making anyone buffer without bound.

END with reason DONE is a half-close (like a TCP FIN): the sender sends no
more but keeps reading.  Any other reason aborts the stream.  This module
does not know cells: the circuit hands it C{(command, streamId, body)} and
gives it a C{sendRelay(command, streamId, body)} to answer with.
"""

import enum
import ipaddress
import struct

from twisted.internet import defer
from twisted.internet.interfaces import IConsumer, IPushProducer, ITransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from meshvpn.errors import StreamRefused
from meshvpn.interfaces import IStream

log = Logger()

BEGIN, DATA, END, CONNECTED, SENDME, RESOLVE, RESOLVED = 1, 2, 3, 4, 5, 11, 12
STREAM_COMMANDS = frozenset((BEGIN, DATA, END, CONNECTED, SENDME, RESOLVE, RESOLVED))

# END reasons (Tor's numbers; the full table is meshvpn.onion.endreasons).
REASON_MISC, REASON_RESOLVEFAILED, REASON_EXITPOLICY, REASON_DESTROY, REASON_DONE = 1, 2, 4, 5, 6
REASON_INTERNAL, REASON_RESOURCELIMIT, REASON_TORPROTOCOL = 10, 11, 13

STREAM_WINDOW = 500  # cells, Tor's stream window
SENDME_EVERY = 50
MAX_STREAMS = 1024  # per circuit; a peer cannot make us track more
PAUSE_ABOVE = 256 * 1024  # buffered bytes before the feeding producer is paused
ABORT_ABOVE = 4 * 1024 * 1024  # a writer that ignores pausing is cut off
MAX_HOSTNAME = 255

RESOLVED_IPV4, RESOLVED_IPV6, RESOLVED_ERROR_TRANSIENT, RESOLVED_ERROR = 4, 6, 0xF0, 0xF1


class StreamProtocolError(ValueError):
    """A stream relay message is malformed; the message says what."""


class StreamState(enum.Enum):
    CONNECTING = "connecting"  # origin: BEGIN sent, waiting for CONNECTED
    OPEN = "open"
    WE_FINISHED = "we-finished"  # we sent END(DONE), still reading
    PEER_FINISHED = "peer-finished"  # peer sent END(DONE), we may still write
    CLOSED = "closed"


# ---- bodies


def encodeBegin(host, port):
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}".encode("ascii") + b"\x00" + b"\x00\x00\x00\x00"


def parseBegin(body):
    """
    @return: C{(host, port)} of a BEGIN body (C{ADDR:PORT NUL FLAGS}).
    @raise StreamProtocolError: anything malformed.
    """
    target, nul, _flags = bytes(body).partition(b"\x00")
    if not nul:
        raise StreamProtocolError("BEGIN target is not NUL-terminated")
    try:
        text = target.decode("ascii")
    except UnicodeDecodeError:
        raise StreamProtocolError("BEGIN target is not ASCII") from None
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) <= 65535:
        raise StreamProtocolError(f"BEGIN target {text[:60]!r} has no valid port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise StreamProtocolError("BEGIN has a bad IPv6 literal") from None
    elif not _validHostname(host):
        raise StreamProtocolError(f"BEGIN host {host[:60]!r} is not a hostname or address")
    return host, int(port)


def _validHostname(host):
    if not 0 < len(host) <= MAX_HOSTNAME:
        return False
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._")
    return all(c in allowed for c in host)


def encodeResolved(answers):
    """C{answers}: list of C{(type, value bytes, ttl)}."""
    return b"".join(struct.pack(">BB", t, len(v)) + v + struct.pack(">I", ttl) for t, v, ttl in answers)


def parseResolved(body):
    body, answers, i = bytes(body), [], 0
    while i < len(body):
        if i + 2 > len(body):
            raise StreamProtocolError("RESOLVED answer header truncated")
        kind, length = body[i], body[i + 1]
        end = i + 2 + length + 4
        if end > len(body):
            raise StreamProtocolError("RESOLVED answer truncated")
        value = body[i + 2 : i + 2 + length]
        if (kind == RESOLVED_IPV4 and length != 4) or (kind == RESOLVED_IPV6 and length != 16):
            raise StreamProtocolError("RESOLVED address has the wrong length")
        answers.append((kind, value, struct.unpack(">I", body[end - 4 : end])[0]))
        i = end
    return answers


# ---- one stream


@implementer(ITransport, IConsumer, IPushProducer, IStream)
class CircuitStream:
    """
    One stream: a Twisted transport for the protocol at this end.

    C{protocol} gets C{makeConnection(self)}, C{dataReceived}, and on the
    peer's half-close C{readConnectionLost()} (if it has one), then
    C{connectionLost(Failure)} with L{StreamRefused} carrying the reason.
    """

    disconnecting = False

    def __init__(self, mux, streamId, state):
        self.mux = mux
        self.streamId = streamId
        self.state = state
        self.protocol = None
        self.packageWindow = STREAM_WINDOW
        self.deliverWindow = STREAM_WINDOW
        self._unacked = 0
        self._pending = []
        self._pendingBytes = 0
        self._producer = None
        self._producerPaused = False
        self._readPaused = False
        self._finishAfterFlush = False
        self.bytesSent = self.bytesReceived = 0

    # -- transport side, used by the protocol at this end

    def attach(self, protocol):
        self.protocol = protocol
        protocol.makeConnection(self)

    def write(self, data):
        if self.state not in (StreamState.OPEN, StreamState.PEER_FINISHED) or self._finishAfterFlush:
            return
        if not data:
            return
        self._pending.append(data)
        self._pendingBytes += len(data)
        self._flush()
        if self._pendingBytes > ABORT_ABOVE:
            self.close(REASON_RESOURCELIMIT)
        elif self._pendingBytes > PAUSE_ABOVE and self._producer is not None and not self._producerPaused:
            self._producerPaused = True
            self._producer.pauseProducing()

    def writeSequence(self, seq):
        for data in seq:
            self.write(data)

    def _flush(self):
        mux = self.mux
        maxData = mux.maxData
        send = mux.sendRelay
        sid = self.streamId
        while self._pending and self.packageWindow > 0:
            room = min(self.packageWindow, mux.circuitRoom())
            if room <= 0:
                mux._blocked[sid] = self  # flushed again when the circuit window opens
                break
            chunk = self._pending[0]
            if len(chunk) >= maxData:
                # Send whole cells from the front; keep the remainder queued.
                view = memoryview(chunk)
                cells = min(len(chunk) // maxData, room)
                for k in range(cells):
                    send(DATA, sid, view[k * maxData : (k + 1) * maxData])
                self.packageWindow -= cells
                sent = cells * maxData
                rest = chunk[sent:]
                if rest:
                    self._pending[0] = rest
                else:
                    self._pending.pop(0)
                self._pendingBytes -= sent
                self.bytesSent += sent
                mux.bytesSent += sent
                continue
            # Coalesce small writes into one cell.
            body, size = [], 0
            while self._pending and size + len(self._pending[0]) <= maxData:
                piece = self._pending.pop(0)
                body.append(piece)
                size += len(piece)
            if self._pending and size < maxData:
                # Fill the cell with the front of the next chunk.
                head = self._pending[0]
                body.append(head[: maxData - size])
                self._pending[0] = head[maxData - size :]
                size = maxData
            send(DATA, sid, b"".join(body))
            self.packageWindow -= 1
            self._pendingBytes -= size
            self.bytesSent += size
            mux.bytesSent += size
        if self._producerPaused and self._pendingBytes <= PAUSE_ABOVE // 2 and self._producer is not None:
            self._producerPaused = False
            self._producer.resumeProducing()
        if self._finishAfterFlush and not self._pending:
            self._finishAfterFlush = False
            self._sendFinish()

    def loseConnection(self):
        """Half-close: flush what is buffered, then END(DONE)."""
        if self.state in (StreamState.OPEN, StreamState.PEER_FINISHED) and not self._finishAfterFlush:
            self._finishAfterFlush = True
            self.disconnecting = True
            self._flush()

    def _sendFinish(self):
        self.mux.sendRelay(END, self.streamId, bytes([REASON_DONE]))
        if self.state is StreamState.PEER_FINISHED:
            self._closed(REASON_DONE)
        else:
            self.state = StreamState.WE_FINISHED

    def abortConnection(self):
        self.close(REASON_MISC)

    def close(self, reason=REASON_DONE):
        """Abort: END(reason) at once, drop what is buffered."""
        if self.state is StreamState.CLOSED:
            return
        self.mux.sendRelay(END, self.streamId, bytes([reason]))
        self._closed(reason)

    def halfClose(self):
        self.loseConnection()

    def getPeer(self):
        return self.mux.peerAddress(self)

    def getHost(self):
        return self.mux.peerAddress(self)

    # IConsumer: the producer feeding write()

    def registerProducer(self, producer, streaming):
        self._producer = producer
        if self._producerPaused:
            producer.pauseProducing()

    def unregisterProducer(self):
        self._producer = None

    # IPushProducer: the protocol we deliver to pauses us when it cannot keep up

    def pauseProducing(self):
        self._readPaused = True

    def resumeProducing(self):
        self._readPaused = False
        self._acknowledge()

    def stopProducing(self):
        self.close(REASON_DONE)

    # -- circuit side

    def relayReceived(self, command, body):
        if command == DATA:
            if self.state not in (StreamState.OPEN, StreamState.WE_FINISHED):
                return self._violation("DATA on a stream that is not open")
            self.deliverWindow -= 1
            if self.deliverWindow < 0:
                return self._violation("peer sent beyond the stream window")
            self.bytesReceived += len(body)
            self.mux.bytesReceived += len(body)
            self.protocol.dataReceived(bytes(body))
            self._unacked += 1
            self._acknowledge()
        elif command == SENDME:
            self.packageWindow += SENDME_EVERY
            if self.packageWindow > STREAM_WINDOW:
                return self._violation("SENDME beyond the stream window")
            self._flush()
        elif command == END:
            reason = body[0] if len(body) >= 1 else REASON_MISC
            if reason == REASON_DONE and self.state is StreamState.OPEN:
                self.state = StreamState.PEER_FINISHED
                readLost = getattr(self.protocol, "readConnectionLost", None)
                if readLost is not None:
                    readLost()
                else:
                    self.loseConnection()
            else:
                self._closed(reason)
        else:
            self._violation(f"relay command {command} on an open stream")

    def _acknowledge(self):
        if self._readPaused:
            return
        while self._unacked >= SENDME_EVERY and self.state is not StreamState.CLOSED:
            self._unacked -= SENDME_EVERY
            self.deliverWindow += SENDME_EVERY
            self.mux.sendRelay(SENDME, self.streamId, b"")

    def _violation(self, why):
        self.mux.violations += 1
        self.close(REASON_TORPROTOCOL)

    def _closed(self, reason):
        if self.state is StreamState.CLOSED:
            return
        wasConnecting = self.state is StreamState.CONNECTING
        self.state = StreamState.CLOSED
        self._pending, self._pendingBytes = [], 0
        self.mux._forget(self)
        # A protocol is only told of a close if it was told of the connection.
        if self.protocol is not None and not wasConnecting:
            self.protocol.connectionLost(Failure(StreamRefused(reason, f"stream ended: reason {reason}")))


# ---- the streams of one circuit


class StreamMux:
    """
    All streams of one circuit at one end.

    @param sendRelay: C{callable(command, streamId, body)} that puts a relay
        message on the circuit.
    @param maxData: bytes of stream data per DATA cell.
    @param accept: at the exit, C{callable(stream, host, port)} returning a
        Deferred that fires when the outgoing connection is made (the
        callable attaches its protocol to C{stream}) or fails with
        L{StreamRefused}; C{None} at the origin (BEGIN refused).
    @param resolve: at the exit, C{callable(name)} returning a Deferred of
        RESOLVED answers; C{None} at the origin.
    """

    def __init__(self, sendRelay, maxData, accept=None, resolve=None, circuitRoom=None):
        self.sendRelay = sendRelay
        self.maxData = maxData
        if circuitRoom is not None:
            self.circuitRoom = circuitRoom
        self._blocked = {}  # streams waiting for the circuit window
        self._accept = accept
        self._resolve = resolve
        self.streams = {}
        self._waiting = {}  # origin: streamId -> Deferred for CONNECTED / RESOLVED
        self._nextId = 1
        self.violations = 0
        self.closedReason = None
        self.bytesSent = self.bytesReceived = 0  # stream data, all streams ever

    def peerAddress(self, stream):
        return None

    @staticmethod
    def circuitRoom():
        """DATA cells the circuit's own window takes now (unlimited unless given)."""
        return 1 << 30

    def circuitWindowOpened(self):
        """The circuit got a SENDME: streams that waited for it send again, in turn."""
        blocked, self._blocked = self._blocked, {}
        for stream in blocked.values():
            if stream.state is not StreamState.CLOSED:
                stream._flush()

    def _allocateId(self):
        if len(self.streams) + len(self._waiting) >= MAX_STREAMS:
            raise StreamRefused(REASON_RESOURCELIMIT, "too many streams on this circuit")
        for _ in range(65535):
            sid = self._nextId
            self._nextId = sid % 65535 + 1
            if sid not in self.streams and sid not in self._waiting:
                return sid
        raise StreamRefused(REASON_RESOURCELIMIT, "no free stream id")

    # -- origin

    def openStream(self, host, port, protocol):
        """
        Send BEGIN; once CONNECTED, C{protocol} is attached to the stream.

        @return: a Deferred firing with the L{CircuitStream}, or failing with
            L{StreamRefused} carrying the exit's END reason.
        """
        if self.closedReason is not None:
            return defer.fail(StreamRefused(REASON_DESTROY, "circuit is closed"))
        try:
            sid = self._allocateId()
            body = encodeBegin(host, port)
        except (StreamRefused, UnicodeEncodeError) as e:
            return defer.fail(e if isinstance(e, StreamRefused) else StreamRefused(REASON_MISC, "bad target"))
        stream = CircuitStream(self, sid, StreamState.CONNECTING)
        stream.protocol = protocol
        stream.target = f"{host}:{port}"
        self.streams[sid] = stream
        d = defer.Deferred()
        self._waiting[sid] = d
        self.sendRelay(BEGIN, sid, body)
        return d

    def resolve(self, name):
        """
        RESOLVE C{name} at the exit.

        @return: a Deferred firing with a list of C{(type, value, ttl)}.
        """
        if self.closedReason is not None:
            return defer.fail(StreamRefused(REASON_DESTROY, "circuit is closed"))
        try:
            sid = self._allocateId()
        except StreamRefused as e:
            return defer.fail(e)
        d = defer.Deferred()
        self._waiting[sid] = d
        self.sendRelay(RESOLVE, sid, name.encode("ascii", "replace") + b"\x00")
        return d

    # -- both ends

    def relayReceived(self, command, streamId, body):
        """A stream-level relay message arrived on the circuit."""
        stream = self.streams.get(streamId)
        if stream is not None and stream.state is not StreamState.CONNECTING:
            return stream.relayReceived(command, body)
        waiting = self._waiting.pop(streamId, None)
        if waiting is not None:
            return self._answer(waiting, stream, streamId, command, body)
        if stream is not None:
            # The exit is still connecting this stream; the origin may give up.
            if command == END:
                return stream._closed(body[0] if body else REASON_MISC)
            self.violations += 1
            return
        if command == BEGIN and self._accept is not None:
            return self._begin(streamId, body)
        if command == RESOLVE and self._resolve is not None:
            return self._resolveRequest(streamId, body)
        # Cells racing a close, or junk: counted, never answered.
        self.violations += 1

    def _answer(self, waiting, stream, streamId, command, body):
        if command == CONNECTED and stream is not None:
            stream.state = StreamState.OPEN
            protocol, stream.protocol = stream.protocol, None
            stream.attach(protocol)
            waiting.callback(stream)
        elif command == RESOLVED and stream is None:
            try:
                waiting.callback(parseResolved(body))
            except StreamProtocolError as e:
                waiting.errback(StreamRefused(REASON_TORPROTOCOL, str(e)))
        elif command == END:
            self.streams.pop(streamId, None)
            reason = body[0] if body else REASON_MISC
            waiting.errback(StreamRefused(reason))
        else:
            self.streams.pop(streamId, None)
            self.violations += 1
            self.sendRelay(END, streamId, bytes([REASON_TORPROTOCOL]))
            waiting.errback(StreamRefused(REASON_TORPROTOCOL, f"unexpected relay command {command}"))

    def _begin(self, streamId, body):
        if streamId == 0 or streamId in self.streams or len(self.streams) >= MAX_STREAMS:
            self.violations += 1
            return self.sendRelay(END, streamId, bytes([REASON_RESOURCELIMIT if streamId else REASON_TORPROTOCOL]))
        try:
            host, port = parseBegin(body)
        except StreamProtocolError:
            self.violations += 1
            return self.sendRelay(END, streamId, bytes([REASON_TORPROTOCOL]))
        stream = CircuitStream(self, streamId, StreamState.CONNECTING)
        self.streams[streamId] = stream

        def connected(_):
            if stream.state is StreamState.CONNECTING:
                stream.state = StreamState.OPEN
                self.sendRelay(CONNECTED, streamId, b"")
                stream._flush()
            elif stream.protocol is not None:
                # The origin ended the stream while we were connecting.
                stream.protocol.connectionLost(Failure(StreamRefused(REASON_DONE, "origin ended the stream")))

        def refused(failure):
            if failure.check(StreamRefused):
                reason = failure.value.reason
            else:
                reason = REASON_INTERNAL
                log.failure("exit could not handle a BEGIN", failure)
            if stream.state is StreamState.CONNECTING:
                self.streams.pop(streamId, None)
                stream.state = StreamState.CLOSED
                self.sendRelay(END, streamId, bytes([reason]))

        defer.maybeDeferred(self._accept, stream, host, port).addCallbacks(connected, refused)

    def _resolveRequest(self, streamId, body):
        name, nul, _ = bytes(body).partition(b"\x00")
        try:
            text = name.decode("ascii")
        except UnicodeDecodeError:
            text = ""
        if not nul or not _validHostname(text):
            self.violations += 1
            return self.sendRelay(RESOLVED, streamId, encodeResolved([(RESOLVED_ERROR, b"", 0)]))

        def answer(answers):
            if self.closedReason is None:
                self.sendRelay(RESOLVED, streamId, encodeResolved(answers or [(RESOLVED_ERROR, b"", 0)]))

        def failed(_):
            if self.closedReason is None:
                self.sendRelay(RESOLVED, streamId, encodeResolved([(RESOLVED_ERROR_TRANSIENT, b"", 0)]))

        defer.maybeDeferred(self._resolve, text).addCallbacks(answer, failed)

    def _forget(self, stream):
        if self.streams.get(stream.streamId) is stream:
            del self.streams[stream.streamId]

    def status(self):
        """Streams and byte counts; targets only at the origin (the exit keeps none here)."""
        return {
            "bytes_sent": self.bytesSent,
            "bytes_received": self.bytesReceived,
            "streams": [
                {"id": s.streamId, "state": s.state.value, "target": getattr(s, "target", None),
                 "sent": s.bytesSent, "received": s.bytesReceived}
                for s in self.streams.values()
            ],
        }

    def circuitClosed(self, reason=REASON_DESTROY):
        """The circuit is gone: every stream and pending request fails with C{reason}."""
        self.closedReason = reason
        waiting, self._waiting = self._waiting, {}
        for d in waiting.values():
            d.errback(StreamRefused(reason, "circuit closed"))
        for stream in list(self.streams.values()):
            stream._closed(reason)
        self.streams.clear()
