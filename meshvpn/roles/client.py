"""The client role: a node that builds circuits for its user (``twistd meshvpn-client``).

It binds the node's UDP socket (ephemeral port by default: clients are not
listed in anyone's routing table).  SOCKS and TUN attach here later.
"""

from meshvpn.config import RoleOptions, Setting, commonSettings, parseBool, parseHostPort, parsePositiveInt
from meshvpn.dht.service import DHTService, RelayFinder, parseBootstrapList, parseSeconds
from meshvpn.roles.common import buildNode
from meshvpn.client.vpn import attachTun, tunSettings
from meshvpn.client.meshlink import attachMeshLinks, meshSettings
from meshvpn.circuits.relayinfo import pathPossible
from meshvpn.roles.onionclient import attachOnionClient
from meshvpn.control.options import controlSettings


class Options(RoleOptions):
    """Options for ``twistd meshvpn-client``."""

    role = "client"
    synopsis = "[options]"
    longdesc = "Run a MeshVPN client. Keys are created in --data-dir on first start."
    schema = commonSettings("client", ("0.0.0.0", 0)) + [
        # DHT (meshvpn/dht/, doc/dht.md): a client queries in client mode and is never in others' tables.
        Setting("bootstrap", parseBootstrapList, [], "Comma-separated HOST:PORT of DHT nodes to join through."),
        Setting("dht-sample-interval", parseSeconds, 300.0,
                "Max seconds between samplings of the relay directory (sooner while it cannot build a path)."),
        Setting("circuits-spare", parsePositiveInt, 1, "Circuits kept built ahead of need."),
        Setting("socks-listen", parseHostPort, ("127.0.0.1", 1080), "HOST:PORT of the SOCKS5 server for applications."),
        Setting(
            "socks-allow-remote",
            parseBool,
            False,
            "Allow socks-listen on a non-loopback address (anyone reaching it uses your circuits).",
            flag=True,
        ),
        # VPN mode (meshvpn/client/tun*.py, doc/vpn.md)
        *tunSettings(),
        *meshSettings(),
        *controlSettings(),
    ]

    def postOptions(self):
        super().postOptions()
        from meshvpn.client.socks import checkListenAddress

        checkListenAddress(self.settings["socks_listen"][0], self.settings["socks_allow_remote"])


def makeService(options):
    from meshvpn.link.service import attachLinks
    from meshvpn.nat.endpoint import StunEndpoint
    from meshvpn.roles.control import addControl

    node = buildNode("client", options.settings)
    attachLinks(node, authenticate=False)
    dht = DHTService(node, options.settings["bootstrap"], clientMode=True)
    dht.setServiceParent(node)
    # Sampled quickly until a path can be built (a VPN needs a packet exit), then every --dht-sample-interval.
    packets = options.settings["tun"] and options.settings["tun_capture"]
    finder = RelayFinder(dht, options.settings["dht_sample_interval"], enough=lambda ds: pathPossible(ds, packets))
    finder.setServiceParent(dht)
    circuits = attachOnionClient(node, options.settings, finder)
    tun = attachTun(node, options.settings, finder)
    attachMeshLinks(node, options.settings)
    addControl(node, options, links=node.links, dht=dht, finder=finder, circuits=circuits, tun=tun,
               stun=StunEndpoint.onNode(node))
    return node
