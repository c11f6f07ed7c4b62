"""Mesh links for the client role: the node's PeerConnector (``--mesh-relay``).

A client in mesh mode registers with one NAT relay (a relay run with
``--nat-relay true``, given as C{NODEID@HOST:PORT}) over a datagram link on
the node's own UDP socket; hole-punching signals go through it, and when
punching is impossible the connector allocates on the relay's TURN server
(``--mesh-turn HOST:PORT``).  Once registered, the connector is handed to
whatever the role gave as C{onConnector}: the TUN client's mesh router
(L{meshvpn.client.mesh}).  Only the
configured mesh peers (``--mesh-peers``) may offer us a link: signals from
any other node on the relay are dropped.

Host candidates are the node's own IPv4 addresses, minus loopback, the mesh
range and the exit pool's shared space (a TUN address is no way to reach us).

With ``--mesh-rendezvous`` (the default) and a DHT, the client also
publishes which relay it is registered with (a signed, short-lived DHT
record, L{meshvpn.nat.rendezvous}) and looks each peer's up before
signalling it, registering with that peer's relay if it is another: two
mesh peers need not be configured with the same relay.
"""

import ipaddress

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from meshvpn.config import parseHostPort
from meshvpn.nat.punch import PUNCH_FIRST_BYTES, HolePuncher

PUNCH_MUX_NAME = "punch"
SHARED = ipaddress.ip_network("100.64.0.0/10")


def parseMeshRelay(raw):
    """C{NODEID@HOST:PORT} -> C{(nodeId bytes, (host, port))}, or C{None} for empty."""
    if raw in (None, ""):
        return None
    if isinstance(raw, tuple):
        return raw
    nodeHex, sep, address = str(raw).partition("@")
    try:
        nodeId = bytes.fromhex(nodeHex)
    except ValueError:
        nodeId = b""
    if not sep or len(nodeId) != 32:
        raise ValueError("expected NODEID@HOST:PORT with a 64-hex-digit node id")
    return nodeId, parseHostPort(address)


def hostCandidates(port):
    from pyroute2 import IPRoute

    out = []
    with IPRoute() as ipr:
        for a in ipr.get_addr(family=2):
            ip = a.get_attr("IFA_ADDRESS")
            if ip and not ipaddress.ip_address(ip).is_loopback and ipaddress.ip_address(ip) not in SHARED:
                out.append((ip, port))
    return out


class MeshLinkService(service.Service):
    """
    Registers with the NAT relay, then hands the node's L{PeerConnector} to
    C{onConnector} (the TUN client's mesh router).

    @param udp: the node's L{IDatagramMultiplexer} (hole punching and TURN
        ChannelData are routed on it; host candidates use its port).
    @param datagramLinks: the node's L{IDatagramLinkEndpoint}.
    @param stunEndpoint: the node's L{IStunEndpoint} (TURN allocations).
    @param relay: C{(nodeId, (host, port))} of the NAT relay.
    @param turn: C{(host, port)} of the relay's TURN server, or C{None}.
    @param onConnector: C{callable(connector)} once registered, or C{None}.
    @ivar connector: the L{PeerConnector} once registered, else C{None}.
    """

    log = Logger()

    def __init__(self, reactor, udp, datagramLinks, stunEndpoint, relay, turn=None, onConnector=None,
                 punchDeadline=2.5, retry=5.0, peers=(), dht=None, identity=None):
        self.reactor = reactor
        self.udp = udp
        self.datagramLinks = datagramLinks
        self.stunEndpoint = stunEndpoint
        self.relayId, self.relayAddress = relay
        self.turn = turn
        self.onConnector = onConnector
        self.peers = tuple(peers)  # only these may offer us a link (--mesh-peers)
        self.dht, self.identity = dht, identity  # dht: callable() -> IDHT or None (rendezvous), or None
        self.rendezvous = None
        self.retry = retry
        self.puncher = HolePuncher(reactor, udp.sendDatagram, deadline=punchDeadline)
        self.connector = None
        self._starting = None

    def startService(self):
        super().startService()
        self.udp.register(PUNCH_MUX_NAME, PUNCH_FIRST_BYTES, self.puncher)
        self._starting = defer.Deferred.fromCoroutine(self._start())
        self._starting.addErrback(self._failed)

    def _failed(self, failure):
        if failure.check(defer.CancelledError) or not self.running:
            return
        self.log.warn("mesh: could not register with the NAT relay: {e}; retrying", e=failure.getErrorMessage())
        self._starting = task.deferLater(self.reactor, self.retry, lambda: None)
        self._starting.addCallback(lambda _: defer.Deferred.fromCoroutine(self._start())).addErrback(self._failed)

    def _rendezvous(self, home, dht):
        from meshvpn.dht import records
        from meshvpn.nat.rendezvous import RendezvousDirectory, RendezvousSignalling
        from meshvpn.nat.signal import RelaySignalling

        def openRelay(relayId, address):
            other = RelaySignalling(self.reactor, self.datagramLinks, relayId, address)
            return other.start().addCallback(lambda _: other)

        if self.rendezvous is not None:
            self.rendezvous.stop()
        self.rendezvous = RendezvousDirectory(self.reactor, dht, records, self.identity)
        return RendezvousSignalling(home, self.rendezvous, openRelay)

    def stopService(self):
        super().stopService()
        if self.rendezvous is not None:
            self.rendezvous.stop()
        if self._starting is not None:
            self._starting.cancel()
        self.udp.unregister(PUNCH_MUX_NAME)

    async def _start(self):
        from meshvpn.nat.connect import PeerConnector
        from meshvpn.nat.signal import RelaySignalling

        reactor, udp, stunEp = self.reactor, self.udp, self.stunEndpoint
        signalling = RelaySignalling(reactor, self.datagramLinks, self.relayId, self.relayAddress)
        port = udp.getHost().port
        allocate = None
        if self.turn is not None:
            async def allocate():
                from meshvpn.nat.turn_client import TurnAllocation

                lifetime, user, password = await signalling.requestCredentials()
                alloc = TurnAllocation(reactor, stunEp, udp.sendDatagram, self.turn, user, password,
                                       renew=signalling.requestCredentials)
                await alloc.allocate(lifetime)
                alloc.registerChannelData(udp)
                return alloc

        candidates = hostCandidates(port)
        dht = self.dht() if self.dht is not None else None
        channel = self._rendezvous(signalling, dht) if dht is not None else signalling
        connector = PeerConnector(reactor, self.datagramLinks, self.puncher, channel, lambda: candidates, allocate, peers=self.peers)
        observed = await signalling.start()
        if self.rendezvous is not None:
            self.rendezvous.publish(self.relayId, [self.relayAddress]).addErrback(
                lambda f: self.log.warn("mesh: rendezvous not published: {e}", e=f.getErrorMessage()))
        self.connector = connector
        if self.onConnector is not None:
            self.onConnector(connector)
        self.log.info("mesh: registered with NAT relay {r}; seen as {o}", r=self.relayId.hex()[:12], o=observed)


def meshSettings():
    from meshvpn.config import Setting, parseBool

    return [
        Setting("mesh-relay", parseMeshRelay, None,
                "NODEID@HOST:PORT of a NAT relay (--nat-relay) for mesh links and hole-punching signals."),
        Setting("mesh-turn", parseHostPort, None, "HOST:PORT of that relay's TURN server, for peers that cannot punch."),
        Setting("mesh-rendezvous", parseBool, True,
                "Publish our NAT relay in the DHT and look mesh peers' relays up there, so peers need not share "
                "a relay (true/false)."),
    ]
