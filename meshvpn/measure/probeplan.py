"""Who probes whom, and when: the epoch's probe plan, the same on every node that knows the same relays.

Active capacity probes (doc/measurement.md, *Active capacity probes*)
need each relay probed by a team of measurers that neither the relay nor
its friends choose.  The plan is a pure function of the epoch, a seed and
the candidates (node id, vote, /16, family, capacity), so a relay computes which
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
epoch read off the same hash with no seed: the epoch's alone, public
ahead of time, since relays schedule the slot before they have read the
epoch's reveals (knowing when the slot opens chooses no team).

Teams are sized by capacity when the candidates carry one (agreed or
probed): a target's team takes the smallest keys until their shares (a
measurer's expected capacity over the number of targets it measures)
add up to L{CAPACITY_MULTIPLE} times the target's expected capacity,
never fewer than L{TEAM_SIZE} and never more than L{MAX_TEAM}.  Without
capacities every team is L{TEAM_SIZE}, as before.

The seed (L{planSeed}) is what keeps the plan from being chosen.  With
none (the epoch alone, what a network carrying no seed passes) the plan is public
ahead of time and an identity key can be ground offline to land in a
chosen target's team in a chosen epoch (750 keys, among 40 relays, for
a team holding three of a liar's four friends: test_probeplan).  A hash over the previous
window's agreed reports is no better: a reporter chooses its report's
content (its readings, its byte counts), so the last one to publish can
try as many variants as it likes.  A commit and reveal leaves only
withholding: each relay commits to a random secret a window ahead and
reveals it with its reports of the epoch before; the seed is the hash of
the reveals that match, so the plan is known from the epoch's start, at
most 0.85 of an epoch before its slot ends, and a relay that withholds
chooses between two plans, not among many.  The network carries them in
seed records (L{meshvpn.measure.probeseed}, L{meshvpn.measure.seedservice}).
"""

import hashlib
import ipaddress
import math
import struct

import attrs

DOMAIN = b"meshvpn-probe-plan-v1\x00"
SEED_DOMAIN = b"meshvpn-probe-seed-v1\x00"
COMMIT_DOMAIN = b"meshvpn-probe-commit-v1\x00"
SECRET_BYTES = 32
TEAM_SIZE = 5  # the smallest team (a liar needs 3 of 5 seats to move a lower median)
MAX_TEAM = 9  # the largest: a target splits its rate among its team, and each member is a probe stream to run
# A team can take in at least this many times its target's expected capacity: a
# target at its expected capacity then fills about half of each member's share,
# so one up to about twice it is still measured by measurers that are not its
# bottleneck.
CAPACITY_MULTIPLE = 2.0
# A target echoes any measurer whose key is within its first TEAM_SIZE + ECHO_SLACK
# keys, the measurer known to its directory or not: a measurer and a target whose
# directories differ by a relay or two still agree that the probe is wanted
# (without it, in a real six-relay testnet, a target refused measurers its
# directory ranked sixth and the probe read 0).  Clients keep the team itself.
ECHO_SLACK = 2
SLOT_FROM = 0.2  # the slot starts between this fraction of the epoch ...
SLOT_UNTIL = 0.85  # ... and ends by this one (reports go out at the epoch's end)


@attrs.frozen
class Candidate:
    """One relay as the plan sees it."""

    nodeId: bytes
    vote: float = 1.0  # agreed weight, or its share of one vote per address group (candidatesFrom)
    subnet: str = ""  # "/16 or /32" of its address ("" : none, or loopback: shares with nobody)
    family: frozenset = frozenset()  # node ids it names as family
    capacity: float = 0.0  # expected capacity (bytes/s: agreed or probed), 0 when not known


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


def _networkOf(host, v4, v6):
    """The C{/v4} (IPv4) or C{/v6} (IPv6) network of C{host}; C{""} for loopback and anything unparsable."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return ""
    if ip.is_loopback or ip.is_link_local or ip.is_unspecified:
        return ""
    return str(ipaddress.ip_network(f"{ip}/{v4 if ip.version == 4 else v6}", strict=False))


def subnetOf(host):
    """
    The network a relay's address puts it in for the plan: the IPv4 /16 or
    IPv6 /32; C{""} for loopback, private test addresses and anything
    unparsable (a test network of one machine shares no subnet).
    """
    return _networkOf(host, 16, 32)


def addressGroupOf(host):
    """
    The group of addresses that shares one vote in the plan: the IPv4 /24 or
    IPv6 /48, the least a host's operator is given; C{""} for loopback and
    anything unparsable (a test network of one machine: every relay its
    own vote).
    """
    return _networkOf(host, 24, 48)


def commitmentOf(nodeId, epoch, secret):
    """What a relay publishes a window ahead: binds it to the C{secret} it reveals for C{epoch}'s plan."""
    return hashlib.sha256(COMMIT_DOMAIN + bytes(nodeId) + struct.pack("!I", epoch) + bytes(secret)).digest()


