"""What every role's makeService does: load keys (or stop with one clear line), add named services."""

from meshvpn.errors import KeyFileError
from meshvpn.roles.node import Node
from meshvpn.roles.sigterm import CleanStopOnSIGTERM


def buildNode(role, settings, reactor=None):
    if reactor is None:
        from twisted.internet import reactor
    try:
        node = Node(reactor, role, settings)
    except KeyFileError as e:
        # Before the reactor runs: twistd prints this one line and exits 1.
        raise SystemExit(f"meshvpn-{role}: {e}") from None
    addService(node, "sigterm", CleanStopOnSIGTERM(reactor))
    return node


def addService(parent, name, child):
    """
    Add C{child} to C{parent} as C{name}, so tests and tools reach it with
    C{parent.getServiceNamed(name)}.  @return: C{child}.
    """
    child.setName(name)
    child.setServiceParent(parent)
    return child
