"""All streams of one circuit at one end: stream ids, BEGIN and RESOLVE, routing by stream id.

The same L{StreamMux} runs at both ends of a circuit.  At the origin it
opens streams (for SOCKS) and asks the exit to resolve names; at the exit
it accepts BEGIN (connecting out through its C{accept} and splicing the
result to the stream) and answers RESOLVE.  Each stream is a
L{meshvpn.streams.circuitstream.CircuitStream}, which owns its windows and
lifecycle; the mux only routes.

This module does not know cells: the circuit hands it C{(command, streamId,
body)} and gives it a C{sendRelay(command, streamId, body)} to answer with.
Message bodies are L{meshvpn.onion.streammsgs}'s, command numbers
L{meshvpn.onion.cells.RelayCommand}'s, END reasons
L{meshvpn.onion.endreasons.EndReason}.
"""

import secrets

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from meshvpn.errors import StreamRefused
from meshvpn.hostport import formatHostPort
from meshvpn.interfaces import ICircuitStreamHandler
from meshvpn.onion.cells import CellError, RelayCommand
from meshvpn.onion.endreasons import EndReason
from meshvpn.onion.streammsgs import Begin, End, Resolve, Resolved
from meshvpn.streams.circuitstream import CircuitStream, StreamState
from meshvpn.streams.splice import splice

log = Logger()

_MULTIPATH = RelayCommand.MULTIPATH

MAX_STREAMS = 1024  # per circuit; a peer cannot make us track more


def _withReceiver(stream, receiver):
    stream.setReceiver(receiver)
    return stream


