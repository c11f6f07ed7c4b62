"""What every role's makeService does first: load keys, or stop with one clear line."""

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
    CleanStopOnSIGTERM(reactor).setServiceParent(node)
    return node
