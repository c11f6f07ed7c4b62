"""The client's SOCKS5 server: how applications reach the network without root.

Each connection is one session walking an explicit state machine
(L{State}, L{Event}, L{TRANSITIONS}), the shape of txtorcon's SOCKS machine
seen from the server: greeting, optional username/password, one request,
then either a stream (CONNECT: connecting, open, half-closed either way,
closed) or one answer (Tor's RESOLVE / RESOLVE_PTR).  Names are passed to
the stream opener as given and resolved at the exit, never here.  The
username and password are not checked: like Tor's IsolateSOCKSAuth they
only choose the isolation key, so different credentials never share a
circuit.

Every handshake message is size-bounded by the parser; data an app sends
before the stream is open is buffered up to L{MAX_EARLY_DATA} and then the
app's socket is paused; the opener sends it right after BEGIN where the
circuit allows (optimistic data, L{meshvpn.streams.optimistic}), so an app
that sends its request without waiting for the SOCKS reply saves a circuit
round trip.  Once open, the TCP transport and the stream are
each other's producer and consumer, so neither side buffers without bound.
Anything malformed gets the SOCKS reply that names the problem and closes
that one connection.
"""

import enum
import ipaddress

from automat import NoTransition
from twisted.internet import defer, endpoints
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IHalfCloseableProtocol, ITCPTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from meshvpn.client import socksparse as sp
from meshvpn.hostport import formatHostPort
from meshvpn.client.socksparse import Command, Method, Reply, SocksError
from meshvpn.errors import ConfigError, NoExitForTarget, NoPath, StreamRefused
from meshvpn.interfaces import IStatusSource, IStreamReceiver
from meshvpn.ports import StreamListenerService
from meshvpn.onion.endreasons import EndReason
from meshvpn.streams.optimistic import OptimisticData
from meshvpn.socketpush import TurnEndPush, pushNow

MAX_EARLY_DATA = 64 * 1024
# Reading pauses at MAX_EARLY_DATA; a transport that keeps delivering past
# this much more has not honoured the pause, and the session is refused
# rather than let it hold without bound.
MAX_EARLY_OVERRUN = 64 * 1024
HANDSHAKE_TIMEOUT = 30.0
REQUEST_TIMEOUT = 120.0  # Tor's SocksTimeout
MAX_CONNECTIONS = 1024

# How a stream's END reason reads to a SOCKS5 application.
END_REASON_REPLY = {
    EndReason.MISC: Reply.GENERAL_FAILURE,
    EndReason.RESOLVEFAILED: Reply.HOST_UNREACHABLE,
    EndReason.CONNECTREFUSED: Reply.CONNECTION_REFUSED,
    EndReason.EXITPOLICY: Reply.NOT_ALLOWED,
    EndReason.DESTROY: Reply.GENERAL_FAILURE,
    EndReason.DONE: Reply.GENERAL_FAILURE,
    EndReason.TIMEOUT: Reply.TTL_EXPIRED,
    EndReason.NOROUTE: Reply.NETWORK_UNREACHABLE,
    EndReason.HIBERNATING: Reply.GENERAL_FAILURE,
    EndReason.INTERNAL: Reply.GENERAL_FAILURE,
    EndReason.RESOURCELIMIT: Reply.GENERAL_FAILURE,
    EndReason.CONNRESET: Reply.CONNECTION_REFUSED,
    EndReason.TORPROTOCOL: Reply.GENERAL_FAILURE,
    EndReason.NOTDIRECTORY: Reply.GENERAL_FAILURE,
}


def _noDelay(transport):
    # Handshake replies and first bytes are small: Nagle would hold them
    # for an ACK and add a round trip to every stream's first byte.
    if ITCPTransport.providedBy(transport):
        try:
            transport.setTcpNoDelay(True)
        except OSError:
            pass


