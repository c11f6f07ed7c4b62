"""What a relay runs so that NATed peers can reach each other: links, signalling, TURN.

With ``--nat-relay`` a relay carries datagram links on its node socket
(first bytes 0x90-0x9D), forwards hole-punching signals between the peers
linked to it (L{meshvpn.nat.signal.SignalRelay}), and, with ``--turn
IP:PORT``, runs a TURN server on that second socket whose credentials it
hands only to peers that authenticated over a link (so every allocation
belongs to a node id), and which never relays to this node's own addresses.  The TURN secret is random per start: credentials
die with the process.
"""

import os

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from meshvpn.link.datagram import DatagramLinkEndpoint
from meshvpn.nat import stun
from meshvpn.nat.endpoint import StunEndpoint
from meshvpn.nat.signal import SignalRelay
from meshvpn.nat.turn_server import TurnServer
from meshvpn.udpmux import STUN_BYTES, DatagramMultiplexer


def datagramLinks(node):
    """The node's L{DatagramLinkEndpoint}, created and registered on first use."""
    ep = getattr(node, "datagramLinks", None)
    if ep is None:
        ep = node.datagramLinks = DatagramLinkEndpoint(node.reactor, node.identity, node.udp)
        ep.register(node.udp)
    return ep


class NatRelayService(service.Service):
    log = Logger()

    def __init__(self, node, turnAddress=None):
        self.node = node
        self.turnAddress = turnAddress
        self.signal = self.turn = None
        self._turnPort = None

    def startService(self):
        super().startService()
        reactor = self.node.reactor
        secret = os.urandom(32) if self.turnAddress else None
        self.signal = SignalRelay(reactor, datagramLinks(self.node), turnSecret=secret)
        if self.turnAddress:
            host, port = self.turnAddress
            mux = DatagramMultiplexer()
            stunEp = StunEndpoint(reactor, mux.sendDatagram)
            mux.register("stun", STUN_BYTES, stunEp, accept=stun.isStun)
            self.turn = TurnServer(reactor, stunEp, mux.sendDatagram, host, authSecret=secret, ownAddresses=self._ownHosts)
            self.turn.registerChannelData(mux)
            self._turnPort = reactor.listenUDP(port, mux, interface=host)
        self.log.info(
            "NAT relay: datagram links and signalling on the node socket{turn}",
            turn=f"; TURN on {self.turnAddress[0]}:{self.turnAddress[1]}" if self.turnAddress else "",
        )

    def _ownHosts(self):
        """The node's own listening IPs: a relayed address never sends to them (TURN refuses them as peers)."""
        hosts = []
        for address in self.node.addresses().values():
            host, _, _port = address.rpartition(":")
            hosts.append(host.strip("[]"))
        return hosts

    def stopService(self):
        super().stopService()
        ep = getattr(self.node, "datagramLinks", None)
        if ep is not None:
            ep.stop()
        if self.turn is not None:
            self.turn.stop()
        port, self._turnPort = self._turnPort, None
        if port is not None:
            return defer.maybeDeferred(port.stopListening)
