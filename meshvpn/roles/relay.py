"""The relay role: a node others route through (``twistd meshvpn-relay``).

It binds the node's UDP socket and a stream listening port for links, and
wires its services together: links, STUN server, the onion switch (and an
exit's edges), the DHT with the descriptor publisher, the NAT relay.
"""

from meshvpn.config import RoleOptions, Setting, commonSettings, parseBool, parseHostPort, parseServerEndpoint, parseText
from meshvpn.dht.service import DHTService, RelayPublisher, parseBootstrapList, parseFlags, parseSeconds
from meshvpn.exit.packetexit import attachPacketExit, packetExitSettings
from meshvpn.exit.paygate import paymentExitSettings
from meshvpn.exit.settings import exitSettings
from meshvpn.roles.common import addService, addServiceManagerHooks, buildNode
from meshvpn.roles.links import addDatagramLinks, addLinkManager, listenForLinks
from meshvpn.roles.onionrelay import addOnionRelay, publisherOptions
from meshvpn.roles.measure import addTrafficReports
from meshvpn.roles.payouts import addRelayPayouts
from meshvpn.payments.payoutsettings import relayPayoutSettings
from meshvpn.measure.settings import measureSettings, probeSettings
from meshvpn.roles.payments import addPaidExit
from meshvpn.control.options import controlSettings
from meshvpn.roles.transports import announceBridgeLine, appendOption, bridgeModeSetting, serverTransports, transportSetting


class Options(RoleOptions):
    """Options for ``twistd meshvpn-relay``."""

    role = "relay"
    synopsis = "[options]"
    longdesc = (
        "Run a MeshVPN relay: a node that carries other people's circuits. "
        "Keys are created in --data-dir on first start."
    )
    schema = commonSettings("relay", ("0.0.0.0", 9000)) + [
        Setting("listen", parseServerEndpoint, "tcp:9001", "Twisted endpoint string on which to accept links."),
        Setting("listen6", parseServerEndpoint, None,
                "A second endpoint string on which to accept links, of the other address family "
                "(e.g. tcp6:9001:interface=2001\\:db8\\:\\:1); announced beside --listen."),
        # DHT (meshvpn/dht/, doc/dht.md)
        Setting("bootstrap", parseBootstrapList, [], "Comma-separated HOST:PORT of DHT nodes to join through."),
        Setting("flags", parseFlags, "guard,middle", "Comma-separated roles this relay announces."),
        Setting("dht-republish", parseSeconds, 3600.0, "Seconds between republishing the relay descriptor."),
        Setting("dht-for-circuits", parseBool, True,
                "Carry clients' DHT requests from the circuits ending here to known DHT nodes (rate-limited; "
                "clients reading the directory through circuits need it)."),
        Setting(
            "extend-allow-private",
            parseBool,
            False,
            "Extend circuits to loopback, private and this host's own addresses (true/false); "
            "only for a test network whose relays share one machine.",
        ),
        Setting("link-transport", parseText, "tls", "Name of the pluggable transport links are accepted on (see doc/plugins.md)."),
        # Managed pluggable transports and bridges (meshvpn/link/pt/, doc/censorship.md)
        transportSetting(),
        bridgeModeSetting(),
        Setting("stun-server", parseBool, True, "Answer STUN Binding requests on the UDP socket (true/false)."),
        Setting(
            "stun-alternate",
            parseHostPort,
            None,
            "IP:PORT of a second address for RFC 5780 NAT behaviour discovery "
            "(needs --udp on a specific IP; both IP and port must differ from it).",
        ),
        # Exits (--flags with exit): meshvpn/exit/settings.py, doc/exit-policy.md
        *exitSettings(),
        # Token-gated exits (meshvpn/exit/paygate.py, doc/payments.md)
        *paymentExitSettings(),
        # VPN packet exit (meshvpn/exit/packet*.py, doc/vpn.md)
        *packetExitSettings(),
        Setting(
            "nat-relay",
            parseBool,
            False,
            "Carry datagram links and hole-punching signalling for NATed peers (true/false).",
        ),
        Setting("turn", parseHostPort, None, "IP:PORT of a TURN server (RFC 8656) for peers that cannot punch; needs --nat-relay."),
        Setting(
            "turn-tcp",
            parseHostPort,
            None,
            "IP:PORT where the TURN server also listens on TLS over TCP, for hosts whose UDP is blocked "
            "(both ends prove their node id on the TLS session, then the host allocates a relayed UDP address; "
            "clients name it NODEID@IP:PORT with this relay's node id); needs --turn.",
        ),
        # Peer-measured bandwidth (meshvpn/measure/, doc/measurement.md)
        *measureSettings(),
        *probeSettings(),
        # Payouts by measured traffic (meshvpn/payments/payout*.py, doc/measurement.md)
        *relayPayoutSettings(),
        *controlSettings(),
    ]

    def opt_transport(self, value):
        appendOption(self, "transport", value)


