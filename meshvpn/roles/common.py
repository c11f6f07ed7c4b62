"""What every role's makeService does: load keys (or stop with one clear line), add named services,
tell systemd how it is doing and reload on SIGHUP."""

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


def addServiceManagerHooks(node, options, appliers=()):
    """
    Readiness for systemd (L{meshvpn.roles.readiness}) and SIGHUP reload
    (L{meshvpn.roles.reload}) of the log level plus C{appliers}; the log
    level of C{options} applies from now.
    """
    from meshvpn import logoutput
    from meshvpn.roles.readiness import SystemdNotifier
    from meshvpn.roles.reload import ReloadOnSIGHUP, logLevelApplier

    logoutput.setLevel(options.settings["log_level"])
    addService(node, "systemd", SystemdNotifier(node.reactor, node))
    return addService(node, "reload", ReloadOnSIGHUP(node.reactor, options, [logLevelApplier(), *appliers]))
