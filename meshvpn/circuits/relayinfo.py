"""From a verified relay descriptor to what path selection and circuit building need.

The descriptor is the DHT's format; path selection wants every link host
(for the /16 rule), roles, family, bandwidth and an exit-policy check; circuit
building wants the onion key valid now and the link addresses.  Keeping
the translation here leaves both sides ignorant of the other's format.
"""

from meshvpn.exit.policy import summaryAllows
from meshvpn.onion.origin import HopSpec
from meshvpn.circuits.pathselect import RelayInfo


def _host(address):
    host, _, _port = address.rpartition(":")
    return host.strip("[]")


def relayInfo(descriptor):
    """@return: a L{RelayInfo}, or C{None} for a relay with no link address."""
    links = descriptor.linkAddresses
    if not links:
        return None
    summary = descriptor.exitPolicy
    exitAccepts = None
    if "exit" in descriptor.flags:
        exitAccepts = lambda target: summaryAllows(summary, target[1])  # noqa: E731
    return RelayInfo(
        nodeId=descriptor.nodeId,
        host=_host(links[0][1]),
        hosts=tuple(_host(address) for _, address in links),  # the /16 rule sees every address the client may dial
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
    return HopSpec(nodeId=d.nodeId, onionKey=key, transports=tuple(f"{t} {a}" for t, a in d.linkAddresses))
