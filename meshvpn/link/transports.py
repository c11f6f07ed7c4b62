"""The built-in stream transport and pluggable-transport discovery.

A transport only carries bytes; the link layer always runs TLS and the
identity handshake on top (Tor's model for its pluggable transports), so a
third-party transport cannot weaken authentication.  This module stays light:
the plugin module in twisted/plugins imports it whenever any plugin is
listed.
"""

import ipaddress

from zope.interface import implementer

from meshvpn.errors import LinkError
from meshvpn.interfaces import IPluggableTransport

DEFAULT_TRANSPORT = "tls"
# The datagram link over the node's UDP socket (meshvpn/link/datagram.py).
DATAGRAM_TRANSPORT = "udp"


def splitHostPort(address):
    """C{"1.2.3.4:9001"} or C{"[::1]:9001"} -> C{(host, port)}; L{LinkError} otherwise."""
    try:
        if address.startswith("["):
            host, sep, port = address[1:].partition("]:")
        else:
            host, sep, port = address.rpartition(":")
        host = str(ipaddress.ip_address(host))
        port = int(port)
        if not sep or not 0 < port < 65536:
            raise ValueError
    except (ValueError, AttributeError):
        raise LinkError(f"bad link address {str(address)[:64]!r}; expected HOST:PORT") from None
    return host, port


@implementer(IPluggableTransport)
class TCPTransport:
    """
    Plain TCP; the link layer adds TLS.  Descriptor address: C{HOST:PORT}.
    Server option C{listen}: a Twisted server endpoint string.
    """

    name = DEFAULT_TRANSPORT
    kind = "stream"

    def clientEndpoint(self, reactor, address, options):
        from twisted.internet import endpoints

        host, port = splitHostPort(address)
        timeout = options.get("connect_timeout", 30)
        if ":" in host:
            return endpoints.TCP6ClientEndpoint(reactor, host, port, timeout=timeout)
        return endpoints.TCP4ClientEndpoint(reactor, host, port, timeout=timeout)

    def serverEndpoint(self, reactor, options):
        from twisted.internet import endpoints

        return endpoints.serverFromString(reactor, options.get("listen", "tcp:9001"))

    def describeAddress(self, listeningPort):
        host = listeningPort.getHost()
        return f"[{host.host}]:{host.port}" if ":" in host.host else f"{host.host}:{host.port}"


@implementer(IPluggableTransport)
class DatagramTransport:
    """
    The datagram link (meshvpn/link/datagram.py) over the node's one UDP
    socket.  It carries mesh packets, where loss is normal, not circuits,
    which need an ordered, reliable link: the stream endpoints refuse.  A
    role that needs datagram links runs a
    L{meshvpn.link.service.DatagramLinkService} on the node's socket.
    Descriptor address: the node's C{udp} address.
    """

    name = DATAGRAM_TRANSPORT
    kind = "datagram"

    def _notForCircuits(self):
        return LinkError(f"the {self.name!r} transport carries mesh packets, not circuits; use a stream transport")

    def clientEndpoint(self, reactor, address, options):
        raise self._notForCircuits()

    def serverEndpoint(self, reactor, options):
        raise self._notForCircuits()

    def describeAddress(self, listeningPort):
        host = listeningPort.getHost()
        return f"[{host.host}]:{host.port}" if ":" in host.host else f"{host.host}:{host.port}"


def availableTransports():
    """
    @return: C{{name: plugin}} of every L{IPluggableTransport} on the
        plugin path (first found wins a name clash).
    """
    from twisted.plugin import getPlugins

    found = {}
    for plugin in getPlugins(IPluggableTransport):
        found.setdefault(plugin.name, plugin)
    return found


def findTransport(name):
    """
    @return: the plugin called C{name}.
    @raise LinkError: none is installed; the message lists those that are.
    """
    found = availableTransports()
    try:
        return found[name]
    except KeyError:
        raise LinkError(f"no link transport {name!r} installed (have: {', '.join(sorted(found)) or 'none'})") from None