@implementer(ICircuitStreamHandler)
class StreamMux:
    """
    @param sendRelay: C{callable(command, streamId, body)} that puts a relay
        message on the circuit.
    @param maxData: bytes of stream data per DATA cell, or a callable
        returning it: an origin's mux is attached before its circuit is
        built, and the last hop's relay crypto sets the size.
    @param accept: at the exit, C{callable(host, port)} returning (a
        Deferred of) the L{meshvpn.interfaces.IStream} connected to the
        target, spliced to the stream once CONNECTED has gone back; or
        failing with L{StreamRefused} carrying the END reason.  C{None} at
        the origin (BEGIN refused).
    @param resolve: at the exit, C{callable(name)} returning a Deferred of
        RESOLVED answers C{(type, value, ttl)}; C{None} at the origin.
    @param circuitRoom: C{callable()}: DATA cells the circuit's own window
        takes now (unlimited if not given).
    @param xon: C{callable()}: true if the circuit negotiated XON/XOFF
        (read as each stream is made; L{meshvpn.onion.flow.FLOW_XON}).
    @param sendData: C{callable(streamId, chunks)} that sends one DATA cell
        per chunk at once (the circuit's C{sendDataRun}), or C{None}.
    @param early: C{callable()}: true if the circuit negotiated optimistic
        data (L{meshvpn.onion.flow.FLOW_EARLY}), read as each stream is made.
    """

    def __init__(self, sendRelay, maxData, accept=None, resolve=None, circuitRoom=None, xon=None, sendData=None,
                 early=None):
        self.sendRelay = sendRelay
        self.sendData = sendData
        self._maxData = maxData if callable(maxData) else (lambda: maxData)
        self._xon = xon or (lambda: False)
        self._early = early or (lambda: False)
        if circuitRoom is not None:
            self.circuitRoom = circuitRoom
        self._accept = accept
        self._resolve = resolve
        self.streams = {}
        self._resolving = {}  # origin: streamId -> Deferred for RESOLVED
        self._blocked = {}  # streams waiting for the circuit window, in turn
        self._randbelow = secrets.randbelow
        self.violations = 0
        self.closedReason = None
        self.bytesSent = self.bytesReceived = 0  # stream data, all streams ever
        self.heldBytes = 0  # bytes every stream holds for a reader that paused it
        # The circuit as a multipath leg (meshvpn.streams.multipathstream.CircuitLeg), or None:
        # MP_* messages go there, and it hears when the window opens and when the circuit closes.
        self.multipath = None

    @property
    def maxData(self):
        return self._maxData()

    @staticmethod
    def circuitRoom():
        return 1 << 30

    def waitForRoom(self, stream):
        """C{stream} has data but the circuit window is shut: flush it when it opens."""
        self._blocked[stream.streamId] = stream

    def circuitWindowOpened(self):
        """
        The circuit got a SENDME: streams that waited for it send again, in
        turns of an equal share of the room, so one busy stream cannot take
        all of every window that opens (they share the circuit fairly).
        """
        if self.multipath is not None:
            self.multipath.windowOpened()
        blocked, self._blocked = self._blocked, {}
        streams = [s for s in blocked.values() if s.state is not StreamState.CLOSED]
        while streams:
            room = self.circuitRoom()
            if room <= 0:
                for stream in streams:
                    self._blocked[stream.streamId] = stream
                return
            share = max(1, room // len(streams))
            streams = [s for s in streams if s.circuitWindowOpened(share) and s.state is not StreamState.CLOSED]

    def forget(self, stream):
        """C{stream} is closed: its id is free again."""
        if self.streams.get(stream.streamId) is stream:
            del self.streams[stream.streamId]

    def _allocateId(self):
        """
        A random stream id not in use.  Sequential ids told anyone who could
        inject a cell which id the next stream (the VPN's DNS query, say)
        would get, and told the exit how many streams a circuit had carried.
        At most L{MAX_STREAMS} of 65535 ids are in use, so a draw almost
        always hits a free one; the bound on tries only guards the loop.
        """
        if len(self.streams) + len(self._resolving) >= MAX_STREAMS:
            raise StreamRefused(EndReason.RESOURCELIMIT, "too many streams on this circuit")
        for _ in range(64):
            sid = self._randbelow(65535) + 1
            if sid not in self.streams and sid not in self._resolving:
                return sid
        raise StreamRefused(EndReason.RESOURCELIMIT, "no free stream id")

    # ---- origin

    def openStream(self, host, port, receiver=None, early=None):
        """
        Send BEGIN.

        @param receiver: an L{meshvpn.interfaces.IStreamReceiver} to set on
            the stream once it is open, or C{None} (the caller sets one).
        @param early: the application's L{meshvpn.streams.optimistic.OptimisticData},
            or C{None}: on a circuit that negotiated optimistic data its
            bytes follow BEGIN at once, and so does what it gets later.
        @return: a Deferred firing with the L{CircuitStream} once CONNECTED,
            or failing with L{StreamRefused} carrying the exit's END reason.
            Cancelling it ends the stream.
        """
        if self.closedReason is not None:
            return defer.fail(StreamRefused(EndReason.DESTROY, "circuit is closed"))
        try:
            body = Begin(host, port).encode()
            sid = self._allocateId()
        except CellError:
            return defer.fail(StreamRefused(EndReason.MISC, "bad target"))
        except StreamRefused as e:
            return defer.fail(e)
        stream = CircuitStream(self, sid, target=formatHostPort(host, port), origin=True, xon=bool(self._xon()),
                               early=bool(self._early()))
        self.streams[sid] = stream
        opening = stream.opening
        self.sendRelay(RelayCommand.BEGIN, sid, body)
        if early is not None:
            early.attach(stream if stream.early else None)
        if receiver is not None:
            opening.addCallback(_withReceiver, receiver)
        return opening

    def resolve(self, name):
        """
        RESOLVE C{name} at the exit.

        @return: a Deferred firing with a list of C{(type, value, ttl)}.
        """
        if self.closedReason is not None:
            return defer.fail(StreamRefused(EndReason.DESTROY, "circuit is closed"))
        try:
            body = Resolve(name).encode()
            sid = self._allocateId()
        except CellError:
            return defer.fail(StreamRefused(EndReason.RESOLVEFAILED, "not a host name"))
        except StreamRefused as e:
            return defer.fail(e)
        # Cancelled (the opener's attach timeout): the id is forgotten, a late answer dropped.
        d = defer.Deferred(lambda _: self._resolving.pop(sid, None))
        self._resolving[sid] = d
        self.sendRelay(RelayCommand.RESOLVE, sid, body)
        return d

    # ---- both ends

    def relayReceived(self, command, streamId, body):
        """A stream-level relay message arrived on the circuit."""
        if command in _MULTIPATH:
            if self.multipath is None:
                self.violations += 1
                return None
            return self.multipath.relayReceived(command, streamId, body)
        stream = self.streams.get(streamId)
        if stream is not None:
            return stream.relayReceived(command, body)
        resolving = self._resolving.pop(streamId, None)
        if resolving is not None:
            return self._resolveAnswered(resolving, streamId, command, body)
        if command == RelayCommand.BEGIN and self._accept is not None:
            return self._begin(streamId, body)
        if command == RelayCommand.RESOLVE and self._resolve is not None:
            return self._resolveRequest(streamId, body)
        # Cells racing a close, or junk: counted, never answered.
        self.violations += 1

    def _resolveAnswered(self, waiting, streamId, command, body):
        if command == RelayCommand.RESOLVED:
            try:
                answers = Resolved.decode(body).answers
            except CellError as e:
                waiting.errback(StreamRefused(EndReason.TORPROTOCOL, str(e)))
            else:
                waiting.callback(list(answers))
        elif command == RelayCommand.END:
            waiting.errback(StreamRefused(End.decode(body).reason))
        else:
            self.violations += 1
            self.sendRelay(RelayCommand.END, streamId, End(EndReason.TORPROTOCOL).encode())
            waiting.errback(StreamRefused(EndReason.TORPROTOCOL, f"unexpected relay command {command}"))

    # ---- exit

    def _begin(self, streamId, body):
        if streamId == 0 or len(self.streams) >= MAX_STREAMS:
            self.violations += 1
            reason = EndReason.RESOURCELIMIT if streamId else EndReason.TORPROTOCOL
            return self.sendRelay(RelayCommand.END, streamId, End(reason).encode())
        try:
            begin = Begin.decode(body)
        except CellError:
            self.violations += 1
            return self.sendRelay(RelayCommand.END, streamId, End(EndReason.TORPROTOCOL).encode())
        stream = CircuitStream(self, streamId, xon=bool(self._xon()), early=bool(self._early()))
        self.streams[streamId] = stream

        def connected(far):
            if stream.state is StreamState.CONNECTING:
                stream.connectedOut()
                splice(stream, far)
            else:
                # The origin ended the stream while we were connecting.
                far.close(EndReason.DONE)

        def refused(failure):
            if failure.check(StreamRefused):
                reason = failure.value.reason
            else:
                reason = EndReason.INTERNAL
                log.failure("exit could not handle a BEGIN", failure)
            stream.close(reason)

        def broken(failure):
            log.failure("exit could not splice a stream", failure)
            stream.close(EndReason.INTERNAL)

        d = defer.maybeDeferred(self._accept, begin.host, begin.port)
        d.addCallbacks(connected, refused).addErrback(broken)

    def _resolveRequest(self, streamId, body):
        try:
            name = Resolve.decode(body).hostname
        except CellError:
            self.violations += 1
            return self.sendRelay(RelayCommand.RESOLVED, streamId, Resolved.error(transient=False).encode())

        def answer(answers):
            if self.closedReason is None:
                resolved = Resolved.fitting(answers, self.maxData) if answers else Resolved.error(transient=False)
                self.sendRelay(RelayCommand.RESOLVED, streamId, resolved.encode())

        def failed(_):
            if self.closedReason is None:
                self.sendRelay(RelayCommand.RESOLVED, streamId, Resolved.error(transient=True).encode())

        defer.maybeDeferred(self._resolve, name).addCallbacks(answer, failed)

    # ---- the circuit

    def status(self):
        """Streams and byte counts; targets only at the origin (the exit keeps none here)."""
        return {
            "bytes_sent": self.bytesSent,
            "bytes_received": self.bytesReceived,
            "streams": [
                {"id": s.streamId, "state": s.state.value, "target": s.target,
                 "sent": s.bytesSent, "received": s.bytesReceived}
                for s in self.streams.values()
            ],
        }

    def circuitClosed(self, reason=EndReason.DESTROY):
        """The circuit is gone: every stream and pending request fails with C{reason}."""
        self.closedReason = reason
        if self.multipath is not None:
            self.multipath.circuitClosed()
        resolving, self._resolving = self._resolving, {}
        for d in resolving.values():
            d.errback(StreamRefused(reason, "circuit closed"))
        for stream in list(self.streams.values()):
            stream.circuitClosed(reason)
        self.streams.clear()
