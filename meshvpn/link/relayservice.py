"""What a relay runs so that NATed peers can reach each other: links, signalling, TURN.

With ``--nat-relay`` a relay carries datagram links on its node socket
(first bytes 0x90-0x9D), forwards hole-punching signals between the peers
linked to it (L{meshvpn.nat.signal.SignalRelay}), and, with ``--turn
IP:PORT``, runs a TURN server on that second socket whose credentials it
hands only to peers that authenticated over a link (so every allocation
belongs to a node id), and which never relays to this node's own addresses.  The TURN secret is random per start: credentials
die with the process.

With ``--turn-tcp IP:PORT`` the TURN server is also reached over TCP, by
hosts whose UDP is blocked (L{meshvpn.nat.turn_stream_server}): they prove
their node id on the stream instead of over a link, and their link to this
relay then runs through their allocation, so the TURN server lets
allocations reach this node's datagram-link socket (link bytes only) and
each other's relayed addresses.
"""

import os

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from meshvpn.nat.endpoint import StunEndpoint
from meshvpn.nat.signal import SignalRelay
from meshvpn.nat.turn_server import TurnServer
from meshvpn.nat.turn_stream_server import TurnStreamFactory, TurnStreamFront
from meshvpn.hostport import HostPortError, splitHostPort
from meshvpn.udpmux import DatagramMultiplexer


class NatRelayService(service.Service):
    """
    @param datagramLinks: the node's L{IDatagramLinkEndpoint} (started and
        stopped by its L{meshvpn.link.service.DatagramLinkService}).
    @param turnAddress: C{(ip, port)} of the TURN socket, or C{None}.
    @param ownAddresses: C{callable() -> {name: "HOST:PORT"}}, the node's
        bound addresses (TURN refuses them as peers).
    """

    log = Logger()

    def __init__(self, reactor, datagramLinks, turnAddress=None, ownAddresses=dict, turnStreamAddress=None, identity=None):
        self.reactor = reactor
        self.identity = identity  # signs each TURN stream's hello (TLS-bound), so clients know whom they reached
        self.turnStreamAddress = turnStreamAddress
        self.turnStream = self._turnStreamPort = None
        self._ownAddresses = ownAddresses
        self.datagramLinks = datagramLinks
        self.turnAddress = turnAddress
        self.signal = self.turn = None
        self._turnPort = None

    def startService(self):
        super().startService()
        reactor = self.reactor
        secret = os.urandom(32) if self.turnAddress else None
        self.signal = SignalRelay(reactor, self.datagramLinks, turnSecret=secret)
        if self.turnAddress:
            host, port = self.turnAddress
            mux = DatagramMultiplexer()
            stunEp = StunEndpoint.onSocket(reactor, mux)
            if self.turnStreamAddress:
                front = TurnStreamFront(reactor, stunEp, mux.sendDatagram)
                self.turn = TurnServer(reactor, front, front.send, host, authSecret=secret, ownAddresses=self._ownHosts,
                                       linkAddresses=self._linkSockets)
            else:
                self.turn = TurnServer(reactor, stunEp, mux.sendDatagram, host, authSecret=secret, ownAddresses=self._ownHosts)
            self.turn.registerChannelData(mux)
            self._turnPort = reactor.listenUDP(port, mux, interface=host)
            if self.turnStreamAddress:
                from twisted.protocols.tls import TLSMemoryBIOFactory

                from meshvpn.link.tlsctx import sharedLinkTLS

                self.turnStream = TurnStreamFactory(reactor, front, self.turn, secret, self.identity)
                sHost, sPort = self.turnStreamAddress
                tls = TLSMemoryBIOFactory(sharedLinkTLS(), False, self.turnStream)
                self._turnStreamPort = reactor.listenTCP(sPort, tls, interface=sHost)
        self.log.info(
            "NAT relay: datagram links and signalling on the node socket{turn}",
            turn=(f"; TURN on {self.turnAddress[0]}:{self.turnAddress[1]}" if self.turnAddress else "")
            + (f", over TLS on {self.turnStreamAddress[0]}:{self.turnStreamAddress[1]}" if self.turnStream else ""),
        )

    def _linkSockets(self):
        """The node's UDP sockets (they carry datagram links): hosts on TURN streams link to us through them."""
        out = []
        for name, address in self._ownAddresses().items():
            if name in ("udp", "udp6"):
                try:
                    out.append(splitHostPort(address, allowZero=True))
                except HostPortError:
                    continue
        return out

    def _ownHosts(self):
        """The node's own listening IPs: a relayed address never sends to them (TURN refuses them as peers)."""
        hosts = []
        for address in self._ownAddresses().values():
            try:
                hosts.append(splitHostPort(address, allowZero=True)[0])
            except HostPortError:
                continue
        return hosts

    def stopService(self):
        super().stopService()
        if self.turn is not None:
            self.turn.stop()
        if self.turnStream is not None:
            self.turnStream.closeAll()
        ports = [p for p in (self._turnPort, self._turnStreamPort) if p is not None]
        self._turnPort = self._turnStreamPort = None
        return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports])
