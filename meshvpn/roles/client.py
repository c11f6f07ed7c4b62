"""The client role: a node that builds circuits for its user (``twistd meshvpn-client``).

It binds the node's UDP socket (ephemeral port by default: clients are not
listed in anyone's routing table) and wires its services together: links,
the DHT's relay finder, circuits and SOCKS, and with --tun the VPN client
(whose mesh router gets its peer connector from --mesh-relay's service).
"""

from zope.interface import implementer

from meshvpn.interfaces import IStatusSource
from meshvpn.config import RoleOptions, Setting, commonSettings, parseBool, parseBytesOrOff, parseHostPort, parsePositiveInt
from meshvpn.dht.service import DHTService, RelayFinder, parseBootstrapList, parseSeconds
from meshvpn.roles.common import addService, addServiceManagerHooks, buildNode
from meshvpn.client.vpn import ISOLATION as TUN_ISOLATION, attachTun, tunSettings
from meshvpn.client.meshlink import MeshLinkService, meshSettings
from meshvpn.roles.links import addDatagramLinks, addLinkManager
from meshvpn.roles.onionclient import addOnionClient
from meshvpn.roles.measure import addMeasuredWeights
from meshvpn.measure.settings import measureSettings, probeWeightSettings
from meshvpn.circuits.relayinfo import pathPossible
from meshvpn.control.options import controlSettings
from meshvpn.client.paying import paymentClientSettings
from meshvpn.roles.payments import addClientPayments
from meshvpn.roles.transports import appendOption, bridgeSettings, checkBridges, clientTransports
from meshvpn.roles.turnstream import turnTcpSetting, useTurnStreamSocket


def parseDhtThroughCircuits(raw):
    value = raw if isinstance(raw, str) else {True: "on", False: "off"}.get(raw)
    if value not in ("auto", "on", "off"):
        raise ValueError("auto, on or off")
    return value


def parseMultipathAfter(raw):
    """C{"auto"} (the default: meshvpn.circuits.mpauto decides), a byte count, or C{None} for off."""
    if isinstance(raw, str) and raw.strip().lower() == "auto":
        return "auto"
    try:
        return parseBytesOrOff(raw)
    except ValueError:
        raise ValueError("auto, off or a byte count 0 or more") from None


class Options(RoleOptions):
    """Options for ``twistd meshvpn-client``."""

    role = "client"
    synopsis = "[options]"
    longdesc = "Run a MeshVPN client. Keys are created in --data-dir on first start."
    schema = commonSettings("client", ("0.0.0.0", 0)) + [
        # DHT (meshvpn/dht/, doc/dht.md): a client queries in client mode and is never in others' tables.
        Setting("bootstrap", parseBootstrapList, [], "Comma-separated HOST:PORT of DHT nodes to join through."),
        Setting("dht-through-circuits", parseDhtThroughCircuits, "auto",
                "auto, on or off: send every DHT request through short circuits (guard + middle) instead of "
                "straight to DHT nodes (auto: on in VPN mode)."),
        Setting("dht-sample-interval", parseSeconds, 300.0,
                "Max seconds between samplings of the relay directory (sooner while it cannot build a path)."),
        Setting("circuits-spare", parsePositiveInt, 1, "Circuits kept built ahead of need."),
        Setting("warm-backup-guard", parseBool, False,
                "Keep a circuit built through a second guard, used only while the first is suspected of "
                "hanging or being cut (moving then needs no build); off: the second guard is dialled only "
                "after the first is suspected."),
        Setting("multipath-after", parseMultipathAfter, "auto",
                "When a stream gets a second circuit to its exit (multipath): auto (the default: a stream "
                "moving over 256 KB/s for 2 s while this client has CPU to spare, kept only while it beats "
                "one circuit by 15%), a byte count (after that many bytes; 0: at once), or off."),
        Setting("socks-listen", parseHostPort, ("127.0.0.1", 1080), "HOST:PORT of the SOCKS5 server for applications."),
        Setting(
            "socks-allow-remote",
            parseBool,
            False,
            "Allow socks-listen on a non-loopback address (anyone reaching it uses your circuits).",
            flag=True,
        ),
        Setting(
            "status-history",
            parseBool,
            False,
            "Also write each stream's target (the sites you visit) to status.json; off: no history on disk.",
            flag=True,
        ),
        # VPN mode (meshvpn/client/tun*.py, doc/vpn.md)
        *tunSettings(),
        *meshSettings(),
        *controlSettings(),
        # Peer-measured bandwidth (meshvpn/measure/, doc/measurement.md)
        *measureSettings(),
        *probeWeightSettings(),
        # Paying token-gated exits (meshvpn/client/paying.py, doc/payments.md)
        *paymentClientSettings(),
        # Managed pluggable transports and bridges (meshvpn/link/pt/, doc/censorship.md)
        *bridgeSettings(),
        # UDP blocked here: the node's socket is a TURN allocation over TCP (meshvpn/nat/turn_stream_socket.py)
        turnTcpSetting(),
    ]

    def opt_transport(self, value):
        appendOption(self, "transport", value)

    def opt_bridge(self, value):
        appendOption(self, "bridge", value)

    def opt_turn_tcp(self, value):
        appendOption(self, "turn-tcp", value)

    def postOptions(self):
        super().postOptions()
        from meshvpn.client.socks import checkListenAddress

        checkListenAddress(self.settings["socks_listen"][0], self.settings["socks_allow_remote"])


