"""What a relay runs of the onion plane: the switch, its onion keys, and, for exits, the edge.

Called from the relay role's C{makeService}.  The switch takes every cell of
the node's links; EXTEND2 opens links through the link manager, never to
this host's own addresses (the C{"local-addresses"} service, shared with an
exit's policy) or private ones unless the test-network opt-in is set; an
exit's switch ends streams at the exit's connector and resolver.  The descriptor
publisher is told the onion keys (republishing on rotation) and the exit
policy summary.

A relay started by a test may be told to attack the circuits it carries
(L{meshvpn.onion.hostile}); only the process environment tests set can do
that, never a setting (L{addHostility}).
"""

import os

import attrs

from meshvpn.dht.descriptor import IPV6_EXIT
from meshvpn.dht.service import onionKeysFromRing
from meshvpn.localaddrs import LocalAddresses
from meshvpn.onion.service import OnionService, linkManagerConnector
from meshvpn.onion.nexthop import NextHopWatch
from meshvpn.onion.switch import SwitchLimits
from meshvpn.roles.common import addService

NOT_AN_EXIT = "reject 1-65535"


def addOnionRelay(node, settings, flags, links):
    """
    The relay's C{"onion"} service, taking every cell of C{links} (the
    node's L{ILinkManager}) and extending circuits through it.

    @return: C{(onion service, exit parts or None)}.
    """
    edge, exitParts = None, None
    host = settings["udp"][0]
    hosts = [host] + ([settings["udp6"][0]] if settings.get("udp6") else [])  # a dual-stack relay has two
    local = addService(node, "local-addresses", LocalAddresses(node.reactor, configured=hosts))
    if "exit" in flags:
        from meshvpn.exit.settings import buildExit
        from meshvpn.exit.streams import ExitStreamEdge

        own = [h for h in hosts if h not in ("0.0.0.0", "::")]
        exitParts = buildExit(node.reactor, settings, ownAddresses=own, localAddresses=local)
        edge = ExitStreamEdge(exitParts)
        node.status.addSource("exit", exitParts)
    limits = SwitchLimits(extendAllowPrivate=settings.get("extend_allow_private", False))
    readLimiter = None
    if settings.get("bandwidth_rate") or settings.get("circuit_rate"):
        from meshvpn.onion.readlimit import LinkReadLimiter

        readLimiter = LinkReadLimiter(
            node.reactor, settings["bandwidth_rate"], settings["bandwidth_burst"],
            settings["circuit_rate"], settings["circuit_burst"],
        )
        node.status.addSource("bandwidth", readLimiter)
    onion = OnionService(
        node.reactor, node.identity, node.dataDir, relay=True, connector=linkManagerConnector(links), edge=edge,
        limits=limits, readLimiter=readLimiter, localAddresses=local,
    )
    addHostility(node, settings, onion)
    links.setCellHandler(onion.switch)
    # a suspected link to a next hop is told to every circuit through it (meshvpn.onion.nexthop)
    nextHops = NextHopWatch(onion.switch)
    links.addLivenessObserver(nextHops)
    addService(node, "onion", onion)
    node.status.addSource("onion", onion.switch)
    node.status.addSource("next-hops", nextHops)
    return onion, exitParts


def addHostility(node, settings, onion):
    """
    Test tooling only: with C{MESHVPN_TESTING=1} and C{MESHVPN_TEST_HOSTILE=PLAN}
    in its environment and a loopback or benchmark-network address, the
    relay follows PLAN (L{meshvpn.onion.hostile}) and appends what it could
    read to C{DATA_DIR/hostile-view.bin}.  No config key or flag does this.
    """
    from meshvpn.onion.hostile import VIEW_FILE, PlanError, fromEnvironment, installHostile

    try:
        plan = fromEnvironment(settings["udp"][0])
    except PlanError as e:
        raise SystemExit(f"meshvpn-relay: {e}") from None
    if plan is None:
        return None
    if plan.view is None:
        plan = attrs.evolve(plan, view=os.path.join(node.dataDir, VIEW_FILE))
    hostility = installHostile(onion.switch, plan, node.reactor)
    node.status.addSource("hostile", hostility)
    return hostility


def publisherOptions(onion, exitParts):
    """Keyword arguments for the L{RelayPublisher} of a relay with this onion service."""
    return {
        "onionKeys": onionKeysFromRing(onion.keyRing, onion.lifetime),
        "exitPolicy": exitParts.policy.summary() if exitParts is not None else NOT_AN_EXIT,
        "handshakes": onion.switch.advertisedHandshakes() + ((IPV6_EXIT,) if exitParts is not None and exitParts.ipv6 else ()),
    }
