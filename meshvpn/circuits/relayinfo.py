"""From a verified relay descriptor to what path selection and circuit building need.

The descriptor is the DHT's format; path selection wants every link host
(for the /16 rule), roles, family, bandwidth and an exit-policy check; circuit
building wants the onion key valid now and the link addresses.  Keeping
the translation here leaves both sides ignorant of the other's format.
"""

from meshvpn.dht.descriptor import IPV6_EXIT
from meshvpn.dht.policysummary import summaryAllows
from meshvpn.errors import NoPath
from meshvpn.hostport import HostPortError, parseIPPort
from meshvpn.onion.origin import HopSpec
from meshvpn.circuits.pathselect import RelayInfo, choosePath


def relayInfo(descriptor, weights=None):
    """
    @param weights: an L{meshvpn.interfaces.IRelayWeights}, or C{None}
        (no measurement: path selection stays uniform).
    @return: a L{RelayInfo}, or C{None} for a relay no path can use: no link
        address, or one that is not C{IP:PORT} (the /16 rule needs an IP for
        every address the client may dial).
    """
    links = descriptor.linkAddresses
    if not links:
        return None
    try:
        # a managed transport's address (a bridge's) carries its arguments after HOST:PORT
        hosts = tuple(parseIPPort(address.split(" ", 1)[0], allowZero=False)[0] for _, address in links)
    except HostPortError:
        return None  # a host name: no /16 to place it in, so no path may use it
    summary = descriptor.exitPolicy
    exitAccepts = None
    if "exit" in descriptor.flags:
        ipv6 = IPV6_EXIT in descriptor.handshakes

        def exitAccepts(target):
            # an IPv6 literal goes only to an exit that says it carries IPv6
            # (the summary is of ports, for IPv4; a name may resolve to either)
            if not ipv6 and ":" in str(target[0]):
                return False
            return summaryAllows(summary, target[1])
    measured = weights.measurement(descriptor.nodeId) if weights is not None else None
    return RelayInfo(
        nodeId=descriptor.nodeId,
        weight=measured.weight if measured is not None else None,
        measuredFlags=measured.flags if measured is not None else frozenset(),
        host=hosts[0],
        hosts=hosts,  # the /16 rule sees every address the client may dial
        roles=frozenset(descriptor.flags),
        family=frozenset(descriptor.family),
        bandwidth=descriptor.bandwidth,
        exitAccepts=exitAccepts,
        descriptor=descriptor,
    )


def hopSpec(relay, now):
    """
    @return: the L{HopSpec} to extend to C{relay} (a L{RelayInfo}).
    @raise ValueError: the descriptor lists no onion key valid at C{now}.
    """
    d = relay.descriptor
    key = d.currentOnionKey(now)
    if key is None:
        raise ValueError(f"relay {d.nodeId.hex()[:16]} has no onion key valid now")
    return HopSpec(nodeId=d.nodeId, onionKey=key, transports=tuple(f"{t} {a}" for t, a in d.linkAddresses),
                   handshakes=d.handshakes)


def pathPossible(descriptors, packets=False, tries=3):
    """
    Whether a path (guard, middle, exit; with C{packets}, a packet exit) can
    be built from C{descriptors} under the path rules.  Path selection is
    random, so a few tries decide; a rare false "no" only means asking the
    directory again sooner.
    """
    relays = [r for r in (relayInfo(d) for d in descriptors) if r is not None]
    if len(relays) < 3:
        return False
    for _ in range(tries):
        try:
            choosePath(relays, packets=packets)
            return True
        except (NoPath, ValueError):
            continue
    return False