def planSeed(epoch, reveals, commitments):
    """
    The seed of C{epoch}'s plan, by commit and reveal.

    @param reveals: C{{nodeId: secret}} revealed at the end of the epoch
        before (so the plan is known from C{epoch}'s start, not earlier).
    @param commitments: C{{nodeId: commitment}} the same relays published
        with their reports of an earlier epoch, before any of these reveals.
    @return: the SHA-256 over the revealed secrets whose commitment
        matches, sorted by node id; C{b""} (the epoch alone) when none does.

    A revealing relay cannot choose its secret once the others' are known
    (the commitment binds it); all it can do is withhold it, one bit of
    choice per relay that withholds.
    """
    kept = sorted((bytes(n), bytes(s)) for n, s in reveals.items()
                  if len(s) == SECRET_BYTES and commitments.get(n) == commitmentOf(n, epoch, s))
    if not kept:
        return b""
    h = hashlib.sha256(SEED_DOMAIN + struct.pack("!I", epoch))
    for nodeId, secret in kept:
        h.update(nodeId + secret)
    return h.digest()


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


def measurerShares(ordered, keyedByTarget, teamSize):
    """
    What each measurer can give one target: its expected capacity over the
    number of targets it measures in a plan of fixed C{teamSize} teams
    (its load; a measurer reads all its targets in the one slot).
    """
    load = {}
    for keyed in keyedByTarget.values():
        for _, m in keyed[:teamSize]:
            load[m] = load.get(m, 0) + 1
    return {c.nodeId: c.capacity / load.get(c.nodeId, 1) for c in ordered
            if c.capacity > 0 and math.isfinite(c.capacity)}


def teamLength(keyed, need, shares, teamSize, maxTeam):
    """
    How many of C{keyed} (smallest key first) a target's team takes: at
    least C{teamSize}, then more until their shares add up to C{need}, at
    most C{maxTeam}, never more than there are.
    """
    n = min(teamSize, len(keyed))
    got = sum(shares.get(m, 0.0) for _, m in keyed[:n])
    while n < min(maxTeam, len(keyed)) and got < need:
        got += shares.get(keyed[n][1], 0.0)
        n += 1
    return n


def makePlan(epoch, epochLength, slotLength, candidates, seed=b"", teamSize=TEAM_SIZE, slack=ECHO_SLACK,
             maxTeam=MAX_TEAM, multiple=CAPACITY_MULTIPLE):
    """
    The probe plan of C{epoch}.

    @param candidates: L{Candidate}s (any order; duplicates of a node id
        keep the first); a vote of 0 or less never measures.
    @return: a L{Plan}: every candidate a target, with C{teamSize}
        measurers (fewer if there are not so many), more (up to
        C{maxTeam}) for a target whose expected capacity C{teamSize}
        members' shares cannot take in C{multiple} times over.
    """
    byId = {}
    for c in candidates:
        byId.setdefault(bytes(c.nodeId), c)
    ordered = [byId[k] for k in sorted(byId)]
    keyedByTarget = {}
    for target in ordered:
        keyed = []
        for m in ordered:
            if m.vote <= 0 or not math.isfinite(m.vote) or excluded(m, target):
                continue
            keyed.append((keyOf(seed, epoch, target.nodeId, m.nodeId, m.vote), m.nodeId))
        keyed.sort()
        keyedByTarget[target.nodeId] = keyed
    shares = measurerShares(ordered, keyedByTarget, teamSize)
    teams, bounds = {}, {}
    for target in ordered:
        keyed = keyedByTarget[target.nodeId]
        need = multiple * target.capacity if target.capacity > 0 and math.isfinite(target.capacity) else 0.0
        n = teamLength(keyed, need, shares, teamSize, max(teamSize, maxTeam))
        teams[target.nodeId] = tuple(m for _, m in keyed[:n])
        # with fewer candidates than the slack covers, any key is close enough
        bounds[target.nodeId] = keyed[n + slack - 1][0] if len(keyed) >= n + slack else math.inf
    slotLength = min(float(slotLength), epochLength * (SLOT_UNTIL - SLOT_FROM))
    # the slot is the epoch's alone: relays schedule it before they have read the epoch's reveals
    return Plan(epoch, slotStart(b"", epoch, epochLength, slotLength), slotLength, teams, bytes(seed), bounds)


def candidatesFrom(descriptors, votes=None, capacities=None):
    """
    L{Candidate}s from relay descriptors (L{meshvpn.dht.descriptor.RelayDescriptor}).

    @param votes: C{{nodeId: agreed weight}} or C{None}: one vote per
        address group (L{addressGroupOf}), shared by the relays in it, so
        that identities run from one machine's address, or its /24, are
        drawn as measurers no more often than one relay (the bench's
        C{swarm}: with one vote per identity, 2 sybils per hostile relay
        took 2.89 times their capacity share, 4 took over).
    @param capacities: C{{nodeId: expected capacity}} (agreed or probed
        bytes/s) to size teams by, or C{None}: teams of L{TEAM_SIZE}.
    """
    rows = []
    for d in descriptors:
        hosts = [a.rsplit(":", 1)[0] for t, a in d.addresses if t != "udp"]
        subnet = min((s for s in map(subnetOf, hosts) if s), default="")
        group = min((g for g in map(addressGroupOf, hosts) if g), default="")
        rows.append((d, subnet, group))
    sharing = {}
    for _, _, group in rows:
        if group:
            sharing[group] = sharing.get(group, 0) + 1
    out = []
    for d, subnet, group in rows:
        if votes is None:
            vote = 1.0 / sharing[group] if group else 1.0
        else:
            vote = float(votes.get(d.nodeId, 0.0))
        capacity = 0.0 if capacities is None else float(capacities.get(d.nodeId, 0.0))
        out.append(Candidate(d.nodeId, vote, subnet, frozenset(d.family), capacity))
    return out
