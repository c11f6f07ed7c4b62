"""Bytes a node wrote, handed to the kernel this reactor turn instead of at the next poll.

A Twisted TCP transport buffers a write and sends it when the reactor next
finds the socket writable: one more pass through the event loop, in which
every other ready socket (at a busy client or exit, other circuits' cells)
is served first.  For the bytes a stream's first byte waits on that pass
is pure delay: the SOCKS replies the application waits for before it sends
its request, the request the exit writes to the target, the answer the
client writes to the application, and every link's TLS records
(L{meshvpn.link.tlsturn}).

  - L{pushNow}: after a write that is the whole of what the session has to
    say now (a SOCKS reply): send it at once.
  - L{TurnEndPush}: after a write that may be one of many this turn (a
    stream's data, one DATA cell at a time): one send once the turn's work
    is done (a C{callLater(0)}, which the reactor runs before its next
    poll), so bulk transfers make no more system calls than before.

Only the plain case is pushed: a connected socket that is not closing or
half-closing and whose producer is not paused (a full buffer is the
reactor's to drain; resuming a producer from inside a write re-enters it).
A failed send is left for the reactor: the socket stays registered for
writing and reports the loss its usual way.
"""

from twisted.internet.abstract import FileDescriptor


def _socketOf(transport):
    """The L{FileDescriptor} C{transport} is, or C{None} (an in-memory transport in tests)."""
    return transport if isinstance(transport, FileDescriptor) else None


def pushNow(transport):
    """Send what C{transport} holds now, if it is a socket in the plain case."""
    sock = _socketOf(transport)
    if sock is None or not sock.connected or sock.disconnecting or sock.producerPaused:
        return
    if getattr(sock, "_writeDisconnecting", False):
        return  # a half-close is the reactor's to finish, after the last byte
    if not getattr(sock, "_tempDataLen", 1) and len(sock.dataBuffer) <= sock.offset:
        return  # nothing held: no empty send()
    sock.doWrite()


class TurnEndPush:
    """
    One connection's writes of a reactor turn, sent together when the turn ends.

    @param transport: the connection's transport.
    @param clock: an C{IReactorTime}; C{None}: the socket's own reactor.
    """

    __slots__ = ("_transport", "_clock", "_call")

    def __init__(self, transport, clock=None):
        sock = _socketOf(transport)
        self._clock = clock if clock is not None else getattr(sock, "reactor", None)
        self._transport = sock if self._clock is not None else None
        self._call = None

    def soon(self):
        """More writes may follow this turn: send them all at its end."""
        if self._call is None and self._transport is not None:
            self._call = self._clock.callLater(0, self._run)

    def _run(self):
        self._call = None
        pushNow(self._transport)

    def stop(self):
        """The connection is gone: nothing more to send."""
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None
        self._transport = None
