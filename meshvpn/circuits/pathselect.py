"""Path selection: which guard, middle and exit a circuit goes through.

The rules are Tor's, kept simple: three distinct relays, no two in the same
IPv4 /16 (IPv6 /32) and none declaring another as family (either side's
declaration counts, which is stricter than Tor's mutual rule: a lie can only
shrink the choice, never put two of one operator's relays on one path); the
exit chosen first, among exits whose policy fits the target.

Nothing a relay says about itself buys it a larger share of paths:

- relays are chosen in proportion to their *measured* weight: what the
  other relays' signed traffic reports confirm (L{meshvpn.measure}; the
  bandwidth a relay announces is its own unverified claim and is never
  used).  A relay the reports do not measure yet (new, or before the
  first epoch) counts as L{UNMEASURED_SHARE} of the median measured
  weight, so it gets enough traffic to be measured but a flood of new
  identities gains little; with no measurement at all, every relay counts
  once (uniform), so an attacker's share of paths is its share of relays;
- once some guards have earned the measured C{guard} flag (a long enough
  streak of service and at least the median bandwidth), only those are
  chosen as guards;
- a relay sits in every network it lists an address in, not only the first
  one (the descriptor's order is the attacker's to choose, so a decoy listed
  first used to hide where the relay really is).  A relay listing a name
  instead of an address cannot be placed (the name resolves wherever its
  owner likes) and is never used.

Which guard a client uses is L{meshvpn.circuits.guards}' decision.
"""

import bisect
import ipaddress
import random

import attrs

from meshvpn.errors import NoExitForTarget, NoPath
from meshvpn.hostport import formatHostPort

UNMEASURED_SHARE = 0.2


def networksOf(hosts):
    """
    The /16 (IPv4) and /32 (IPv6) networks C{hosts} sit in.

    @return: a frozenset of networks, or C{None} if a host is not an IP
        address literal (it cannot be placed) or there is none.
    """
    nets = set()
    for host in hosts:
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return None
        if addr.version == 6 and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped  # ::ffff:a.b.c.d is a.b.c.d, not a neighbour of every mapped address
        if addr.version == 6 and addr.sixtofour is not None:
            nets.add(ipaddress.ip_network(f"{addr.sixtofour}/16", strict=False))  # 2002:ab:cd:: tunnels to a.b.c.d
        prefix = 16 if addr.version == 4 else 32
        nets.add(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))
    return frozenset(nets) or None


@attrs.frozen
class RelayInfo:
    """
    What path selection needs to know of a relay (built from its descriptor).

    C{host} is the relay's first address (for display); C{hosts} every host
    the client may dial it at (C{(host,)} when empty).  C{networks} is
    derived from them: the networks the relay sits in, or C{None} when one
    cannot be placed.
    """

    nodeId: bytes
    host: str
    roles: frozenset
    family: frozenset = frozenset()  # node ids (bytes) the relay declares as its family
    bandwidth: int = 0  # announced, unverified: shown, never used to choose
    exitAccepts: object = None  # callable(target) -> bool, for exits
    descriptor: object = None
    hosts: tuple = ()
    weight: object = None  # measured path weight (int), or None if the reports do not measure it
    measuredFlags: frozenset = frozenset()  # earned from the reports: "measured", "fast", "guard"
    networks: object = attrs.field(init=False, eq=False, repr=False)

    @networks.default
    def _networks(self):
        return networksOf(self.hosts or (self.host,))

    @property
    def placeable(self):
        return self.networks is not None


def related(a, b):
    """Two relays that must not share a path (unplaceable relays share none)."""
    if a.nodeId == b.nodeId or a.nodeId in b.family or b.nodeId in a.family:
        return True
    if a.networks is None or b.networks is None:
        return True
    return not a.networks.isdisjoint(b.networks)


def _fits(relay, chosen):
    return not any(related(relay, other) for other in chosen)


def weighted(candidates, rng):
    """
    One of C{candidates}, drawn by measured weight (uniformly when none is
    measured); an unmeasured one weighs L{UNMEASURED_SHARE} of the median
    measured weight.
    """
    measured = sorted(r.weight for r in candidates if r.weight)
    if not measured:
        return rng.choice(candidates)
    unmeasured = max(1, measured[(len(measured) - 1) // 2] * UNMEASURED_SHARE)
    cum = []
    total = 0
    for r in candidates:
        total += r.weight if r.weight else unmeasured
        cum.append(total)
    return candidates[min(bisect.bisect_right(cum, rng.random() * total), len(candidates) - 1)]


def choosePath(relays, target=None, guard=None, rng=None, exclude=(), packets=False):
    """
    Choose C{[guard, middle, exit]}, each by measured weight among the relays that fit.

    @param relays: L{RelayInfo}s known from the directory.
    @param target: C{(host, port)} the exit must accept, or C{None} (packet
        mode: any exit).
    @param guard: the L{RelayInfo} to use as guard (from the client's
        L{meshvpn.circuits.guards.GuardSet}), or C{None} to pick one among
        relays with the guard role.
    @param exclude: node ids not to use (e.g. a hop that just failed).
    @param packets: the circuit carries IP packets (VPN mode): only exits
        announcing C{packet-exit} will do.
    @raise NoPath: no combination satisfies the rules.
    """
    rng = rng or random.SystemRandom()
    usable = [r for r in relays if r.nodeId not in exclude and r.placeable]
    chosen = [guard] if guard is not None else []
    exits = [
        r
        for r in usable
        if "exit" in r.roles and (not packets or "packet-exit" in r.roles) and _fits(r, chosen) and (target is None or (r.exitAccepts is None or r.exitAccepts(target)))
    ]
    if not exits:
        if target is not None and any("exit" in r.roles for r in usable):
            raise NoExitForTarget(f"no exit's policy accepts {_describe(target)}")
        if packets:
            raise NoPath("no exit announces packet-exit (VPN mode)")
        raise NoPath(f"no exit fits among {len(usable)} known relays")
    exit = weighted(exits, rng)
    chosen.append(exit)
    if guard is None:
        guards = [r for r in usable if "guard" in r.roles and _fits(r, chosen)]
        if not guards:
            raise NoPath("no guard fits beside the chosen exit")
        guard = weighted([g for g in guards if "guard" in g.measuredFlags] or guards, rng)
        chosen.append(guard)
    middles = [r for r in usable if "middle" in r.roles and _fits(r, chosen)]
    if not middles:
        raise NoPath("no middle relay fits beside the guard and exit (distinct /16 and family)")
    middle = weighted(middles, rng)
    return [guard, middle, exit]


def _describe(target):
    return "any target" if target is None else formatHostPort(*target)
