"""The relay role: a node others route through (``twistd meshvpn-relay``).

It binds the node's UDP socket and a stream listening port for links.
Later subsystems (DHT, STUN server, link handshake, circuits) attach here.
"""

from meshvpn.config import RoleOptions, Setting, commonSettings, parseServerEndpoint
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
    ]


def makeService(options):
    node = buildNode("relay", options.settings)
    node.listenStream(options.settings["listen"])
    return node
