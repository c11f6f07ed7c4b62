"""A node's datagram links as a service: one endpoint on the node's socket while it runs.

A NAT relay (links from NATed peers) and a mesh client (links to its relay
and its peers) both use the node's one L{DatagramLinkEndpoint}.  Its role
builds this service and hands C{service.endpoint} to whichever of them it
runs; the service, not its users, registers the endpoint on the node's
socket when the node starts and closes every link when it stops.
"""

from twisted.application import service

from meshvpn.link.datagram import DatagramLinkEndpoint
from meshvpn.udpmux import LINK_FIRST_BYTES

MUX_NAME = "link"


class DatagramLinkService(service.Service):
    """
    @param udp: the node's L{IDatagramMultiplexer}; also the links' default path.
    @ivar endpoint: the L{IDatagramLinkEndpoint}.
    """

    def __init__(self, reactor, identity, udp, settings=None):
        self.udp = udp
        self.endpoint = DatagramLinkEndpoint(reactor, identity, udp, settings)

    def startService(self):
        super().startService()
        self.udp.register(MUX_NAME, LINK_FIRST_BYTES, self.endpoint)

    def stopService(self):
        super().stopService()
        self.udp.unregister(MUX_NAME)
        self.endpoint.stop()
