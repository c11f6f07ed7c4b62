"""The client role: a node that builds circuits for its user (``twistd meshvpn-client``).

It binds the node's UDP socket (ephemeral port by default: clients are not
listed in anyone's routing table).  SOCKS and TUN attach here later.
"""

from meshvpn.config import RoleOptions, commonSettings
from meshvpn.roles.common import buildNode


class Options(RoleOptions):
    """Options for ``twistd meshvpn-client``."""

    role = "client"
    synopsis = "[options]"
    longdesc = "Run a MeshVPN client. Keys are created in --data-dir on first start."
    schema = commonSettings("client", ("0.0.0.0", 0))


def makeService(options):
    from meshvpn.link.service import attachLinks

    node = buildNode("client", options.settings)
    attachLinks(node, authenticate=False)
    return node
