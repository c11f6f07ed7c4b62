"""Managed transports as L{IPluggableTransport}s: what the link manager dials and relays listen on.

A client transport (L{ManagedClientTransport}) shares one supervised
process among all its links: each C{clientEndpoint} waits for the
process's client method and opens a SOCKS5 connection through it
(L{meshvpn.link.pt.socks}).  Its address strings are C{"HOST:PORT k=v ..."},
the tail of a bridge line.

A server transport (L{ManagedServerTransport}) is started by the listener:
C{serverEndpoint(...).listen(factory)} first listens for links on a
loopback port of our own (the Extended ORPort, where the transport
authenticates, names the client's address and hands over the unwrapped
TLS: L{meshvpn.link.pt.extorport}), then launches the program bound to the C{listen}
address and waits for its C{SMETHOD}.  The listening port it returns
stands for the transport's public port: C{getHost()} is where censored
clients connect, C{stopListening()} stops the program (and its
supervisor's restarts) and closes the ORPort, so the transport stops with
the node.  L{ManagedServerTransport.describeAddress} gives
C{"HOST:PORT cert=... iat-mode=0"}, from the C{SMETHOD}'s C{ARGS:} or,
for a transport that does not print them, its C{<name>_bridgeline.txt} in
the state directory (obfs4proxy writes both).
"""

import os

from twisted.internet import defer, endpoints
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from zope.interface import implementer

from meshvpn.errors import LinkError
from meshvpn.hostport import HostPortError, parseIPPort
from meshvpn.interfaces import IPluggableTransport
from meshvpn.link.pt.args import PTAddress, parseArgWords, parsePTAddress
from meshvpn.link.pt.extorport import ExtORFactory, writeCookie
from meshvpn.link.pt.launch import ptEnvironment
from meshvpn.link.pt.socks import PTClientEndpoint
from meshvpn.link.pt.supervisor import TransportSupervisor

COOKIE_FILE = "extended_orport_auth_cookie"


@implementer(IPluggableTransport)
class ManagedClientTransport:
    """One client method of a supervised program (several names may share a program)."""

    kind = "stream"

    def __init__(self, name, supervisor):
        self.name = name
        self.supervisor = supervisor

    def clientEndpoint(self, reactor, address, options):
        try:
            target = parsePTAddress(address)
        except ValueError as e:
            raise LinkError(f"bad {self.name} address {str(address)[:64]!r}: expected {e}") from None
        return PTClientEndpoint(reactor, self.supervisor, self.name, target)

    def serverEndpoint(self, reactor, options):
        raise LinkError(f"transport {self.name!r} is configured for the client side only")

    def describeAddress(self, listeningPort):
        raise LinkError(f"transport {self.name!r} is configured for the client side only")


def clientSupervisor(reactor, line, stateDir, **kwargs):
    """A supervisor running C{line}'s program for its client methods."""
    return TransportSupervisor(reactor, line, stateDir, lambda: ptEnvironment(line.names, stateDir), server=False,
                               **kwargs)


def parseListen(description):
    """
    The relay's C{listen} setting as the address the transport binds:
    C{"tcp:PORT[:interface=IP]"} or C{"HOST:PORT"}.  @return: C{(host, port)}.
    """
    text = str(description)
    if text.startswith(("tcp:", "tcp6:")):
        kind, _, rest = text.partition(":")
        parts = rest.split(":")
        host = "::" if kind == "tcp6" else "0.0.0.0"
        for part in parts[1:]:
            key, _, value = part.partition("=")
            if key == "interface":
                host = value.replace("\\", "")
            elif key != "backlog":
                raise LinkError(f"a managed transport cannot listen with {key!r} ({text[:80]!r})")
        try:
            return parseIPPort(f"[{host}]:{parts[0]}" if ":" in host else f"{host}:{parts[0]}")
        except HostPortError as e:
            raise LinkError(f"bad listen address {text[:80]!r}: {e}") from None
    try:
        return parseIPPort(text)
    except HostPortError:
        raise LinkError(f"a managed transport listens on tcp:PORT[:interface=IP] or IP:PORT, not {text[:80]!r}") from None


