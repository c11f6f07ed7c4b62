"""The client role: a node that builds circuits for its user (``twistd meshvpn-client``).

It binds the node's UDP socket (ephemeral port by default: clients are not
listed in anyone's routing table).  SOCKS and TUN attach here later.
"""

from meshvpn.config import RoleOptions, Setting, commonSettings, parseBool, parseHostPort
from meshvpn.roles.common import buildNode


class Options(RoleOptions):
    """Options for ``twistd meshvpn-client``."""

    role = "client"
    synopsis = "[options]"
    longdesc = "Run a MeshVPN client. Keys are created in --data-dir on first start."
    schema = commonSettings("client", ("0.0.0.0", 0)) + [
        Setting("socks-listen", parseHostPort, ("127.0.0.1", 1080), "HOST:PORT of the SOCKS5 server for applications."),
        Setting(
            "socks-allow-remote",
            parseBool,
            False,
            "Allow socks-listen on a non-loopback address (anyone reaching it uses your circuits).",
            flag=True,
        ),
    ]

    def postOptions(self):
        super().postOptions()
        from meshvpn.client.socks import checkListenAddress

        checkListenAddress(self.settings["socks_listen"][0], self.settings["socks_allow_remote"])


def makeService(options):
    from meshvpn.link.service import attachLinks

    node = buildNode("client", options.settings)
    attachLinks(node, authenticate=False)
    return node
