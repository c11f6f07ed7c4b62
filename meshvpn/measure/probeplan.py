"""Who probes whom, and when: the epoch's probe plan, the same on every node that knows the same relays.

Active capacity probes (doc/measurement.md, *Active capacity probes*)
need each relay probed by a team of measurers that neither the relay nor
its friends choose.  The plan is a pure function of the epoch, a seed and
the candidates (node id, vote, /16, family), so a relay computes which
targets it must probe and which measurers it must echo to, and a client
computes which readings to believe, without talking to anyone.

The team of a target is drawn per pair: every candidate measurer M gets
the key C{-ln(u) / vote(M)}, with C{u} read off
C{SHA-256(domain | seed | epoch | target | M)}, and the
L{TEAM_SIZE} smallest keys form the team (a weighted draw without
replacement, Efraimidis and Spirakis).  Because each key depends only on
the pair, two nodes whose directories differ by a few relays still agree
on every team those relays would not have entered: a disagreement loses a
reading (a client drops readings from measurers its plan does not
assign), it never admits a foreign one.  A relay is never in its own team,
nor in that of a relay sharing its IPv4 /16 (IPv6 /32) or naming it (or
named by it) as family.

The slot, one for the whole network (the bench's model holds with one
slot and not with several: doc/measurement.md), starts at a point of the
epoch read off the same hash.  What it can be ground by: the seed is
public ahead of time (the network passes none, so it is the epoch
alone), so an identity key can be ground offline to land in a chosen
target's team in a chosen epoch: each epoch's draw is independent, so one
key buys seats in a few epochs, not all of them, and a liar needs three
seats of five to move the lower median.  Mixing in the hash of the
agreed weights of an earlier epoch (L{planSeed}) leaves grinding to
reporters withholding reports, a bit each.
"""

import hashlib
import ipaddress
import math
import struct

import attrs

DOMAIN = b"meshvpn-probe-plan-v1\x00"
TEAM_SIZE = 5
# A target echoes any measurer whose key is within its first TEAM_SIZE + ECHO_SLACK
# keys, the measurer known to its directory or not: a measurer and a target whose
# directories differ by a relay or two still agree that the probe is wanted
# (without it, in a real six-relay testnet, a target refused measurers its
# directory ranked sixth and the probe read 0).  Clients keep TEAM_SIZE.
ECHO_SLACK = 2
SLOT_FROM = 0.2  # the slot starts between this fraction of the epoch ...
SLOT_UNTIL = 0.85  # ... and ends by this one (reports go out at the epoch's end)


@attrs.frozen
class Candidate:
    """One relay as the plan sees it."""

    nodeId: bytes
    vote: float = 1.0  # agreed weight, or 1: one vote per relay
    subnet: str = ""  # "/16 or /32" of its address ("" : none, or loopback: shares with nobody)
    family: frozenset = frozenset()  # node ids it names as family


@attrs.frozen
class Plan:
    epoch: int
    slotStart: float  # seconds after the epoch's start
    slotLength: float
    teams: dict  # target node id -> tuple of measurer node ids (smallest key first)
    seed: bytes = b""
    echoBound: dict = attrs.Factory(dict)  # target node id -> the largest key it echoes (see ECHO_SLACK)

    def targetsOf(self, measurer):
        """The targets C{measurer} must probe this epoch, sorted."""
        return sorted(t for t, team in self.teams.items() if measurer in team)

    def assigned(self, measurer, target):
        return measurer in self.teams.get(target, ())

    def echoes(self, measurer, target):
        """
        Whether C{target} echoes C{measurer}: it is in the team, or its key
        (one vote: it may be missing from the target's directory) is within
        the target's first C{TEAM_SIZE + ECHO_SLACK} keys.  Never the target
        itself; an unknown measurer's /16 and family cannot be checked.
        """
        if measurer == target:
            return False
        if self.assigned(measurer, target):
            return True
        bound = self.echoBound.get(target)
        return bound is not None and keyOf(self.seed, self.epoch, target, measurer, 1.0) <= bound