def replyForFailure(failure):
    """@return: the L{Reply} for a failed openStream/resolve."""
    if failure.check(StreamRefused):
        try:
            return END_REASON_REPLY[EndReason(failure.value.reason)]
        except (ValueError, KeyError):
            return Reply.GENERAL_FAILURE
    if failure.check(NoExitForTarget):
        return Reply.NOT_ALLOWED  # every exit's policy refuses it: the "ruleset" is theirs
    if failure.check(NoPath):
        return Reply.NETWORK_UNREACHABLE
    if failure.check(defer.CancelledError, defer.TimeoutError):
        return Reply.TTL_EXPIRED
    return Reply.GENERAL_FAILURE


class State(enum.Enum):
    GREETING = "greeting"
    AUTH = "auth"
    REQUEST = "request"
    CONNECTING = "connecting"
    CONNECTING_APP_FINISHED = "connecting-app-finished"  # the app sent its request and EOF
    RESOLVING = "resolving"
    OPEN = "open"
    APP_FINISHED = "app-finished"  # the app sent EOF: the stream is half-closed
    STREAM_FINISHED = "stream-finished"  # the far end sent EOF: so did we, to the app
    CLOSED = "closed"


class Event(enum.Enum):
    NO_AUTH = "no-auth"  # the greeting chose no authentication
    USERNAME_PASSWORD = "username-password"  # ... or username/password
    AUTHENTICATED = "authenticated"
    CONNECT = "connect"  # a CONNECT request went to the opener
    RESOLVE = "resolve"  # a RESOLVE or RESOLVE_PTR request went to the opener
    CONNECTED = "connected"  # the opener gave a stream
    APP_EOF = "app-eof"  # the app half-closed its socket
    STREAM_EOF = "stream-eof"  # the far end half-closed the stream
    CLOSE = "close"  # a reply that ends the session, a timeout, the app or the stream gone


_S, _E = State, Event
TRANSITIONS = {
    (_S.GREETING, _E.NO_AUTH): _S.REQUEST,
    (_S.GREETING, _E.USERNAME_PASSWORD): _S.AUTH,
    (_S.AUTH, _E.AUTHENTICATED): _S.REQUEST,
    (_S.REQUEST, _E.CONNECT): _S.CONNECTING,
    (_S.REQUEST, _E.RESOLVE): _S.RESOLVING,
    (_S.CONNECTING, _E.CONNECTED): _S.OPEN,
    (_S.CONNECTING, _E.APP_EOF): _S.CONNECTING_APP_FINISHED,
    (_S.CONNECTING_APP_FINISHED, _E.CONNECTED): _S.APP_FINISHED,
    # A RESOLVE is answered whether or not the app still sends: then closed.
    (_S.RESOLVING, _E.APP_EOF): _S.RESOLVING,
    (_S.OPEN, _E.APP_EOF): _S.APP_FINISHED,
    (_S.OPEN, _E.STREAM_EOF): _S.STREAM_FINISHED,
    (_S.APP_FINISHED, _E.STREAM_EOF): _S.CLOSED,
    (_S.STREAM_FINISHED, _E.APP_EOF): _S.CLOSED,
}
TRANSITIONS.update({(state, _E.CLOSE): _S.CLOSED for state in State if state is not _S.CLOSED})

_HANDSHAKE = (_S.GREETING, _S.AUTH, _S.REQUEST)
_CONNECTING = (_S.CONNECTING, _S.CONNECTING_APP_FINISHED)
_WAITING = (_S.CONNECTING, _S.CONNECTING_APP_FINISHED, _S.RESOLVING)  # on the opener
_STREAMING = (_S.OPEN, _S.APP_FINISHED, _S.STREAM_FINISHED)  # a stream is attached
_APP_SENDS = (_S.OPEN, _S.STREAM_FINISHED)  # the app's bytes go to the stream
_APP_RECEIVES = (_S.OPEN, _S.APP_FINISHED)  # the stream's bytes go to the app


