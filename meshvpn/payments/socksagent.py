"""An HTTP agent that reaches its servers through a SOCKS5 proxy (RFC 1928, no authentication).

Why: whoever the wallet talks to sees where it talks from.  Buying tokens
through a MeshVPN circuit (the client's SOCKS port) or through Tor keeps the
buyer's network address from the issuer, which otherwise is the one thing
tying a purchase to a person besides the payment itself.

The host name is handed to the proxy (address type DOMAINNAME), so no DNS
lookup happens here either.  Replies are parsed strictly and bounded; any
refusal fails the connection attempt with L{SOCKSError}.
"""

import ipaddress
import struct

from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.web.client import Agent
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from meshvpn.errors import MeshVPNError

REPLIES = {
    1: "general failure", 2: "not allowed by ruleset", 3: "network unreachable", 4: "host unreachable",
    5: "connection refused", 6: "TTL expired", 7: "command not supported", 8: "address type not supported",
}


class SOCKSError(MeshVPNError):
    """The SOCKS5 proxy refused or answered something that is not SOCKS5."""


class _Handshake(protocol.Protocol):
    def __init__(self, host, port, factory, done):
        self.host, self.port = host, port
        self.wrapped = factory  # not .factory: Factory.buildProtocol sets that one
        self.done = done
        self.buffer = b""
        self.state = "greeting"
        self.inner = None

    def connectionMade(self):
        self.transport.write(b"\x05\x01\x00")

    def _request(self):
        try:
            ip = ipaddress.ip_address(self.host)
            address = (b"\x01" if ip.version == 4 else b"\x04") + ip.packed
        except ValueError:
            name = self.host.encode("idna")
            if not 0 < len(name) < 256:
                raise SOCKSError("host name too long for SOCKS5") from None
            address = b"\x03" + bytes([len(name)]) + name
        self.transport.write(b"\x05\x01\x00" + address + struct.pack("!H", self.port))

    def _fail(self, why):
        self.state = "failed"
        self.transport.abortConnection()
        if not self.done.called:
            self.done.errback(SOCKSError(why))

    def dataReceived(self, data):
        if self.inner is not None:
            return self.inner.dataReceived(data)
        self.buffer += data
        if len(self.buffer) > 512:
            return self._fail("SOCKS5 reply too long")
        if self.state == "greeting":
            if len(self.buffer) < 2:
                return
            if self.buffer[:2] != b"\x05\x00":
                return self._fail("the proxy wants authentication or is not SOCKS5")
            self.buffer = self.buffer[2:]
            self.state = "reply"
            try:
                self._request()
            except SOCKSError as e:
                return self._fail(str(e))
        if self.state == "reply":
            if len(self.buffer) < 5:
                return
            version, code, _, kind = self.buffer[:4]
            if version != 5:
                return self._fail("not a SOCKS5 reply")
            if code != 0:
                return self._fail(f"proxy: {REPLIES.get(code, f'error {code}')}")
            size = {1: 4, 4: 16, 3: 1 + self.buffer[4]}.get(kind)
            if size is None:
                return self._fail("SOCKS5 reply with an unknown address type")
            end = 4 + size + 2
            if len(self.buffer) < end:
                return
            rest, self.buffer = self.buffer[end:], b""
            self.state = "open"
            self.inner = self.wrapped.buildProtocol(None)
            self.inner.makeConnection(self.transport)
            self.done.callback(self.inner)
            if rest:
                self.inner.dataReceived(rest)

    def connectionLost(self, reason):
        if self.inner is not None:
            self.inner.connectionLost(reason)
        elif not self.done.called:
            self.done.errback(SOCKSError(f"the proxy closed the connection ({reason.getErrorMessage()})"))


@implementer(IStreamClientEndpoint)
class SOCKS5ClientEndpoint:
    """Connects to C{host}:C{port} through the proxy reached by C{proxy} (a client endpoint)."""

    def __init__(self, proxy, host, port):
        self.proxy = proxy
        self.host, self.port = host, port

    def connect(self, factory):
        done = defer.Deferred()
        handshake = _Handshake(self.host, self.port, factory, done)
        d = self.proxy.connect(protocol.Factory.forProtocol(lambda: handshake))
        d.addErrback(lambda f: done.called or done.errback(f))
        return done


@implementer(IAgentEndpointFactory)
class _ThroughProxy:
    def __init__(self, reactor, proxyHost, proxyPort):
        self.reactor = reactor
        self.proxyHost, self.proxyPort = proxyHost, proxyPort

    def endpointForURI(self, uri):
        if uri.scheme != b"http":
            raise SOCKSError("only http:// URLs go through the SOCKS proxy here")
        cls = TCP6ClientEndpoint if ":" in self.proxyHost else TCP4ClientEndpoint
        return SOCKS5ClientEndpoint(cls(self.reactor, self.proxyHost, self.proxyPort), uri.host.decode("ascii"), uri.port)


def socksAgent(reactor, proxyHost, proxyPort):
    """An C{IAgent} whose every connection goes through the SOCKS5 proxy at C{proxyHost}:C{proxyPort}."""
    return Agent.usingEndpointFactory(reactor, _ThroughProxy(reactor, proxyHost, proxyPort))
