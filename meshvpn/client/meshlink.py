"""Mesh links for the client role: the node's PeerConnector (``--mesh-relay``).

A client in mesh mode registers with one NAT relay (a relay run with
``--nat-relay true``, given as C{NODEID@HOST:PORT}) over a datagram link on
the node's own UDP socket; hole-punching signals go through it, and when
punching is impossible the connector allocates on the relay's TURN server
(``--mesh-turn HOST:PORT``).  Once registered, the connector is handed to
the TUN client's mesh router (L{meshvpn.client.mesh}).  Only the
configured mesh peers (``--mesh-peers``) may offer us a link: signals from
any other node on the relay are dropped.

Host candidates are the node's own IPv4 addresses, minus loopback, the mesh
range and the exit pool's shared space (a TUN address is no way to reach us).
"""

import ipaddress

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from meshvpn.config import parseHostPort

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
    log = Logger()

    def __init__(self, node, relay, turn=None, punchDeadline=2.5, retry=5.0, peers=()):
        self.node = node
        self.relayId, self.relayAddress = relay
        self.turn = turn
        self.peers = tuple(peers)  # only these may offer us a link (--mesh-peers)
        self.punchDeadline = punchDeadline
        self.retry = retry
        self.connector = None
        self._starting = None

    def startService(self):
        super().startService()
        self._starting = defer.Deferred.fromCoroutine(self._start())
        self._starting.addErrback(self._failed)

    def _failed(self, failure):
        if failure.check(defer.CancelledError) or not self.running:
            return
        self.log.warn("mesh: could not register with the NAT relay: {e}; retrying", e=failure.getErrorMessage())
        self._starting = task.deferLater(self.node.reactor, self.retry, lambda: None)
        self._starting.addCallback(lambda _: defer.Deferred.fromCoroutine(self._start())).addErrback(self._failed)

    def stopService(self):
        super().stopService()
        if self._starting is not None:
            self._starting.cancel()

    async def _start(self):
        from meshvpn.nat.connect import PeerConnector
        from meshvpn.nat.endpoint import StunEndpoint
        from meshvpn.nat.punch import HolePuncher
        from meshvpn.link.relayservice import datagramLinks
        from meshvpn.nat.signal import RelaySignalling

        node, reactor = self.node, self.node.reactor
        endpoint = datagramLinks(node)
        stunEp = StunEndpoint.onNode(node)
        puncher = getattr(node, "holePuncher", None)
        if puncher is None:
            puncher = node.holePuncher = HolePuncher(reactor, node.udp.sendDatagram, deadline=self.punchDeadline)
            puncher.register(node.udp)
        signalling = RelaySignalling(reactor, endpoint, self.relayId, self.relayAddress)
        port = node.udpService.port.getHost().port
        allocate = None
        if self.turn is not None:
            async def allocate():
                from meshvpn.nat.turn_client import TurnAllocation

                lifetime, user, password = await signalling.requestCredentials()
                alloc = TurnAllocation(reactor, stunEp, node.udp.sendDatagram, self.turn, user, password)
                await alloc.allocate(lifetime)
                alloc.registerChannelData(node.udp)
                return alloc

        candidates = hostCandidates(port)
        connector = PeerConnector(reactor, endpoint, puncher, signalling, lambda: candidates, allocate, peers=self.peers)
        observed = await signalling.start()
        self.connector = node.peerConnector = connector
        tun = getattr(node, "tun", None)
        if tun is not None:
            tun.setMeshConnector(connector)
        self.log.info("mesh: registered with NAT relay {r}; seen as {o}", r=self.relayId.hex()[:12], o=observed)


def meshSettings():
    from meshvpn.config import Setting

    return [
        Setting("mesh-relay", parseMeshRelay, None,
                "NODEID@HOST:PORT of a NAT relay (--nat-relay) for mesh links and hole-punching signals."),
        Setting("mesh-turn", parseHostPort, None, "HOST:PORT of that relay's TURN server, for peers that cannot punch."),
    ]


def attachMeshLinks(node, settings):
    """The client role's hook: with C{--mesh-relay}, a L{MeshLinkService}. @return: it or C{None}."""
    relay = settings.get("mesh_relay")
    if relay is None:
        return None
    svc = MeshLinkService(node, relay, settings.get("mesh_turn"), peers=settings.get("mesh_peers", ()))
    svc.setServiceParent(node)
    return svc
