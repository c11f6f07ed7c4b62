"""Listening-port services: a socket held open for exactly as long as a service runs.

The node's one UDP socket, a relay's link listener and the client's SOCKS
listener share this shape: bound on start (before privileges drop, for low
ports), closed on stop, and able to say the address they really bound.
"""

import socket
import sys

from twisted.application import service
from twisted.internet import defer, endpoints

from meshvpn.hostport import formatHostPort


class _BoundPortService(service.Service):
    """A service that holds one listening port (C{self.port}) while it runs."""

    port = None

    def stopService(self):
        super().stopService()
        port, self.port = self.port, None
        if port is not None:
            return defer.maybeDeferred(port.stopListening)

    def address(self):
        host = self.port.getHost()
        return formatHostPort(host.host, host.port)


# A directory sampling asks ~350 DHT questions at once and the answers of a
# nearby network arrive within milliseconds, faster than one reactor turn
# reads them: the default socket buffer (~200 KB of kernel accounting, a few
# hundred datagrams) overflowed, and each lost answer cost a 2 s lookup timeout.
UDP_RECEIVE_BUFFER = 4 << 20
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33 if sys.platform.startswith("linux") else None)


def growReceiveBuffer(sock, size=UDP_RECEIVE_BUFFER):
    """Ask for a C{size}-byte receive buffer (past C{net.core.rmem_max} when privileged)."""
    if sock is None:
        return
    for option in (_SO_RCVBUFFORCE, socket.SO_RCVBUF):
        if option is None:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, size)
            return
        except OSError:
            continue


def bindIPv6Only(host, port):
    """
    A non-blocking UDP socket bound to C{host} (an IPv6 literal) that never
    carries IPv4: with the kernel's default (C{bindv6only=0}) a socket on
    C{::} would also take IPv4 datagrams as C{::ffff:a.b.c.d} and collide
    with the node's IPv4 socket on the same port.
    """
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setblocking(False)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


class UDPPortService(_BoundPortService):
    """
    Binds one of the node's UDP sockets to C{protocol} (the multiplexer, or
    its second-family socket) for the service's lifetime.
    """

    def __init__(self, reactor, protocol, host, port):
        self._reactor = reactor
        self.mux = protocol
        self._host, self._port = host, port

    def privilegedStartService(self):
        # Bound before privileges are dropped, so low ports work under twistd -u.
        if ":" in self._host:
            sock = bindIPv6Only(self._host, self._port)
            try:
                self.port = self._reactor.adoptDatagramPort(sock.fileno(), socket.AF_INET6, self.mux)
            finally:
                sock.close()  # the reactor holds its own duplicate
        else:
            self.port = self._reactor.listenUDP(self._port, self.mux, interface=self._host)
        growReceiveBuffer(getattr(self.port, "socket", None))
        super().privilegedStartService()

    def startService(self):
        if self.port is None:
            self.privilegedStartService()
        super().startService()


class StreamListenerService(_BoundPortService):
    """Listens on a stream server endpoint; C{whenListening} fires with the port."""

    def __init__(self, reactor, description, factory, endpoint=None):
        self._endpoint = endpoint or endpoints.serverFromString(reactor, description)
        self.description = description
        self.factory = factory
        self.whenListening = None

    def startService(self):
        super().startService()

        def listening(port):
            self.port = port
            return port

        self.whenListening = self._endpoint.listen(self.factory).addCallback(listening)