def subnetOf(host):
    """
    The network a relay's address puts it in for the plan: the IPv4 /16 or
    IPv6 /32; C{""} for loopback, private test addresses and anything
    unparsable (a test network of one machine shares no subnet).
    """
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return ""
    if ip.is_loopback or ip.is_link_local or ip.is_unspecified:
        return ""
    prefix = 16 if ip.version == 4 else 32
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def planSeed(weightsDigest=b""):
    """The seed of the plan: the digest of agreed weights when a network has them, else nothing."""
    return bytes(weightsDigest)


def _unit(seed, epoch, target, measurer):
    h = hashlib.sha256(DOMAIN + struct.pack("!H", len(seed)) + seed + struct.pack("!I", epoch) + target
                       + measurer).digest()
    # 53 bits, never 0: -ln(u) is finite
    return ((int.from_bytes(h[:8], "big") >> 11) + 1) / float(2**53 + 1)


def keyOf(seed, epoch, target, measurer, vote):
    """The measurer's key for the target's team: the smallest keys are drawn."""
    return -math.log(_unit(seed, epoch, target, measurer)) / vote


def slotStart(seed, epoch, epochLength, slotLength):
    """Seconds after the epoch's start at which the network's probe slot opens."""
    slotLength = min(slotLength, epochLength * (SLOT_UNTIL - SLOT_FROM))
    room = epochLength * (SLOT_UNTIL - SLOT_FROM) - slotLength
    return epochLength * SLOT_FROM + room * _unit(seed, epoch, b"slot", b"")


def excluded(a, b):
    """Whether C{a} may not measure C{b} (or the other way round): the same node, /16 or family."""
    if a.nodeId == b.nodeId:
        return True
    if a.subnet and a.subnet == b.subnet:
        return True
    return a.nodeId in b.family or b.nodeId in a.family


def makePlan(epoch, epochLength, slotLength, candidates, seed=b"", teamSize=TEAM_SIZE, slack=ECHO_SLACK):
    """
    The probe plan of C{epoch}.

    @param candidates: L{Candidate}s (any order; duplicates of a node id
        keep the first); a vote of 0 or less never measures.
    @return: a L{Plan}: every candidate a target, with at most C{teamSize}
        measurers.
    """
    byId = {}
    for c in candidates:
        byId.setdefault(bytes(c.nodeId), c)
    ordered = [byId[k] for k in sorted(byId)]
    teams, bounds = {}, {}
    for target in ordered:
        keyed = []
        for m in ordered:
            if m.vote <= 0 or not math.isfinite(m.vote) or excluded(m, target):
                continue
            keyed.append((keyOf(seed, epoch, target.nodeId, m.nodeId, m.vote), m.nodeId))
        keyed.sort()
        teams[target.nodeId] = tuple(n for _, n in keyed[:teamSize])
        # with fewer candidates than the slack covers, any key is close enough
        bounds[target.nodeId] = keyed[teamSize + slack - 1][0] if len(keyed) >= teamSize + slack else math.inf
    slotLength = min(float(slotLength), epochLength * (SLOT_UNTIL - SLOT_FROM))
    return Plan(epoch, slotStart(seed, epoch, epochLength, slotLength), slotLength, teams, bytes(seed), bounds)


def candidatesFrom(descriptors, votes=None):
    """
    L{Candidate}s from relay descriptors (L{meshvpn.dht.descriptor.RelayDescriptor}).

    @param votes: C{{nodeId: agreed weight}} or C{None}: one vote per relay.
    """
    out = []
    for d in descriptors:
        hosts = [a.rsplit(":", 1)[0] for t, a in d.addresses if t != "udp"]
        subnet = min((s for s in map(subnetOf, hosts) if s), default="")
        vote = 1.0 if votes is None else float(votes.get(d.nodeId, 0.0))
        out.append(Candidate(d.nodeId, vote, subnet, frozenset(d.family)))
    return out
