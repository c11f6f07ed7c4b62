"""The SOCKS5 client that opens a connection through a managed transport's client method.

The transport listens on loopback (its C{CMETHOD}); we connect there, offer
RFC 1929 username/password when the bridge has per-connection arguments
(packed as pt-spec says, L{meshvpn.link.pt.args.packSocksArgs}), ask it to
CONNECT to the bridge, and once it answers hand the same TCP connection to
the link's protocol factory: from then on the bytes are the link's (TLS),
and the transport obfuscates them on the wire.

States (L{SocksState}): GREETING, AUTH, CONNECT, OPEN, FAILED.  Replies are
read with fixed bounds (at most 4 + 1 + 255 + 2 bytes), so a broken
transport cannot make us buffer more; every refusal is a L{LinkError}
naming the transport and what it said.
"""

import enum
import ipaddress
import struct

from twisted.internet import defer, endpoints
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from meshvpn.errors import LinkError
from meshvpn.link.pt.args import packSocksArgs

REPLIES = {
    1: "general SOCKS server failure",
    2: "connection not allowed by ruleset",
    3: "network unreachable",
    4: "host unreachable",
    5: "connection refused",
    6: "TTL expired",
    7: "command not supported",
    8: "address type not supported",
}


class SocksState(enum.Enum):
    GREETING = "greeting"
    AUTH = "auth"
    CONNECT = "connect"
    OPEN = "open"
    FAILED = "failed"


class SocksClient(Protocol):
    """Speaks SOCKS5 to the transport, then becomes a pipe for C{factory}'s protocol."""

    def __init__(self, label, host, port, args, factory, done):
        self.label = label
        self.target = (host, port)
        self.user, self.password = packSocksArgs(args)
        self.factory = factory
        self.done = done
        self.state = SocksState.GREETING
        self.wrapped = None
        self._buf = b""

    def connectionMade(self):
        method = b"\x02" if self.user is not None else b"\x00"
        self.transport.write(b"\x05\x01" + method)

    def dataReceived(self, data):
        if self.state is SocksState.OPEN:
            self.wrapped.dataReceived(data)
            return
        if self.state is SocksState.FAILED:
            return
        self._buf += data
        try:
            self._advance()
        except LinkError as e:
            self._fail(e)

    def _advance(self):
        while self.state is not SocksState.OPEN and self.state is not SocksState.FAILED:
            if self.state is SocksState.GREETING:
                if len(self._buf) < 2:
                    return
                ver, method = self._take(2)
                wanted = 2 if self.user is not None else 0
                if ver != 5:
                    raise LinkError(f"{self.label}: its SOCKS port answered a non-SOCKS5 greeting")
                if method != wanted:
                    what = "username/password (the bridge arguments)" if wanted == 2 else "no authentication"
                    raise LinkError(f"{self.label}: its SOCKS port refused {what}")
                if self.user is not None:
                    self.transport.write(bytes([1, len(self.user)]) + self.user + bytes([len(self.password)]) + self.password)
                    self.state = SocksState.AUTH
                else:
                    self._sendConnect()
            elif self.state is SocksState.AUTH:
                if len(self._buf) < 2:
                    return
                _, status = self._take(2)
                if status != 0:
                    raise LinkError(f"{self.label}: rejected the bridge's arguments (bad cert=... or missing ones?)")
                self._sendConnect()
            elif self.state is SocksState.CONNECT:
                if len(self._buf) < 2:
                    return
                ver, rep = self._buf[:2]
                if ver != 5:
                    raise LinkError(f"{self.label}: a malformed SOCKS reply")
                if rep != 0:
                    host, port = self.target
                    raise LinkError(f"{self.label}: could not reach {host}:{port}: {REPLIES.get(rep, f'SOCKS error {rep}')}")
                if len(self._buf) < 5:
                    return
                atyp, first = self._buf[3:5]
                size = {1: 4, 4: 16, 3: 1 + first}.get(atyp)
                if size is None:
                    raise LinkError(f"{self.label}: a SOCKS reply with address type {atyp}")
                if len(self._buf) < 4 + size + 2:
                    return
                self._take(4 + size + 2)
                self._open()

    def _take(self, n):
        head, self._buf = self._buf[:n], self._buf[n:]
        return head

    def _sendConnect(self):
        host, port = self.target
        ip = ipaddress.ip_address(host)
        atyp = 1 if ip.version == 4 else 4
        self.transport.write(b"\x05\x01\x00" + bytes([atyp]) + ip.packed + struct.pack("!H", port))
        self.state = SocksState.CONNECT

    def _open(self):
        self.state = SocksState.OPEN
        wrapped = self.factory.buildProtocol(self.transport.getPeer())
        if wrapped is None:
            self._fail(LinkError(f"{self.label}: the link factory refused the connection"))
            return
        self.wrapped = wrapped
        rest, self._buf = self._buf, b""
        wrapped.makeConnection(self.transport)
        self.done.callback(wrapped)
        if rest:
            wrapped.dataReceived(rest)

    def _fail(self, e):
        self.state = SocksState.FAILED
        self._buf = b""
        if not self.done.called:
            self.done.errback(e)
        self.transport.loseConnection()

    def connectionLost(self, reason):
        if self.wrapped is not None:
            self.wrapped.connectionLost(reason)
            return
        if not self.done.called:
            self.done.errback(LinkError(f"{self.label}: its SOCKS port closed the connection during the SOCKS handshake"))


class _SocksFactory(Factory):
    noisy = False

    def __init__(self, label, host, port, args, factory, done):
        self.label, self.host, self.port, self.args, self.factory, self.done = label, host, port, args, factory, done

    def buildProtocol(self, addr):
        return SocksClient(self.label, self.host, self.port, self.args, self.factory, self.done)


@implementer(IStreamClientEndpoint)
class PTClientEndpoint:
    """
    Connects to C{address} (a L{meshvpn.link.pt.args.PTAddress}) through
    the client method C{name} of C{supervisor}'s transport, waiting for the
    transport to be up first.
    """

    def __init__(self, reactor, supervisor, name, address):
        self.reactor = reactor
        self.supervisor = supervisor
        self.name = name
        self.address = address

    def connect(self, factory):
        return defer.Deferred.fromCoroutine(self._connect(factory))

    async def _connect(self, factory):
        label = f"transport {self.name}"
        methods = await self.supervisor.whenReady()
        method = methods.get(self.name)
        if method is None:
            raise LinkError(f"{label}: its program did not start it (see the log for its CMETHOD-ERROR)")
        try:
            packSocksArgs(self.address.args)
        except ValueError as e:
            raise LinkError(f"{label}: {e}") from None
        done = defer.Deferred()
        inner = endpoints.TCP4ClientEndpoint(self.reactor, method.host, method.port) if ":" not in method.host \
            else endpoints.TCP6ClientEndpoint(self.reactor, method.host, method.port)
        proto = await inner.connect(_SocksFactory(label, self.address.host, self.address.port, self.address.args,
                                                  factory, done))
        try:
            return await done
        except BaseException:
            proto.transport.abortConnection()
            raise
