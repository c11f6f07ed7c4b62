"""The client's VPN mode (``twistd meshvpn-client --tun``): every app's IP traffic into circuits.

The TUN device gets the node's mesh address (L{meshvpn.client.mesh}) and
the routes and kill switch of L{meshvpn.client.capture}; packets read from
it go, in batches, to the mesh router (mesh addresses) or to one packet-mode
circuit (everything else), whose exit NATs them to the internet.  Replies
come back on the circuit and are written to the TUN.  IPv6 is never sent
anywhere (dropped here, and blocked by the kill switch).

MTU: packets ride PACKET cells as C{length(2) | packet} records cut into
494-byte cell bodies (L{meshvpn.onion.packets}); the default 1480 makes a
full-size packet exactly three cells.  While no circuit is up (first start,
a hop died) a bounded queue holds the first packets and the rest are
dropped: TCP retransmits, and the kill switch keeps them from leaking.
"""

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from meshvpn.client.mesh import MESH_MTU, MESH_NET, MeshRouter, isMesh, meshAddress

DEFAULT_MTU = 1480
MAX_WAITING = 256
ISOLATION = ("tun",)


class TunClient(service.Service):
    """
    @param getCircuit: C{callable() -> Deferred(circuit)}, a packet-mode
        circuit (C{sendPackets}, C{setPacketReceiver}, C{whenClosed}).
    @param opener: an L{IStreamOpener} for DNS (C{None}: no DNS server).
    @param keepSource: C{callable() -> iterable of (ip, port)} of relay
        endpoints to keep off the tunnel (asked again every few seconds).
    @param routes: an L{IRouteController} or C{None} (no capture: tests, mesh only).
    @param meshConnector: a L{PeerConnector} for mesh peers, or C{None}.
    """

    log = Logger()

    def __init__(self, reactor, nodeId, getCircuit, opener=None, keepSource=lambda: (), routes=None, mtu=DEFAULT_MTU,
                 tunName="mvpn%d", tunFactory=None, meshConnector=None, meshPeers=(), dnsPort=53, keepEvery=2.0):
        self.reactor = reactor
        self.nodeId = nodeId
        self.address = meshAddress(nodeId)
        self._getCircuit = getCircuit
        self.opener = opener
        self.keepSource = keepSource
        self.routes = routes
        self.mtu = mtu
        self.tunName = tunName
        self._tunFactory = tunFactory
        self.meshConnector = meshConnector
        self.meshPeers = meshPeers
        self.dnsPort = dnsPort
        self.keepEvery = keepEvery
        self.tun = None
        self.mesh = None
        self.dns = None
        self._ports = []
        self._circuit = None
        self._asking = None
        self._waiting = []
        self._keepLoop = None
        self.counters = {"to_circuit": 0, "from_circuit": 0, "ipv6_dropped": 0, "no_circuit_dropped": 0}

    def startService(self):
        if self._tunFactory is None:
            from meshvpn.tun.device import TunDevice

            self._tunFactory = TunDevice
        self.tun = self._tunFactory(self.reactor, self.tunName, self.mtu)
        self.tun.configure(addresses=[f"{self.address}/32"])
        self._meshRoute()
        try:
            if self.routes is not None:
                self.routes.capture(self.tun, set(self.keepSource()))
                self._keepLoop = task.LoopingCall(self._keep)
                self._keepLoop.clock = self.reactor
                self._keepLoop.start(self.keepEvery, now=False)
            if self.opener is not None:
                from meshvpn.client.vpndns import listenDNS

                self.dns, self._ports = listenDNS(self.reactor, self.address, self.opener, self.dnsPort)
        except Exception:
            self._undo()
            raise
        self.mesh = MeshRouter(self.nodeId, self.meshConnector, self.meshPeers, self.tun.writePackets)
        self.tun.setPacketReceiver(self._fromTun)
        super().startService()
        self.log.info("VPN up on {tun}: address {a}, mtu {mtu}", tun=self.tun.name, a=self.address, mtu=self.mtu)
        self._ensureCircuit()

    def setMeshConnector(self, connector):
        """The node's L{PeerConnector} is ready (mesh links can come up after the TUN)."""
        self.meshConnector = connector
        if self.mesh is not None:
            self.mesh.setConnector(connector)

    def _meshRoute(self):
        add = getattr(self.tun, "addRoute", None)
        if add is None:
            return
        try:
            add(str(MESH_NET), mtu=MESH_MTU)
        except TypeError:
            add(str(MESH_NET))

    def stopService(self):
        super().stopService()
        self._undo()

    def _undo(self):
        if self._keepLoop is not None and self._keepLoop.running:
            self._keepLoop.stop()
        for port in self._ports:
            port.stopListening()
        self._ports = []
        if self.routes is not None:
            self.routes.restore()
        if self._circuit is not None:
            self._circuit.setPacketReceiver(None)
            self._circuit = None
        if self.tun is not None:
            self.tun.close()

    def _keep(self):
        try:
            self.routes.keep(set(self.keepSource()))
        except Exception:
            self.log.failure("could not keep relay routes")

    # -- circuits

    def _ensureCircuit(self):
        if self._getCircuit is None:
            return  # mesh only: no exit
        if self._circuit is not None or self._asking is not None or not self.running:
            return
        self._asking = defer.maybeDeferred(self._getCircuit)
        self._asking.addCallbacks(self._gotCircuit, self._noCircuit)

    def _gotCircuit(self, circuit):
        self._asking = None
        if not self.running:
            return
        self._circuit = circuit
        circuit.setPacketReceiver(self._fromCircuit)
        circuit.whenClosed().addBoth(self._circuitClosed, circuit)
        waiting, self._waiting = self._waiting, []
        if waiting:
            self._send(waiting)

    def _noCircuit(self, failure):
        self._asking = None
        self.log.warn("no circuit for the VPN yet: {e}", e=failure.getErrorMessage())
        if self.running:
            self.reactor.callLater(1.0, self._ensureCircuit)

    def _circuitClosed(self, reason, circuit):
        if self._circuit is circuit:
            self._circuit = None
            self._ensureCircuit()

    def _fromCircuit(self, packets):
        self.counters["from_circuit"] += len(packets)
        self.tun.writePackets(packets)

    # -- packets from apps

    def _fromTun(self, packets):
        toExit = []
        errors = None
        for p in packets:
            if p[0] >> 4 != 4 or len(p) < 20:
                self.counters["ipv6_dropped"] += 1
                continue
            if isMesh(p[16:20]):
                err = self.mesh.send(p)
                if err is not None:
                    errors = errors or []
                    errors.append(err)
                continue
            toExit.append(p)
        if toExit:
            self._send(toExit)
        if errors:
            self.tun.writePackets(errors)

    def _send(self, packets):
        circuit = self._circuit
        if self._getCircuit is None:
            self.counters["no_circuit_dropped"] += len(packets)
            return
        if circuit is None:
            room = MAX_WAITING - len(self._waiting)
            self._waiting.extend(packets[:room])
            self.counters["no_circuit_dropped"] += max(0, len(packets) - room)
            self._ensureCircuit()
            return
        self.counters["to_circuit"] += circuit.sendPackets(packets)

    def status(self):
        return {
            "tun": self.tun.status() if self.tun is not None and hasattr(self.tun, "status") else None,
            "address": self.address,
            "mesh": self.mesh.status() if self.mesh is not None else None,
            "dns_queries": self.dns.queries if self.dns is not None else 0,
            **self.counters,
        }


