"""The client's SOCKS5 server: how applications reach the network without root.

Each connection walks an explicit state machine (L{State}): greeting,
optional username/password, one request, then either a stream (CONNECT) or
one answer (Tor's RESOLVE / RESOLVE_PTR).  Names are passed to the stream
opener as given and resolved at the exit, never here.  The username and
password are not checked: like Tor's IsolateSOCKSAuth they only choose the
isolation key, so different credentials never share a circuit.

Every handshake message is size-bounded by the parser; data an app sends
before the stream is open is buffered up to L{MAX_EARLY_DATA} and then the
app's socket is paused.  Once streaming, the TCP transport and the stream
are each other's producer and consumer, so neither side buffers without
bound.  Anything malformed gets the SOCKS reply that names the problem and
closes that one connection.
"""

import enum
import ipaddress

from twisted.internet import defer, endpoints
from twisted.internet.interfaces import IHalfCloseableProtocol
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

MAX_EARLY_DATA = 64 * 1024
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
    setNoDelay = getattr(transport, "setTcpNoDelay", None)
    if setNoDelay is not None:
        try:
            setNoDelay(True)
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
    RESOLVING = "resolving"
    STREAMING = "streaming"
    CLOSED = "closed"


_HANDSHAKE_STATES = (State.GREETING, State.AUTH, State.REQUEST)


