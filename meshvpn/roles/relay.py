"""The relay role: a node others route through (``twistd meshvpn-relay``).

It binds the node's UDP socket and a stream listening port for links.
Later subsystems (DHT, STUN server, link handshake, circuits) attach here.
"""

from meshvpn.config import RoleOptions, Setting, commonSettings, parseServerEndpoint, parseText
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
        Setting("link-transport", parseText, "tls", "Name of the pluggable transport links are accepted on (see doc/plugins.md)."),
    ]


def makeService(options):
    from meshvpn.link.service import attachLinks, listenForLinks

    node = buildNode("relay", options.settings)
    attachLinks(node, authenticate=True)
    listenForLinks(node, options.settings["link_transport"], options.settings["listen"])
    return node