def makeService(options):
    from meshvpn.nat.endpoint import StunEndpoint
    from meshvpn.roles.control import addControl

    settings = options.settings
    node = buildNode("client", settings)
    if settings["turn_tcp"]:
        useTurnStreamSocket(node, settings["turn_tcp"])
    transports = clientTransports(node, settings)
    checkBridges(settings, transports)
    links = addLinkManager(node, authenticate=False, transports=transports)
    # Sampled quickly until a path can be built (a VPN needs a packet exit), then every --dht-sample-interval.
    packets = settings["tun"] and settings["tun_capture"]
    enough = lambda ds: pathPossible(ds, packets)  # noqa: E731
    if settings["bridge"] and settings.get("payment_wallet"):
        raise SystemExit("meshvpn-client: config error: paying exits through bridges is not supported yet "
                         "(the payment records live in the DHT, which a bridged client does not reach)")
    dhtTransport = None
    if settings["bridge"]:
        dht, finder = None, addBridgeDirectory(node, settings, links, enough)
    else:
        dhtTransport = addDhtTransport(node, settings)
        dht = addService(node, "dht", DHTService(node, settings["bootstrap"], clientMode=True, transport=dhtTransport))
        node.status.addSource("dht", DHTStatus(dht))  # contacts: how `meshvpn up` tells "no bootstrap answered"
        finder = addService(dht, "finder", RelayFinder(dht, settings["dht_sample_interval"], enough=enough))
        if dhtTransport is not None:
            from meshvpn.client.dhtcircuits import loadSavedRelays

            # started after the DHT, so its first mode reaches the DHT's directory (liveCheckOnlyThroughCircuits)
            addService(node, "dht-circuits", dhtTransport)

            def loadSaved(result):
                # Last run's relays, re-verified: the first circuits need no DHT, so the first packet is to the
                # guard.  Only once the node has started: a VPN's egress gate is in place by then, and a circuit
                # built from them earlier would dial its guard into the tunnel.
                if result is not None:
                    saved = loadSavedRelays(node.dataDir, node.reactor.seconds(), finder.log)
                    finder.relays = {**saved, **finder.relays}
                return result

            node.whenStarted.addCallback(loadSaved)  # before the transport's own wait (at its start): it fires first
        from meshvpn.roles.transports import UnreachableHint

        if dhtTransport is None:  # through circuits, a slow join is no sign of blocked UDP
            addService(dht, "unreachable-hint", UnreachableHint(node.reactor, dht, settings["bootstrap"]))
    # A bridged client reaches no DHT, so it has no measurements: it draws uniformly.
    weights = addMeasuredWeights(node, settings, dht, finder) if dht is not None else None
    circuits = addOnionClient(node, settings, links, finder, addClientPayments(node, settings, finder), weights=weights,
                              dhtTransport=dhtTransport)
    tun = addTun(node, settings, finder, circuits, links)
    stun = StunEndpoint.onSocket(node.reactor, node.udp)  # the socket's one STUN endpoint: mesh and NAT check
    addMeshLinks(node, settings, tun, stun)
    if dhtTransport is not None:
        dhtTransport.modeObservers.append(lambda mode: liveCheckOnlyThroughCircuits(dht, mode))
    # The NAT check probes bootstrap nodes and relays from our socket: not when the DHT goes through circuits.
    addControl(node, options, links=links, dht=dht, finder=finder, circuits=circuits, tun=tun,
               stun=stun if dhtTransport is None else None, weights=weights)
    addServiceManagerHooks(node, options)
    return node


