"""The link plane of a role: the link manager, the listener relays accept links on, datagram links.

Each function builds one service from settings, adds it to the node under
a fixed name and returns it, so the role can hand it to the services that
use it.
"""

from meshvpn.errors import LinkError
from meshvpn.link.manager import LinkManager
from meshvpn.link.protocol import LinkSettings
from meshvpn.roles.common import addService


def addLinkManager(node, authenticate):
    """
    The node's L{LinkManager} (a child service, so links close on stop).

    @param authenticate: prove our identity on outgoing links (relays);
        clients stay anonymous to their guards, as Tor clients do.
    """
    return addService(node, "links", LinkManager(node.reactor, node.identity, LinkSettings(authenticate=authenticate)))


def listenForLinks(node, links, transportName, listen):
    """
    Accept links for C{links} on the transport called C{transportName}
    (the node's C{"stream"} listener).

    @raise SystemExit: no such transport is installed (one clear line).
    """
    from meshvpn.link.transports import findTransport

    try:
        transport = findTransport(transportName)
        endpoint = transport.serverEndpoint(node.reactor, {"listen": listen})
    except LinkError as e:
        raise SystemExit(f"meshvpn-{node.role}: {e}") from None
    node.listenStream(listen, links.serverFactory(transport.name), endpoint=endpoint)


def addDatagramLinks(node):
    """@return: the node's L{IDatagramLinkEndpoint}, run on its socket by a C{"datagram-links"} service."""
    from meshvpn.link.service import DatagramLinkService

    return addService(node, "datagram-links", DatagramLinkService(node.reactor, node.identity, node.udp)).endpoint
