"""Attaching the link plane to a node: what a role's makeService calls.

Kept here so role modules stay a few lines: a relay listens for links on its
configured transport; every node gets a LinkManager as C{node.links} that
the onion layer hooks with C{node.links.setCellHandler(...)}.
"""

from meshvpn.errors import LinkError
from meshvpn.link.manager import LinkManager
from meshvpn.link.protocol import LinkSettings


def attachLinks(node, authenticate):
    """
    Give C{node} its L{LinkManager} (a child service, so links close on stop).

    @param authenticate: prove our identity on outgoing links (relays);
        clients stay anonymous to their guards, as Tor clients do.
    """
    node.links = LinkManager(node.reactor, node.identity, LinkSettings(authenticate=authenticate))
    node.links.setServiceParent(node)
    return node.links


def listenForLinks(node, transportName, listen):
    """
    Accept links on the transport called C{transportName}.

    @raise SystemExit: no such transport is installed (one clear line).
    """
    from meshvpn.link.transports import findTransport

    try:
        transport = findTransport(transportName)
        endpoint = transport.serverEndpoint(node.reactor, {"listen": listen})
    except LinkError as e:
        raise SystemExit(f"meshvpn-{node.role}: {e}") from None
    node.listenStream(listen, node.links.serverFactory(transport.name), endpoint=endpoint)