def tunSettings():
    """The client role's VPN settings (appended to its schema)."""
    from meshvpn.config import Setting, parseBool, parseText

    def parsePeers(raw):
        if isinstance(raw, (list, tuple)):
            return list(raw)
        peers = []
        for item in str(raw).split(","):
            item = item.strip()
            if item:
                b = bytes.fromhex(item)
                if len(b) != 32:
                    raise ValueError(f"mesh peer {item!r} is not a 64-hex-digit node id")
                peers.append(b)
        return peers

    def parseMtu(raw):
        mtu = int(raw)
        if not 576 <= mtu <= 9000:
            raise ValueError("tun MTU must be 576..9000")
        return mtu

    return [
        Setting("tun", parseBool, False, "VPN mode: route all IPv4 through circuits (TUN, kill switch, DNS); needs root.",
                flag=True),
        Setting("tun-name", parseText, "mvpn%d", "TUN interface name (%d: first free number)."),
        Setting("tun-mtu", parseMtu, DEFAULT_MTU, "TUN MTU; 1480 makes a full packet exactly 3 cells."),
        Setting("tun-capture", parseBool, True,
                "With --tun: capture all IPv4 (routes, kill switch, DNS); false = mesh addresses only."),
        Setting("tun-dns", parseBool, True, "Serve DNS on the TUN address (resolved at the exit) and point resolv.conf at it."),
        Setting("resolv-conf", parseText, "/etc/resolv.conf", "The resolver file --tun rewrites while up (restored on stop)."),
        Setting("mesh-peers", parsePeers, [], "Comma-separated node ids (hex) of mesh peers reachable at their mesh address."),
    ]