def dhtThroughCircuits(settings):
    """Whether this client's DHT requests go through circuits: C{auto} means in VPN mode (--tun capturing)."""
    choice = settings["dht_through_circuits"]
    if choice == "auto":
        return bool(settings["tun"] and settings["tun_capture"])
    return choice == "on"


def addDhtTransport(node, settings):
    """
    The transport of the C{"dht-circuits"} service (L{meshvpn.client.dhtcircuits})
    when the DHT goes through circuits, or C{None}; L{addOnionClient} attaches its circuits.
    """
    if not dhtThroughCircuits(settings):
        return None
    from meshvpn.client.dhtcircuits import CircuitDatagramTransport

    transport = CircuitDatagramTransport(node.reactor, node.udp, settings["bootstrap"], startAfter=lambda: node.whenStarted)
    node.status.addSource("dht_circuits", transport)
    return transport


def liveCheckOnlyThroughCircuits(dht, mode):
    """
    A first start asks only the bootstrap nodes, so the directory cannot ping
    the relays it samples: it takes them unpinged (a dead one fails its
    circuit build) until circuits carry the pings.
    """
    for overlay in dht.overlays:
        overlay.directory.checkLive = mode != "bootstrap"


def addBridgeDirectory(node, settings, links, enough):
    """
    With C{--bridge}: no DHT of our own (no UDP to anyone); the relay
    directory is read through the bridges' links, and only bridges are
    first hops (L{meshvpn.link.bridgedir.BridgeDirectory}).
    """
    from meshvpn.link.bridgedir import BridgeDirectory, DirectoryChannel

    channel = DirectoryChannel(node.reactor)
    links.setDirectoryHandler(channel)
    directory = BridgeDirectory(node.reactor, links, channel, settings["bridge"], settings["dht_sample_interval"],
                                enough=enough)
    node.status.addSource("bridges", directory)
    return addService(node, "bridges", directory)


@implementer(IStatusSource)
class DHTStatus:
    """The DHT's counts in status.json (the service's own C{status()}, as the control API shows it)."""

    def __init__(self, dht):
        self._dht = dht

    def status(self):
        return self._dht.status()


def addTun(node, settings, finder, circuits, links):
    """
    With C{--tun}, the VPN client: packet-mode circuits and DNS from
    C{circuits} when it captures the system's traffic (mesh only otherwise).
    @return: the L{TunClient} or C{None}.
    """
    if not settings["tun"]:
        return None
    from meshvpn.tun.privileges import privilegeProblem

    problem = privilegeProblem()
    if problem:
        raise SystemExit(f"meshvpn-client: --tun {problem}")
    getCircuit = opener = None
    if settings["tun_capture"]:
        def getCircuit():
            return circuits.getCircuit(target=None, isolation=TUN_ISOLATION, packets=True)

        if settings["tun_dns"]:
            from meshvpn.streams.opener import CircuitStreamOpener

            opener = CircuitStreamOpener(circuits, reactor=node.reactor)
    return attachTun(node, settings, finder, getCircuit=getCircuit, opener=opener, links=links)


def addMeshLinks(node, settings, tun, stun):
    """
    With C{--mesh-relay}, the C{"mesh"} service on the node's datagram
    links (STUN through C{stun}, the socket's endpoint); its peer
    connector goes to C{tun}'s mesh router.
    @return: the L{MeshLinkService} or C{None}.
    """
    relay = settings["mesh_relay"]
    if relay is None:
        return None
    dhtService = node.namedServices.get("dht") if settings.get("mesh_rendezvous", True) else None
    mesh = MeshLinkService(
        node.reactor, node.udp, addDatagramLinks(node), stun, relay,
        settings["mesh_turn"], onConnector=tun.setMeshConnector if tun is not None else None,
        peers=settings["mesh_peers"],
        dht=(lambda: dhtService.dht) if dhtService is not None else None, identity=node.identity,
    )
    return addService(node, "mesh", mesh)
