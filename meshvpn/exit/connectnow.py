"""The exit's TCP connect to an IP address, started and (on a near target) finished in the turn BEGIN came in.

Twisted's C{connectTCP}, and the endpoints built on it, spend two reactor
turns on a connect the kernel may already have finished: the socket's
C{connect()} is made one turn late (a C{callLater(0)}, so that
C{connectTCP} returns before any outcome), and success is learnt from the
socket's writability at the next poll.  At an exit under load each turn is
a pass over every other ready socket, and BEGIN -> CONNECTED was the
largest single step of a stream's first byte (about 1.4 ms of 7.4 on the
loopback testnet).

Here the non-blocking C{connect()} is made at once.  On loopback or a near
host the kernel has usually completed the handshake by the time it
returns, so one zero-timeout poll of this socket alone tells; the socket is
then handed to the reactor (C{adoptStreamConnection}) and the protocol is
connected before L{connectTCP} returns.  Otherwise the reactor watches the
socket for writability, under a timeout, exactly as Twisted would.

Errors are Twisted's (C{error.getConnectError}, C{error.TimeoutError},
C{error.ConnectingCancelledError}), so the END reason comes out of
L{meshvpn.exit.connect.reasonForConnectError} unchanged.  The factory is
only asked to build the protocol: no C{doStart}, and so no "Starting
factory" log line per stream.
"""

import enum
import errno
import os
import select
import socket

from twisted.internet import defer, error
from twisted.internet.interfaces import IWriteDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

_PENDING = {errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY}


class AttemptState(enum.Enum):
    WAITING = "waiting"  # connect() made, the reactor watches for writability
    DONE = "done"  # connected, failed, timed out or cancelled; the socket is no longer ours


def _connectError(code):
    return error.getConnectError((code, os.strerror(code)))


def writableNow(skt):
    """Whether C{skt} is writable this instant (its connect finished, or failed)."""
    poller = select.poll()
    poller.register(skt.fileno(), select.POLLOUT)
    return bool(poller.poll(0))


class _OneProtocol:
    """A factory for C{adoptStreamConnection}: builds the caller's protocol and remembers it."""

    def __init__(self, protocolFactory):
        self.protocolFactory = protocolFactory
        self.protocol = None

    def buildProtocol(self, addr):
        self.protocol = self.protocolFactory.buildProtocol(addr)
        return self.protocol


def _adopt(reactor, skt, protocolFactory):
    """Hand the connected C{skt} to the reactor. @return: the connected protocol."""
    try:
        code = skt.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            raise _connectError(code)
        factory = _OneProtocol(protocolFactory)
        try:
            reactor.adoptStreamConnection(skt.fileno(), skt.family, factory)
        except OSError as e:  # not connected after all (ENOTCONN from getpeername)
            raise _connectError(e.errno or errno.EINVAL) from None
        if factory.protocol is None:
            raise error.NoProtocol()
        return factory.protocol
    finally:
        skt.close()  # the reactor holds its own duplicate of the descriptor


@implementer(IWriteDescriptor)
class _Attempt:
    """A connect the kernel has not finished yet: the reactor tells when the socket is writable."""

    def __init__(self, reactor, skt, target, protocolFactory, timeout):
        self.reactor = reactor
        self.target = target
        self.skt = skt
        self.protocolFactory = protocolFactory
        self.state = AttemptState.WAITING
        self.deferred = defer.Deferred(self._cancel)
        self._fileno = skt.fileno()
        self._timer = reactor.callLater(timeout, self._end, Failure(error.TimeoutError()))
        reactor.addWriter(self)

    def _end(self, failure):
        """Stop waiting; C{failure} (or C{None}: connected) decides the outcome."""
        if self.state is AttemptState.DONE:
            return
        self.reactor.removeWriter(self)  # while fileno() still names the socket
        self.state = AttemptState.DONE
        if self._timer.active():
            self._timer.cancel()
        skt, self.skt = self.skt, None
        if failure is not None:
            skt.close()
            self.deferred.errback(failure)
            return
        try:
            protocol = _adopt(self.reactor, skt, self.protocolFactory)
        except Exception:
            self.deferred.errback()
        else:
            self.deferred.callback(protocol)

    def _cancel(self, deferred):
        if self.state is AttemptState.WAITING:
            self._end(Failure(error.ConnectingCancelledError(self.target)))

    # ---- what the reactor calls

    def fileno(self):
        return self._fileno if self.state is AttemptState.WAITING else -1

    def doWrite(self):
        self._end(None)

    def connectionLost(self, reason):
        # The poll saw an error or hang-up (a refused connect, say): the
        # socket's own error names it better than "connection lost".
        if self.state is AttemptState.WAITING:
            code = self.skt.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            self._end(Failure(_connectError(code)) if code else reason)

    def logPrefix(self):
        return "exit-connect"


def connectTCP(reactor, address, port, protocolFactory, timeout, writable=writableNow):
    """
    Connect to C{address} (an IP literal) and C{port}.

    @param reactor: a reactor with C{adoptStreamConnection} and C{addWriter}.
    @param writable: C{callable(socket)}: whether the connect finished this
        instant (L{writableNow}; tests give their own).
    @return: a Deferred firing with the protocol C{protocolFactory} built,
        once its C{connectionMade} has run (already fired when the kernel
        finished at once); failing with a C{ConnectError}.  Cancelling it
        closes the socket.
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    skt = socket.socket(family, socket.SOCK_STREAM)
    try:
        skt.setblocking(False)
        code = skt.connect_ex((address, port))
    except OSError as e:
        skt.close()
        return defer.fail(_connectError(e.errno or errno.EINVAL))
    if code and code != errno.EISCONN and code not in _PENDING:
        skt.close()
        return defer.fail(_connectError(code))
    if code in _PENDING and not writable(skt):
        return _Attempt(reactor, skt, (address, port), protocolFactory, timeout).deferred
    try:
        return defer.succeed(_adopt(reactor, skt, protocolFactory))
    except Exception:
        return defer.fail()