def relayEndpoints(bootstrap, finder):
    """
    C{(ip, port)} of every relay endpoint the client talks to directly: DHT
    bootstrap nodes and, for every relay in the directory, its DHT port and
    link ports (the guards are among them).
    """
    out = set()
    for host, port in bootstrap or ():
        out.add((host.strip("[]"), port))
    for d in getattr(finder, "relays", {}).values():
        for _transport, address in d.addresses:
            host, _, port = address.rpartition(":")
            if port.isdigit():
                out.add((host.strip("[]"), int(port)))
    return out


def attachTun(node, settings, finder=None, getCircuit=None, opener=None, keepSource=None, meshConnector=None):
    """
    The client role's hook: with C{--tun}, a L{TunClient} on C{node} using
    C{node.circuits} (the circuit manager) unless C{getCircuit} is given.
    @return: the L{TunClient} or C{None}.
    """
    if not settings.get("tun"):
        return None
    from meshvpn.client.capture import RouteController
    from meshvpn.tun.privileges import privilegeProblem

    problem = privilegeProblem()
    if problem and getCircuit is None:
        raise SystemExit(f"meshvpn-client: --tun {problem}")
    capture = settings.get("tun_capture", True)
    if getCircuit is None and capture:
        def getCircuit():
            return node.circuits.getCircuit(target=None, isolation=ISOLATION, packets=True)
    if opener is None and capture and settings.get("tun_dns", True):
        from meshvpn.streams.opener import CircuitStreamOpener

        class _LazyOpener:
            def resolve(self, name, key):
                return CircuitStreamOpener(node.circuits).resolve(name, key)

        opener = _LazyOpener()
    tag = node.identity.nodeId.hex()[:8]
    dnsServer = meshAddress(node.identity.nodeId) if opener is not None else None
    routes = RouteController(tag, node.dataDir, dnsServer, settings.get("resolv_conf", "/etc/resolv.conf")) if capture else None
    client = TunClient(
        node.reactor, node.identity.nodeId, getCircuit, opener, keepSource or (lambda: relayEndpoints(settings.get("bootstrap"), finder)), routes,
        mtu=settings.get("tun_mtu", DEFAULT_MTU), tunName=settings.get("tun_name", "mvpn%d"),
        meshConnector=meshConnector,
        meshPeers=settings.get("mesh_peers", ()),
    )
    client.setServiceParent(node)
    status = getattr(node, "status", None)
    if status is not None:
        status.addSource("tun", client)
    return client