def makeService(options):
    settings = options.settings
    node = buildNode("relay", settings)
    transports = serverTransports(node, settings)
    links = addLinkManager(node, authenticate=True, transports=transports)
    node.status.addSource("links", links)  # refused links by cause: who is being kept out
    linkTransport = listenForLinks(node, links, settings["link_transport"], settings["listen"], transports)
    if settings["listen6"]:
        listenForLinks(node, links, settings["link_transport"], settings["listen6"], transports, name="stream6")
    from meshvpn.nat.endpoint import StunEndpoint

    # the socket's one STUN endpoint: the STUN server and the control plane's NAT check
    stunEndpoint = StunEndpoint.onSocket(node.reactor, node.udp)
    if settings["stun_server"]:
        from meshvpn.nat.server import StunServerService, checkAlternate

        try:
            checkAlternate(settings["udp"], settings["stun_alternate"])
        except ValueError as e:
            raise SystemExit(f"meshvpn-relay: config error: --stun-alternate: {e}") from None

        addService(node, "stun-server", StunServerService(node.reactor, node.udp, stunEndpoint, settings["stun_alternate"]))
    flags = parseFlags(settings["flags"])
    onion, exitParts = addOnionRelay(node, settings, flags, links)
    if settings["stun_server"] and settings["bootstrap"]:
        # Our public address as the bootstrap nodes see it: refused like the interfaces' own.
        from meshvpn.nat.publicaddr import PublicAddressProbe

        learn = node.getServiceNamed("local-addresses").learn
        addService(node, "public-address", PublicAddressProbe(node.reactor, stunEndpoint.client, settings["bootstrap"], learn))
    if attachPacketExit(node, settings, onion, exitParts) is not None:
        flags = flags | {"packet-exit"}  # so VPN clients pick this exit for packet mode
    dht = addService(node, "dht", DHTService(node, settings["bootstrap"]))
    if settings["dht_for_circuits"]:
        addDatagramRelay(node, settings, dht, onion.switch)
    addPaidExit(node, settings, onion, exitParts, dht)
    publisher = RelayPublisher(
        dht,
        flags,
        settings["dht_republish"],
        streamTransport=settings["link_transport"],
        **publisherOptions(onion, exitParts),
    )
    if settings["bridge_mode"]:
        addBridge(node, settings, dht, links, publisher, linkTransport)
    else:
        # A bridge stays unlisted: no descriptor and no traffic reports of its own.
        addService(dht, "publisher", publisher)
        addTrafficReports(node, settings, links, onion.switch, dht)
        addRelayPayouts(node, settings, dht)
        onion.onRotate.append(lambda keys: publisher.publishNow())
    if settings["nat_relay"]:
        from meshvpn.link.relayservice import NatRelayService

        if settings["turn_tcp"] and not settings["turn"]:
            raise SystemExit("meshvpn-relay: config error: --turn-tcp needs --turn")
        addService(node, "nat-relay", NatRelayService(node.reactor, addDatagramLinks(node), settings["turn"], node.addresses,
                                                      turnStreamAddress=settings["turn_tcp"], identity=node.identity))
    elif settings["turn"] or settings["turn_tcp"]:
        raise SystemExit("meshvpn-relay: config error: --turn needs --nat-relay true")
    from meshvpn.roles.control import addControl

    addControl(node, options, links=links, dht=dht, onion=onion, exitParts=exitParts, stun=stunEndpoint)
    addServiceManagerHooks(node, options, liveAppliers(node, settings, onion, exitParts, publisher))
    return node


def addDatagramRelay(node, settings, dht, switch):
    """
    DHT_SEND at the last hop of circuits ending here (L{meshvpn.onion.dhtrelay}):
    only to addresses our DHT knows as nodes (its tables, its bootstrap
    list, our own sockets), answers taken off our socket before the DHT.
    """
    from meshvpn.config import parseHostPort
    from meshvpn.onion.dhtrelay import DHTDatagramRelay, normalise

    boot = {normalise(a) for a in settings["bootstrap"]}

    def isNode(addr):
        if addr in boot:
            return True
        own = node.addresses()
        if any(normalise(parseHostPort(own[k])) == addr for k in ("udp", "udp6") if k in own):
            return True
        return any(normalise(c.address) == addr for o in dht.overlays for c in o.dht.table.contacts())

    relay = DHTDatagramRelay(node.reactor, node.udp.sendDatagram, isNode)
    dht.taps.append(relay.datagramReceived)
    switch.datagramRelay = relay
    node.status.addSource("dht_for_circuits", relay)
    return relay


def addBridge(node, settings, dht, links, publisher, linkTransport):
    """
    A bridge: its descriptor is never published; it answers its clients'
    directory questions over their links (its own descriptor, and the
    relays its C{"finder"} samples from the DHT), and writes its bridge line.
    """
    from twisted.logger import Logger

    from meshvpn.dht.service import RelayFinder
    from meshvpn.link.bridgedir import DirectoryChannel

    finder = addService(dht, "finder", RelayFinder(dht, 300.0))

    class Responder:
        def ownDescriptor(self):
            return publisher.makeDescriptor()

        def relays(self, count):
            import random

            usable = finder.usable()
            return random.sample(usable, min(count, len(usable)))

    links.setDirectoryHandler(DirectoryChannel(node.reactor, Responder()))
    announceBridgeLine(node, settings["link_transport"], linkTransport, Logger(namespace="meshvpn.bridge"))


def liveAppliers(node, settings, onion, exitParts, publisher):
    """What a SIGHUP may change on this relay (L{meshvpn.roles.relaylive})."""
    from meshvpn.roles.relaylive import exitPolicyApplier, rateApplier

    appliers = [rateApplier(exitParts.limiter if exitParts is not None else None, onion.switch.readLimiter)]
    if exitParts is not None:
        hosts = [settings["udp"][0]] + ([settings["udp6"][0]] if settings.get("udp6") else [])
        own = [h for h in hosts if h not in ("0.0.0.0", "::")]
        local = node.getServiceNamed("local-addresses")
        appliers.append(exitPolicyApplier(exitParts, publisher, own, local))
    return appliers
