"""The link plane of a role: the link manager, the listener relays accept links on, datagram links.

Each function builds one service from settings, adds it to the node under
a fixed name and returns it, so the role can hand it to the services that
use it.
"""

from meshvpn.errors import LinkError
from meshvpn.link.manager import LinkManager
from meshvpn.link.protocol import LinkSettings
from meshvpn.roles.common import addService


def addLinkManager(node, authenticate, transports=None):
    """
    The node's L{LinkManager} (a child service, so links close on stop).

    @param authenticate: prove our identity on outgoing links (relays);
        clients stay anonymous to their guards, as Tor clients do.
    @param transports: C{{name: IPluggableTransport}}; default: the plugins found.
    """
    manager = LinkManager(node.reactor, node.identity, LinkSettings(authenticate=authenticate), transports=transports)
    return addService(node, "links", manager)


def listenForLinks(node, links, transportName, listen, transports=None, name="stream"):
    """
    Accept links for C{links} on the transport called C{transportName}
    (the node's C{"stream"} listener; a dual-stack relay's second one is C{"stream6"}).

    @param transports: where to look the name up (default: the plugins found).
    @raise SystemExit: no such transport is installed (one clear line).
    @return: the transport.
    """
    from meshvpn.link.transports import findTransport

    try:
        if transports is None:
            transport = findTransport(transportName)
        elif transportName in transports:
            transport = transports[transportName]
        else:
            raise LinkError(f"no link transport {transportName!r} installed or configured "
                            f"(have: {', '.join(sorted(transports))}); a managed one needs --transport")
        endpoint = transport.serverEndpoint(node.reactor, {"listen": listen})
    except LinkError as e:
        raise SystemExit(f"meshvpn-{node.role}: {e}") from None
    if name == "stream":
        node.listenStream(listen, links.serverFactory(transportName), endpoint=endpoint)
    else:
        from meshvpn.ports import StreamListenerService

        node.addListener(name, StreamListenerService(node.reactor, listen, links.serverFactory(transportName), endpoint))
    return transport


def addDatagramLinks(node):
    """@return: the node's L{IDatagramLinkEndpoint}, run on its socket by a C{"datagram-links"} service."""
    from meshvpn.link.service import DatagramLinkService

    return addService(node, "datagram-links", DatagramLinkService(node.reactor, node.identity, node.udp)).endpoint
