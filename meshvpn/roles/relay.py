"""The relay role: a node others route through (``twistd meshvpn-relay``).

It binds the node's UDP socket and a stream listening port for links.
Later subsystems (DHT, STUN server, link handshake, circuits) attach here.
"""

from meshvpn.config import RoleOptions, Setting, commonSettings, parseServerEndpoint
from meshvpn.dht.service import DHTService, RelayPublisher, parseBootstrapList, parseFlags, parseSeconds
from meshvpn.roles.common import buildNode


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
        # DHT (meshvpn/dht/, doc/dht.md)
        Setting("bootstrap", parseBootstrapList, [], "Comma-separated HOST:PORT of DHT nodes to join through."),
        Setting("flags", parseFlags, frozenset({"guard", "middle"}), "Comma-separated roles this relay announces."),
        Setting("dht-republish", parseSeconds, 3600.0, "Seconds between republishing the relay descriptor."),
    ]


def makeService(options):
    node = buildNode("relay", options.settings)
    node.listenStream(options.settings["listen"])
    dht = DHTService(node, options.settings["bootstrap"])
    dht.setServiceParent(node)
    RelayPublisher(dht, options.settings["flags"], options.settings["dht_republish"]).setServiceParent(dht)
    return node
