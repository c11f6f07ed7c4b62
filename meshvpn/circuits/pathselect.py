"""Path selection: which guard, middle and exit a circuit goes through.

The rules are Tor's, kept simple: three distinct relays, no two in the same
IPv4 /16 (IPv6 /32) and none declaring another as family (either side's
declaration counts, which is stricter than Tor's mutual rule: a lie can only
shrink the choice, never put two of one operator's relays on one path); the
exit chosen first, among exits whose policy fits the target; relays weighted
by advertised bandwidth, capped so one relay cannot claim all the traffic.
Guards persist across restarts (L{GuardSet}) so a client does not expose
itself to a fresh sample of guards every time it starts.
"""

import ipaddress
import json
import os
import random

import attrs

from meshvpn.errors import NoExitForTarget, NoPath
from meshvpn.hostport import formatHostPort
from meshvpn.secretfile import writeSecretFile

# One relay's weight is capped, so a relay that advertises absurd bandwidth
# gains at most this much weight (advertised numbers are unverified).
MAX_WEIGHT = 100_000_000  # bytes/s

GUARD_LIFETIME_S = 60 * 86400  # Tor rotates guards after roughly 2-3 months
GUARD_RETRY_S = 600  # an unreachable guard is tried again after this
SAMPLED_GUARDS = 3


@attrs.frozen
class RelayInfo:
    """What path selection needs to know of a relay (built from its descriptor)."""

    nodeId: bytes
    host: str
    roles: frozenset
    family: frozenset = frozenset()  # node ids (bytes) the relay declares as its family
    bandwidth: int = 0
    exitAccepts: object = None  # callable(target) -> bool, for exits
    descriptor: object = None

    def subnet(self):
        """The /16 (IPv4) or /32 (IPv6) network this relay sits in."""
        addr = ipaddress.ip_address(self.host)
        prefix = 16 if addr.version == 4 else 32
        return ipaddress.ip_network(f"{addr}/{prefix}", strict=False)


def related(a, b):
    """Two relays that must not share a path."""
    return (
        a.nodeId == b.nodeId
        or a.subnet() == b.subnet()
        or a.nodeId in b.family
        or b.nodeId in a.family
    )


def _weighted(rng, candidates):
    weights = [min(max(c.bandwidth, 1), MAX_WEIGHT) for c in candidates]
    return rng.choices(candidates, weights=weights, k=1)[0]


def _fits(relay, chosen):
    return not any(related(relay, other) for other in chosen)


def choosePath(relays, target=None, guard=None, rng=None, exclude=(), packets=False):
    """
    Choose C{[guard, middle, exit]}.

    @param relays: L{RelayInfo}s known from the directory.
    @param target: C{(host, port)} the exit must accept, or C{None} (packet
        mode: any exit).
    @param guard: the L{RelayInfo} to use as guard (from L{GuardSet}), or
        C{None} to pick one among relays with the guard role.
    @param exclude: node ids not to use (e.g. a hop that just failed).
    @param packets: the circuit carries IP packets (VPN mode): only exits
        announcing C{packet-exit} will do.
    @raise NoPath: no combination satisfies the rules.
    """
    rng = rng or random.SystemRandom()
    usable = [r for r in relays if r.nodeId not in exclude]
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
    exit = _weighted(rng, exits)
    chosen.append(exit)
    if guard is None:
        guards = [r for r in usable if "guard" in r.roles and _fits(r, chosen)]
        if not guards:
            raise NoPath("no guard fits beside the chosen exit")
        guard = _weighted(rng, guards)
        chosen.append(guard)
    middles = [r for r in usable if "middle" in r.roles and _fits(r, chosen)]
    if not middles:
        raise NoPath("no middle relay fits beside the guard and exit (distinct /16 and family)")
    middle = _weighted(rng, middles)
    return [guard, middle, exit]


def _describe(target):
    return "any target" if target is None else formatHostPort(*target)


class GuardSet:
    """
    The client's persistent guards, in C{DATA_DIR/guards.json}: a small
    sample of guard relays kept for L{GUARD_LIFETIME_S}; the first one that is
    listed and not marked down is used.
    """

    def __init__(self, path, clock, rng=None):
        self.path = path
        self.clock = clock
        self.rng = rng or random.SystemRandom()
        self.entries = []  # dicts: node_id (hex), added (s), down_until (s)
        self._load()

    def _load(self):
        try:
            with open(self.path) as f:
                data = json.load(f)
            entries = [e for e in data["guards"] if isinstance(e.get("node_id"), str) and isinstance(e.get("added"), (int, float))]
        except (FileNotFoundError, ValueError, KeyError, TypeError, AttributeError):
            entries = []  # a missing or damaged guard file only costs a fresh sample
        self.entries = entries

    def _save(self):
        writeSecretFile(self.path, json.dumps({"guards": self.entries}).encode())

    def choose(self, relays):
        """
        @param relays: known L{RelayInfo}s.
        @return: the guard to use, or C{None} if none is known with the guard role.
        """
        now = self.clock.seconds()
        byId = {r.nodeId.hex(): r for r in relays if "guard" in r.roles}
        before = list(self.entries)
        self.entries = [e for e in self.entries if now - e["added"] < GUARD_LIFETIME_S]
        while len([e for e in self.entries if e["node_id"] in byId]) < SAMPLED_GUARDS:
            fresh = [r for h, r in byId.items() if h not in {e["node_id"] for e in self.entries}]
            if not fresh:
                break
            pick = _weighted(self.rng, fresh)
            self.entries.append({"node_id": pick.nodeId.hex(), "added": now, "down_until": 0})
        if self.entries != before:
            self._save()
        for e in self.entries:
            if e["node_id"] in byId and e.get("down_until", 0) <= now:
                return byId[e["node_id"]]
        return None

    def markDown(self, nodeId):
        """The guard could not be reached: skip it for L{GUARD_RETRY_S}."""
        for e in self.entries:
            if e["node_id"] == nodeId.hex():
                e["down_until"] = self.clock.seconds() + GUARD_RETRY_S
        self._save()

    def guardIds(self):
        return [bytes.fromhex(e["node_id"]) for e in self.entries]