@implementer(IStreamReceiver, IHalfCloseableProtocol)
class SOCKSServerProtocol(Protocol):
    """One application connection."""

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
        self._early = []
        self._earlySize = 0
        self._pausedForEarly = False
        self._pending = None
        self._timer = None
        self._readDone = False
        self._writeDone = False

    # ---- connection lifetime

    def connectionMade(self):
        _noDelay(self.transport)
        self._arm(HANDSHAKE_TIMEOUT)

    def connectionLost(self, reason=None):
        state, self.state = self.state, State.CLOSED
        self._disarm()
        self._buffer = bytearray()
        self._early = []
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.cancel()
        if state == State.STREAMING and self.stream is not None:
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
        if self.state in _HANDSHAKE_STATES:
            self.stats.count("handshake_timeout")
            self._close()
        elif self.state in (State.CONNECTING, State.RESOLVING):
            # Cancelling makes the opener's Deferred fail; _failed replies 0x06.
            self._pending.cancel()

    def _close(self):
        self.state = State.CLOSED
        self._disarm()
        self.transport.loseConnection()

    def _fail(self, reply, why):
        """Send the error reply that fits the state, then close."""
        if reply is not None and self.state in (State.REQUEST, State.CONNECTING, State.RESOLVING):
            self.transport.write(sp.encodeReply(reply))
        self.stats.count(f"reply_{int(reply):#04x}" if reply is not None else "malformed")
        # Only the code: the reason text may name the target, which stays out of logs.
        self.log.debug("socks request refused with reply {reply}", reply=reply)
        self._close()

    # ---- bytes in

    def dataReceived(self, data):
        if self.state == State.STREAMING:
            self.stream.write(data)
            return
        if self.state == State.CLOSED:
            return
        if self.state in (State.CONNECTING, State.RESOLVING):
            self._earlyData(data)
            return
        self._buffer += data
        try:
            self._handshake()
        except SocksError as e:
            if self.state == State.AUTH:
                self.transport.write(sp.encodeAuthReply(False))
            self._fail(e.reply, str(e))

    def _handshake(self):
        while self.state in _HANDSHAKE_STATES and self._buffer:
            if self.state == State.GREETING:
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
                self.state = State.AUTH if method == Method.USERNAME_PASSWORD else State.REQUEST
            elif self.state == State.AUTH:
                parsed = sp.parseAuth(self._buffer)
                if parsed is None:
                    return
                self.credentials, used = parsed
                del self._buffer[:used]
                self.transport.write(sp.encodeAuthReply(True))
                self.state = State.REQUEST
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
        if self.state == State.RESOLVING:
            self._fail(Reply.GENERAL_FAILURE, "data after a RESOLVE request")
            return
        self._early.append(data)
        self._earlySize += len(data)
        if self._earlySize >= MAX_EARLY_DATA and not self._pausedForEarly:
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
        host = getattr(peer, "host", None)
        creds = None if self.credentials is None else (self.credentials.username, self.credentials.password)
        return ("socks", host, creds)

    def _startRequest(self):
        req = self.request
        key = self.isolationKey()
        self._arm(REQUEST_TIMEOUT)
        if req.command == Command.CONNECT:
            self.state = State.CONNECTING
            self.stats.count("connect")
            d = defer.maybeDeferred(self.opener.openStream, req.host, req.port, key)
            self._pending = d
            d.addCallbacks(self._connected, self._failed)
        elif req.command == Command.RESOLVE:
            self.state = State.RESOLVING
            self.stats.count("resolve")
            if req.addressType != sp.AddressType.DOMAIN:
                self._resolved([req.host])
                return
            d = defer.maybeDeferred(self.opener.resolve, req.host, key)
            self._pending = d
            d.addCallbacks(self._resolved, self._failed)
        else:
            self.state = State.RESOLVING
            self.stats.count("resolve_ptr")
            d = defer.maybeDeferred(self.opener.resolvePTR, req.host, key)
            self._pending = d
            d.addCallbacks(self._resolved, self._failed)

    def _connected(self, stream):
        self._pending = None
        if self.state != State.CONNECTING:
            stream.close(EndReason.DONE)
            return
        self._disarm()
        self.stream = stream
        self.state = State.STREAMING
        self.stats.count("reply_0x00")
        # Like Tor, the bound address is not revealed.
        self.transport.write(sp.encodeReply(Reply.SUCCEEDED))
        stream.setReceiver(self)
        self.transport.registerProducer(stream, True)
        stream.registerProducer(self.transport, True)
        early, self._early, self._earlySize = self._early, [], 0
        for chunk in early:
            stream.write(chunk)
        if self._pausedForEarly:
            self._pausedForEarly = False
            self.transport.resumeProducing()
        if self._readDone:
            stream.halfClose()

    def _resolved(self, answers):
        self._pending = None
        if self.state != State.RESOLVING:
            return
        if not answers:
            self._fail(Reply.HOST_UNREACHABLE, "empty answer")
            return
        self.stats.count("reply_0x00")
        self.transport.write(sp.encodeReply(Reply.SUCCEEDED, answers[0], 0))
        self._close()

    def _failed(self, failure):
        self._pending = None
        if self.state not in (State.CONNECTING, State.RESOLVING):
            return
        reply = replyForFailure(failure)
        if reply == Reply.GENERAL_FAILURE and not failure.check(StreamRefused):
            self.log.failure("stream opener failed", failure)
        self._fail(reply, failure.getErrorMessage())

    # ---- IStreamReceiver

    def streamDataReceived(self, data):
        if self.state == State.STREAMING:
            self.transport.write(data)

    def streamReadEnded(self):
        if self.state != State.STREAMING:
            return
        loseWrite = getattr(self.transport, "loseWriteConnection", None)
        if loseWrite is None:
            # A transport that cannot half-close: closing is the best EOF.
            self._close()
        else:
            loseWrite()

    def streamEnded(self, reason):
        if self.state != State.STREAMING:
            return
        self.stream = None
        self.transport.unregisterProducer()
        self._close()

    # ---- IHalfCloseableProtocol

    def readConnectionLost(self):
        self._readDone = True
        if self.state in (State.CONNECTING, State.RESOLVING):
            # The app sent its request and shut its write side (a script
            # piping into a socket): answer anyway, half-close once open.
            return
        if self.state == State.STREAMING and not self._writeDone:
            self.stream.halfClose()
        else:
            # Both halves are done (or nothing was streaming): Twisted does
            # not close a half-closeable connection by itself.
            self._close()

    def writeConnectionLost(self):
        self._writeDone = True
        if self._readDone:
            self._close()


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