@implementer(IStreamReceiver, IHalfCloseableProtocol)
class SOCKSServerProtocol(Protocol):
    """One application connection: one SOCKS session."""

    log = Logger()

    def __init__(self, opener, reactor, stats=None):
        self.opener = opener
        self.reactor = reactor
        self.stats = stats if stats is not None else SOCKSStats()
        self.state = State.GREETING
        self.credentials = None
        self.request = None
        self.stream = None
        self._buffer = bytearray()
        self._early = OptimisticData()
        self._pausedForEarly = False
        self._pending = None
        self._timer = None
        # The stream's bytes for the app leave at the end of the turn (meshvpn.socketpush).
        self._push = TurnEndPush(None)

    def _go(self, event):
        try:
            self.state = TRANSITIONS[self.state, event]
        except KeyError:
            raise NoTransition(self.state, event) from None
        return self.state

    # ---- connection lifetime

    def connectionMade(self):
        _noDelay(self.transport)
        self._push = TurnEndPush(self.transport, self.reactor)
        self._arm(HANDSHAKE_TIMEOUT)

    def connectionLost(self, reason=None):
        if self.state is not State.CLOSED:
            self._go(Event.CLOSE)
        self._disarm()
        self._push.stop()
        self._buffer = bytearray()
        self._early.clear()
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.cancel()
        if self.stream is not None:
            # The app vanished: the stream has nobody left to read or write it.
            stream, self.stream = self.stream, None
            stream.close(EndReason.DONE)

    def _arm(self, seconds):
        self._disarm()
        self._timer = self.reactor.callLater(seconds, self._timedOut)

    def _disarm(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _timedOut(self):
        self._timer = None
        if self.state in _HANDSHAKE:
            self.stats.count("handshake_timeout")
            self._close()
        elif self.state in _WAITING:
            # Cancelling makes the opener's Deferred fail; _failed replies 0x06.
            self._pending.cancel()

    def _close(self):
        """End the session: the app's socket is closed (after what is written to it)."""
        if self.state is not State.CLOSED:
            self._go(Event.CLOSE)
        self._disarm()
        self.transport.loseConnection()

    def _fail(self, reply, why):
        """Send the error reply that fits the state, then close."""
        if reply is not None and (self.state is State.REQUEST or self.state in _WAITING):
            self.transport.write(sp.encodeReply(reply))
        self.stats.count(f"reply_{int(reply):#04x}" if reply is not None else "malformed")
        # Only the code: the reason text may name the target, which stays out of logs.
        self.log.debug("socks request refused with reply {reply}", reply=reply)
        self._close()

    # ---- bytes in

    def dataReceived(self, data):
        state = self.state
        if state in _APP_SENDS:
            self.stream.write(data)
        elif state in _HANDSHAKE:
            self._buffer += data
            try:
                self._handshake()
            except SocksError as e:
                if self.state is State.AUTH:
                    self.transport.write(sp.encodeAuthReply(False))
                self._fail(e.reply, str(e))
            else:
                # The app waits for this reply before its next message: it leaves now.
                pushNow(self.transport)
        elif state is State.CONNECTING:
            self._earlyData(data)
        elif state is State.RESOLVING:
            self._fail(Reply.GENERAL_FAILURE, "data after a RESOLVE request")
        # Anything else: the session is over or the app already sent EOF.

    def _handshake(self):
        while self.state in _HANDSHAKE and self._buffer:
            if self.state is State.GREETING:
                parsed = sp.parseGreeting(self._buffer)
                if parsed is None:
                    return
                greeting, used = parsed
                del self._buffer[:used]
                method = sp.chooseMethod(greeting)
                self.transport.write(sp.encodeMethod(method))
                if method == Method.NO_ACCEPTABLE:
                    self.stats.count("no_acceptable_method")
                    self._close()
                    return
                self._go(Event.USERNAME_PASSWORD if method == Method.USERNAME_PASSWORD else Event.NO_AUTH)
            elif self.state is State.AUTH:
                parsed = sp.parseAuth(self._buffer)
                if parsed is None:
                    return
                self.credentials, used = parsed
                del self._buffer[:used]
                self.transport.write(sp.encodeAuthReply(True))
                self._go(Event.AUTHENTICATED)
            else:
                parsed = sp.parseRequest(self._buffer)
                if parsed is None:
                    return
                self.request, used = parsed
                rest = bytes(self._buffer[used:])
                self._buffer = bytearray()
                self._startRequest()
                if rest:
                    self.dataReceived(rest)

    def _earlyData(self, data):
        early = self._early
        if early.size + len(data) > MAX_EARLY_DATA + MAX_EARLY_OVERRUN:
            early.clear()
            self.stats.count("early_data_overrun")
            self._fail(Reply.GENERAL_FAILURE, "early data past the limit while reading was paused")
            return
        early.write(data)
        if early.size >= MAX_EARLY_DATA and not self._pausedForEarly:
            self._pausedForEarly = True
            self.transport.pauseProducing()

    # ---- the request

    def isolationKey(self):
        """
        Streams share a circuit only if they come from the same client
        address with the same SOCKS credentials (Tor's IsolateClientAddr and
        IsolateSOCKSAuth).
        """
        peer = self.transport.getPeer()
        host = peer.host if isinstance(peer, (IPv4Address, IPv6Address)) else None
        creds = None if self.credentials is None else (self.credentials.username, self.credentials.password)
        return ("socks", host, creds)

    def _startRequest(self):
        req = self.request
        key = self.isolationKey()
        self._arm(REQUEST_TIMEOUT)
        if req.command == Command.CONNECT:
            self._go(Event.CONNECT)
            self.stats.count("connect")
            d = defer.maybeDeferred(self.opener.openStream, req.host, req.port, key, early=self._early)
            self._pending = d
            d.addCallbacks(self._connected, self._failed)
            return
        self._go(Event.RESOLVE)
        if req.command == Command.RESOLVE:
            self.stats.count("resolve")
            if req.addressType != sp.AddressType.DOMAIN:
                self._resolved([req.host])
                return
            d = defer.maybeDeferred(self.opener.resolve, req.host, key)
        else:
            self.stats.count("resolve_ptr")
            d = defer.maybeDeferred(self.opener.resolvePTR, req.host, key)
        self._pending = d
        d.addCallbacks(self._resolved, self._failed)

    def _connected(self, stream):
        self._pending = None
        if self.state not in _CONNECTING:
            stream.close(EndReason.DONE)
            return
        self._disarm()
        self.stream = stream
        state = self._go(Event.CONNECTED)
        self.stats.count("reply_0x00")
        # Like Tor, the bound address is not revealed.
        self.transport.write(sp.encodeReply(Reply.SUCCEEDED))
        self.transport.registerProducer(stream, True)
        stream.registerProducer(self.transport, True)
        # What went optimistically after BEGIN is on its way; the rest follows it.
        for chunk in self._early.unsent():
            stream.write(chunk)
        if self._pausedForEarly:
            self._pausedForEarly = False
            self.transport.resumeProducing()
        if state is State.APP_FINISHED:
            stream.halfClose()
        # Last: what the stream already holds may arrive at once, even its end.
        stream.setReceiver(self)
        # The app waits for the reply to send its request: it leaves now, not at the next poll.
        pushNow(self.transport)

    def _resolved(self, answers):
        self._pending = None
        if self.state is not State.RESOLVING:
            return
        if not answers:
            self._fail(Reply.HOST_UNREACHABLE, "empty answer")
            return
        self.stats.count("reply_0x00")
        self.transport.write(sp.encodeReply(Reply.SUCCEEDED, answers[0], 0))
        self._close()

    def _failed(self, failure):
        self._pending = None
        if self.state not in _WAITING:
            return
        reply = replyForFailure(failure)
        if reply == Reply.GENERAL_FAILURE and not failure.check(StreamRefused):
            self.log.failure("stream opener failed", failure)
        self._fail(reply, failure.getErrorMessage())

    # ---- IStreamReceiver

    def streamDataReceived(self, data):
        if self.state in _APP_RECEIVES:
            self.transport.write(data)
            self._push.soon()

    def streamReadEnded(self):
        if self.state not in _APP_RECEIVES:
            return
        if self._go(Event.STREAM_EOF) is State.CLOSED:
            # The app had finished too: both halves are done.
            self._finishStream()
            self._close()
        elif ITCPTransport.providedBy(self.transport):
            self.transport.loseWriteConnection()
        else:
            # A transport that cannot half-close: closing is the best EOF.
            self._finishStream()
            self._close()

    def streamEnded(self, reason):
        if self.state not in _STREAMING:
            return
        self.stream = None
        self.transport.unregisterProducer()
        self._close()

    # ---- IHalfCloseableProtocol

    def readConnectionLost(self):
        if (self.state, Event.APP_EOF) not in TRANSITIONS:
            # Nothing is streaming: Twisted does not close a half-closeable
            # connection by itself.
            self._close()
            return
        state = self._go(Event.APP_EOF)
        if state is State.APP_FINISHED:
            self.stream.halfClose()
        elif state is State.CLOSED:
            # The far end had finished: both halves are done.
            self._finishStream()
            self._close()
        # Connecting or resolving: answer anyway, half-close once open.

    def writeConnectionLost(self):
        # Our EOF to the app went out; the session ends with the app's EOF.
        pass

    def _finishStream(self):
        """
        Everything the app sent is written to the stream: let it end cleanly
        (its buffer, then END(DONE)).  It stops being the socket's producer
        first, or closing the socket would abort it.
        """
        stream, self.stream = self.stream, None
        self.transport.unregisterProducer()
        stream.halfClose()


@implementer(IStatusSource)
class SOCKSStats:
    """Counters of what the SOCKS server did (no targets, no payload)."""

    MAX_KEYS = 64

    def __init__(self):
        self.counters = {}
        self.active = 0

    def count(self, key):
        if key in self.counters or len(self.counters) < self.MAX_KEYS:
            self.counters[key] = self.counters.get(key, 0) + 1

    def status(self):
        return {"active_connections": self.active, **self.counters}


class SOCKSServerFactory(Factory):
    """Builds one protocol per app connection, at most C{maxConnections} at once."""

    def __init__(self, opener, reactor, maxConnections=MAX_CONNECTIONS):
        self.opener = opener
        self.reactor = reactor
        self.maxConnections = maxConnections
        self.stats = SOCKSStats()

    def buildProtocol(self, addr):
        if self.stats.active >= self.maxConnections:
            self.stats.count("refused_over_limit")
            return None
        proto = _CountedSOCKSProtocol(self.opener, self.reactor, self.stats)
        proto.factory = self
        self.stats.active += 1
        return proto

    def status(self):
        return self.stats.status()


class _CountedSOCKSProtocol(SOCKSServerProtocol):
    def connectionLost(self, reason=None):
        if self.factory is not None:
            self.stats.active -= 1
            self.factory = None
        super().connectionLost(reason)


def checkListenAddress(host, allowRemote):
    """
    @raise ConfigError: C{host} is not loopback and C{allowRemote} is false
        (anyone who reaches a SOCKS port uses the user's circuits).
    """
    ip = ipaddress.ip_address(host)
    if not ip.is_loopback and not allowRemote:
        raise ConfigError(
            f"socks-listen address {host!r} is not loopback; anyone who can reach it could use "
            "your circuits. Pass --socks-allow-remote to do this on purpose."
        )


def socksServiceFromSettings(reactor, settings, opener):
    """
    The client role's SOCKS server from its C{socks_listen} and
    C{socks_allow_remote} settings, over C{opener} (an L{IStreamOpener}).
    """
    return SOCKSService(reactor, opener, settings["socks_listen"], settings["socks_allow_remote"])


@implementer(IStatusSource)
class SOCKSService(StreamListenerService):
    """Listens for applications on C{listen} = C{(host, port)}."""

    def __init__(self, reactor, opener, listen=("127.0.0.1", 1080), allowRemote=False):
        host, port = listen
        checkListenAddress(host, allowRemote)
        self.reactor = reactor
        cls = endpoints.TCP6ServerEndpoint if ":" in host else endpoints.TCP4ServerEndpoint
        super().__init__(
            reactor, f"socks {formatHostPort(host, port)}", SOCKSServerFactory(opener, reactor),
            endpoint=cls(reactor, port, interface=host),
        )

    def status(self):
        out = {"listen": self.address() if self.port is not None else None}
        out.update(self.factory.status())
        return out