@implementer(IPluggableTransport)
class ManagedServerTransport:
    """The server side of transport C{name}, run by C{line}'s program with its state in C{stateDir}."""

    kind = "stream"

    def __init__(self, name, line, stateDir, supervisorOptions=None):
        self.name = name
        self.line = line
        self.stateDir = stateDir
        self.supervisorOptions = supervisorOptions or {}

    def clientEndpoint(self, reactor, address, options):
        raise LinkError(f"transport {self.name!r} is configured for the server side only")

    def serverEndpoint(self, reactor, options):
        host, port = parseListen(options.get("listen", "tcp:0"))
        return PTServerEndpoint(reactor, self, host, port)

    def describeAddress(self, listeningPort):
        host = listeningPort.getHost()
        args = listeningPort.method.args or self.bridgeLineArgs()
        return str(PTAddress(host.host, host.port, args))

    def bridgeLineArgs(self):
        """The C{k=v} words of the C{Bridge} line the program left in its state directory (C{()} if none)."""
        path = os.path.join(self.stateDir, f"{self.name}_bridgeline.txt")
        try:
            with open(path) as f:
                for line in f:
                    words = line.split()
                    # obfs4proxy's placeholders ("<IP ADDRESS>:<PORT>") hold spaces: keep the k=v words
                    if words[:2] == ["Bridge", self.name]:
                        return parseArgWords([w for w in words[2:] if "=" in w])
        except (OSError, ValueError):
            pass
        return ()


@implementer(IStreamServerEndpoint)
class PTServerEndpoint:
    def __init__(self, reactor, transport, host, port):
        self.reactor = reactor
        self.transport = transport
        self.host = host
        self.port = port

    def listen(self, factory):
        return defer.Deferred.fromCoroutine(self._listen(factory))

    async def _listen(self, factory):
        os.makedirs(self.transport.stateDir, mode=0o700, exist_ok=True)
        cookie = os.path.join(self.transport.stateDir, COOKIE_FILE)
        # The transport reaches us on the Extended ORPort, telling us each client's address (per-address limits).
        extFactory = ExtORFactory(self.reactor, factory, writeCookie(cookie))
        orPort = await endpoints.TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1").listen(extFactory)
        orPort.cookiePath = cookie
        listening = PTListeningPort(self.reactor, self.transport, self.host, self.port, orPort)
        try:
            await listening.start()
        except BaseException:
            await listening.stopListening()
            raise
        return listening


@implementer(IListeningPort)
class PTListeningPort:
    """The transport's public port, as one L{IListeningPort}; owns the program's supervisor."""

    def __init__(self, reactor, transport, host, port, orPort):
        self.reactor = reactor
        self.transport = transport
        self.bindHost = host
        self.bindPort = port
        self.orPort = orPort
        self.method = None
        line = transport.line
        self.supervisor = TransportSupervisor(reactor, line, transport.stateDir, self._env, server=True,
                                              onReady=self._ready, **transport.supervisorOptions)

    def _env(self):
        orHost = self.orPort.getHost()
        return ptEnvironment(self.transport.line.names, self.transport.stateDir,
                             server=(self.bindHost, self.bindPort, orHost.host, orHost.port),
                             extended=(orHost.host, orHost.port, self.orPort.cookiePath))

    def _ready(self, methods):
        method = methods.get(self.transport.name)
        if method is not None:
            self.method = method
            # Restarts bind the same port, so the bridge line given out stays true.
            self.bindPort = method.port

    async def start(self):
        self.supervisor.startService()
        methods = await self.supervisor.whenReady()
        if self.transport.name not in methods:
            raise LinkError(f"the transport program did not start {self.transport.name!r} (see its SMETHOD-ERROR in the log)")

    def startListening(self):
        pass

    def stopListening(self):
        waits = [defer.maybeDeferred(self.supervisor.stopService), defer.maybeDeferred(self.orPort.stopListening)]
        return defer.DeferredList(waits).addCallback(lambda _: None)

    def getHost(self):
        if self.method is None:
            raise LinkError("the managed transport is not listening yet")
        cls = IPv6Address if ":" in self.method.host else IPv4Address
        return cls("TCP", self.method.host, self.method.port)
