"""Relay weights from peer reports: confirmed, capped and the same for every client.

Each reporter i says it exchanged b_ij bytes with neighbour j this epoch.
Nothing a relay says about itself is read, and nothing one side of a link
says alone is believed:

- a link counts only as much as *both* ends report: c_ij = min(b_ij, b_ji).
  A liar cannot add a byte to its links with honest relays, and a relay
  that publishes no report carries no measured traffic;
- a relay's measured traffic T_j is the sum of its confirmed links, each
  capped at C{kappa} times what the current weights say the link should
  carry when clients pick relays by weight: c_ij <= kappa * T_i * T_j / E,
  E the sum of all traffic (for a relay that cannot be a middle, whose
  links all go to middles, E is the middles' traffic; two such relays
  never share a path and their link counts for nothing).  Colluders
  confirming huge fake traffic among themselves get at most kappa times
  their fair share of it;
- the iteration starts from the previous epoch's estimates (the history:
  L{startingPoint}); a relay the history does not hold starts at
  L{Params.newcomer} of its median, and a weight grows only as far as
  confirmed links with partners that *hold* weight allow (by at most kappa
  per round; the sums and caps are recomputed until no estimate moves, at
  most L{Params.iterations} rounds).  A swarm of new identities therefore
  has no say until others with weight confirm real traffic with it.  The
  equal start (one identity, one vote) is kept only for a node without
  history; there, sybils that each paid for a trickle of real traffic
  through the big honest relays took all the weight;
- every few rounds each relay's estimate is cut to what its partners
  read: the median, weighted by the readers' estimates, of
  c_ij * (E - T_j) / T_i over every counted relay i (L{partnersMedian}).
  Colluders holding less than half the weight cannot move that median
  past an honest reading, so fake links among them add nothing beyond
  what honest relays really exchanged with them;
- a relay counts only while its confirmed partners hold at least
  L{Params.coverage} of the others' weight (L{Params.freshCoverage} without
  history, where it is the only defence); below, it is left out of every
  sum and of E, kept at a floor and flagged C{isolated} (a clique of
  identities that only confirm each other never counts, and is never
  paid);
- the cap of a link divides by E minus the larger end's traffic: a path
  never holds a relay twice, so a relay's partners share the rest; with E
  alone every estimate of a small network shrank to the same value;
- a relay's weight ramps up over its first L{Params.rampEpochs} epochs of
  service (its streak: the weighted median of the streaks its confirming
  partners give it), so a new relay does not draw its full share at once;
- with probes, a relay with a probe that its reports do not measure (too
  few partners, or partners with too little weight) is held at what its
  probe says, the most the probe cap lets any relay hold, and flagged
  C{probed} (L{probeStandIn}): in an epoch of few clients honest relays
  meet few partners, and a pair vouching for itself took their weight;
- flags: C{measured} (confirmed by at least L{Params.minReporters}
  partners, or all but one of its possible partners in a smaller network:
  L{partnersNeeded}), C{fast} (measured, not in the slowest eighth), C{guard}
  (measured, a streak of at least L{Params.guardEpochs} epochs and at least
  the median measured bandwidth: guard status is earned over time).

Why it holds (doc/measurement.md has the numbers, and where it does not): let the hostile relays
carry a fraction a of the honest relays' real traffic and hold share x of
the weight.  Deflating a link costs the liar as much as its partner (both
ends lose it).  Inflating adds at most kappa * x * T_h, so at the fixed
point x / (1 - x) = a / (1 - kappa * x): with kappa = 1.25 and a = 0.25
(a fifth of the capacity), x = 0.28 instead of 0.2, and a clique cannot
run away unless it starts above the unstable root (x = 0.72) or
(1 + a)^2 < 4 * kappa * a (a > 0.38: more than 28% of the capacity).

Determinism: reporters, neighbours and pairs are processed sorted by id,
ties in a median broken by id, and every operation is plain IEEE float
arithmetic in a fixed order, so the same reports and the same history give
bit-identical weights anywhere.
"""

import attrs

from meshvpn.measure.reports import prefixOf


@attrs.frozen
class Params:
    iterations: int = 100  # an upper bound: the loop stops once estimates settle
    tolerance: float = 1e-7  # no share moved more than this in a round: settled
    kappa: float = 1.25  # a link may carry this many times its fair share
    coverage: float = 0.2  # a relay counts while its confirmed partners hold this much of the others' weight
    freshCoverage: float = 0.4  # the same, for a computation without history (identities count at an equal start)
    floor: float = 1e-3  # a relay left out keeps this fraction of the mean weight, to come back
    newcomer: float = 0.01  # a relay the prior does not hold starts at this fraction of the prior's median
    medianSlack: float = 1.0  # a relay's estimate is at most this times what its partners' median reads (None: off)
    medianQuantile: float = 0.5  # which weighted quantile of the partners' estimates
    medianEvery: int = 5  # rounds between two readings of the partners' median
    probeMargin: float = 0.8  # with probes: an estimate is at most this times the network's bytes per probed unit
    probeScaleBy: str = "probe"  # with probes: the bytes-per-probed-unit median weighs relays by "probe" or "estimate"
    probeFloor: float = 0.5  # with probes: a relay with a probe is held to at least this share of its probe's cap (probeStandIn)
    probeUnprobed: str = "quartile"  # with probes, once most are probed: an unprobed relay is held at the "quartile" or "median" probe, the "floor", or left "free"
    minReporters: int = 3
    rampEpochs: int = 6
    guardEpochs: int = 24
    # with a chain: a guard was also seen in at least min(guardEpochs, this) of its epochs, the most the
    # chain in use always holds (window.WINDOW + 1): a streak its partners name is no older than that
    guardSeenEpochs: int = 7


WEIGHED = frozenset({"measured", "probed"})  # the flags that give a relay a path weight (either is enough)


@attrs.frozen
class RelayMeasure:
    """What the reports say of one relay."""

    nodeId: bytes
    bandwidth: float  # measured, bytes per second (before the ramp)
    weight: int  # what path selection draws by
    reporters: int  # reporters that named it with traffic
    streak: int  # epochs of continuous service, as its reporters see it (their word: a colluder can name any)
    flags: frozenset
    seen: int = None  # epochs of the agreed chain it was seen in, this one counted (seenIn); None: no chain given

    def toJSON(self):
        return {
            "node_id": self.nodeId.hex(),
            "bandwidth": round(self.bandwidth, 1),
            "weight": self.weight,
            "reporters": self.reporters,
            "streak": self.streak,
            "seen_epochs": self.seen,
            "flags": sorted(self.flags),
        }


def weightedMedian(samples, zeroWeight=0.0, q=0.5):
    """
    The lower weighted C{q}-quantile (default: the median) of C{samples},
    C{[(value, weight, tiebreak)]}, plus C{zeroWeight} at value 0.
    @return: 0.0 when there is no weight.
    """
    total = zeroWeight + sum(w for _, w, _ in samples)
    if total <= 0:
        return 0.0
    half = total * q
    acc = zeroWeight
    if acc >= half:
        return 0.0
    for value, w, _ in sorted(samples):
        acc += w
        if acc >= half:
            return value
    return sorted(samples)[-1][0] if samples else 0.0


def confirmedLinks(reports, known=()):
    """
    @return: C{(reporters, links, streaks)}: the sorted reporter ids, the
        confirmed bytes of every link between two reporters as
        C{{(k, m): bytes}} with reporter indices k < m, and the streaks
        they give each other, C{{(k, m): (streak k gives m, streak m gives k)}}.
    """
    byId = {}
    for r in reports:
        byId.setdefault(r.reporter, r)
    reporters = sorted(byId)
    index = {prefixOf(n): k for k, n in enumerate(reporters)}
    links, streaks = {}, {}
    for k, rid in enumerate(reporters):
        mine = prefixOf(rid)
        for p, (b, s) in sorted(byId[rid].traffic.items()):
            m = index.get(p)
            if m is None or m <= k:
                continue
            other = byId[reporters[m]].traffic.get(mine)
            if other is None:
                continue
            links[(k, m)] = min(b, other[0])
            streaks[(k, m)] = (s, other[1])
    return reporters, links, streaks


def startingPoint(reporters, raw, prior, newcomer):
    """
    Where the iteration starts: the previous epoch's estimates, scaled to
    this epoch's bytes, with every relay the prior does not hold at
    C{newcomer} times the prior's median.  With no prior (the first epoch a
    node computes), everyone starts equal at the median reporter's bytes.

    The scale is the median, weighted by the history's estimates, of this
    epoch's confirmed bytes over the history's estimate.  It matters: caps
    grow with the estimates and the confirmed bytes do not, so a start
    scaled too high lets fake links (always at their caps) outgrow real
    ones.  With one vote per identity, the hostile third (colluders
    claiming huge bytes, sybils with tiny estimates, both with huge ratios)
    pushed the scale up and took all the weight in the next epoch; weighted
    by the history, new identities have no say and the colluders only
    their share.
    """
    n = len(reporters)
    flat = max(sorted(raw)[(n - 1) // 2], 1.0)
    held = [prior.get(rid, 0.0) if prior else 0.0 for rid in reporters]
    heldValues = sorted(v for v in held if v > 0)
    if not heldValues:
        return [flat] * n
    ratios = [(raw[k] / held[k], held[k], k) for k in range(n) if held[k] > 0 and raw[k] > 0]
    scale = weightedMedian(ratios) if ratios else flat / heldValues[(len(heldValues) - 1) // 2]
    fresh = newcomer * heldValues[(len(heldValues) - 1) // 2]
    return [(h if h > 0 else fresh) * scale for h in held]


POSITIONS = ("guard", "middle", "exit")


def positionsOf(reporters, roles):
    """
    Which positions each reporter may hold, as a class index (bits: guard 1,
    middle 2, exit 4; every position when C{roles} does not say).
    """
    out = []
    for rid in reporters:
        flags = POSITIONS if roles is None or rid not in roles else roles[rid]
        out.append(sum(1 << b for b, p in enumerate(POSITIONS) if p in flags))
    return out


def _adjacent(a, b):
    """Whether relays of position classes C{a} and C{b} can sit next to each other on a guard-middle-exit path."""
    return bool((a & 1 and b & 2) or (a & 2 and b & 1) or (a & 2 and b & 4) or (a & 4 and b & 2))


ADJACENT = [[_adjacent(a, b) for b in range(8)] for a in range(8)]


def neighbourPools(traffic, classes, mask=None):
    """
    For each relay j, the traffic of the relays that could share a link
    with it (sit next to it on some path), itself excluded; only relays
    with C{mask} true count (default: all).  A relay that can only be a
    middle never links with another middle-only relay, a guard-only never
    with an exit-only: neither is evidence about the other.
    """
    sums = [0.0] * 8
    for t, c, ok in zip(traffic, classes, mask if mask is not None else [True] * len(traffic)):
        if ok:
            sums[c] += t
    byClass = [sum(sums[b] for b in range(8) if ADJACENT[a][b]) for a in range(8)]
    return [byClass[c] - (t if ADJACENT[c][c] and (mask is None or mask[j]) else 0.0)
            for j, (t, c) in enumerate(zip(traffic, classes))]


def partnersNeeded(classes, minReporters):
    """
    How many confirming partners make each relay C{measured}:
    C{minReporters}, or all but one of the reporters it could share a link
    with (L{positionsOf}) where there are fewer.  In a network of one guard,
    three middles and two exits a middle has three possible partners:
    asking for all three every epoch left a middle unmeasured whenever its
    circuits of that epoch missed one exit, and path selection then gave it
    less traffic (a small network's trap: see doc/measurement.md).  Only
    small networks are concerned; from minReporters + 1 possible partners
    on, nothing changes.
    """
    counts = [0] * 8
    for c in classes:
        counts[c] += 1
    out = []
    for c in classes:
        possible = sum(counts[b] for b in range(8) if ADJACENT[c][b]) - (1 if ADJACENT[c][c] else 0)
        out.append(min(minReporters, max(1, possible - 1)))
    return out


def partnersMedian(traffic, table, live, counted, q=0.5, middles=None, classes=None):
    """
    What each relay's partners say it carries: every counted relay i reads
    relay j's traffic off their link as c_ij * (E - T_j) / T_i (the link's
    share of i's traffic, if clients picked by weight), and j's estimate is
    the weighted C{q}-quantile of those readings, weighted by the readers'
    own estimates, a relay with no link with j reading 0.  Colluders that
    hold less than half the weight cannot move a median past what the
    honest relays read, whatever they claim among themselves.

    Only relays that could hold a link with j read it (L{neighbourPools}
    of the counted relays, by C{classes}, L{positionsOf}): a guard-only
    relay never reads an exit-only one as 0, nor a middle-only relay
    another.  (They did: an exit of a six-relay network was cut to the
    floor by a guard and another exit that held half the weight and could
    never carry a byte with it.)  A link with a relay that cannot be a
    middle is read off E = C{middles}: its two ends' partners are disjoint
    sets, so nothing is subtracted.
    """
    n = len(traffic)
    if classes is None:
        classes = [7] * n
    if middles is None:
        middles = counted
    readings = [[] for _ in range(n)]
    for k, m, c, kind in table:
        if not (live[k] and live[m]) or kind == 2:
            continue
        if kind == 0:
            readings[m].append((c * max(counted - traffic[m], traffic[m]) / traffic[k], traffic[k], k))
            readings[k].append((c * max(counted - traffic[k], traffic[k]) / traffic[m], traffic[m], m))
        else:
            readings[m].append((c * middles / traffic[k], traffic[k], k))
            readings[k].append((c * middles / traffic[m], traffic[m], m))
    pools = neighbourPools(traffic, classes, live)
    out = [0.0] * n
    for j in range(n):
        if not live[j]:
            continue
        held = sum(w for _, w, _ in readings[j])
        out[j] = weightedMedian(readings[j], zeroWeight=max(pools[j] - held, 0.0), q=q)
    return out


UNPROBED_QUANTILE = {"median": 0.5, "quartile": 0.25}  # which probe an unprobed relay is held at, once most are probed


def bytesPerProbe(traffic, live, probed, scaleBy="probe"):
    """
    The network's bytes per probed unit C{S} (L{probeCap}): the median of
    C{T_k / P_k} over the relays C{live} marks with a probe and an estimate
    above 0, weighted by the probes (or by the estimates); C{None} when
    there is none.
    """
    # (a relay whose estimate is 0 this round, e.g. cut by its partners' reading, says nothing of the bytes
    # per probed unit: counted, a majority of them set S to 0 and every estimate with it, and nobody was measured)
    samples = [(t / p, t if scaleBy == "estimate" else p, k)
               for k, (t, p, ok) in enumerate(zip(traffic, probed, live)) if ok and p is not None and p > 0 and t > 0]
    return weightedMedian(samples) if samples else None


def probeStandIn(traffic, live, probed, dense, margin, scaleBy="probe", floor=0.5):
    """
    Where the reports are sparse, the probe stands in for the traffic.

    The caps and the partners' reading read a relay by the links it had;
    in an epoch where few clients built few circuits a relay has had
    links with few of the relays it could share one with, and the
    reading takes that for a relay carrying little (doc/measurement.md,
    *Sparse epochs*): honest relays fell to the floor and a pair that
    vouched for each other kept the weight.  So a relay with a probe above
    0 that its reports do not measure (C{dense} false: fewer confirming
    partners than L{partnersNeeded} asks, or its partners hold too little
    of the weight to count it) is held at what its probe says, C{margin *
    S * P_k}: the most any relay can hold (L{probeCap}), so a relay gains
    nothing by looking sparse, and an honest one is not read as small for
    having met few partners.  C{S} is read from the relays the reports
    measure (L{bytesPerProbe}), whose estimates mean something; when there
    is none, every probed relay stands at its probe (C{S} = 1, the unit is
    the probe's).  A relay its reports measure keeps its estimate, held to
    the same C{margin * S * P_k}: in a sparse epoch the relays the reports
    measure may be few and hostile (a pair vouching for itself), and then
    their own ratio is C{S}; held to C{margin} times it, they get no more
    per probed byte than the honest relays standing at their probes.  And
    it is held to at least C{floor} times that: a relay's partners can
    make it dense by confirming a byte of a link each, and their tiny
    links then read it low (an honest exit of the replayed epoch fell to
    0.01% of its probe's weight that way); with the floor, deflating a
    relay that has a probe costs it at most C{1 / floor} of its weight.

    @param dense: per relay, whether its reports measure it.
    @return: C{(traffic, stood)}: the estimates, and per relay whether its probe stands in.
    """
    perUnit = bytesPerProbe(traffic, dense, probed, scaleBy)
    perUnit = (1.0 if perUnit is None else perUnit) * margin
    stood = [not d and p is not None and p > 0 for d, p in zip(dense, probed)]
    low = perUnit * floor
    return [perUnit * p if s else t if p is None or p <= 0 else min(max(t, low * p), perUnit * p)
            for t, p, s in zip(traffic, probed, stood)], stood


def probeCap(traffic, live, probed, margin, scaleBy="probe", unprobed="quartile"):
    """
    Cap each estimate by the relay's probed capacity (relays probe one
    another by default: L{meshvpn.measure.probed}; the bench's C{--probes}).

    The network's bytes per probed unit, C{S}, is the median of
    C{T_k / P_k} over counted relays with a probe and an estimate above 0, weighted by the probes
    C{P_k} (C{scaleBy="probe"}): a machine cannot be probed above what it
    really forwards, and its identities probed in one slot share it, so
    no one gains a vote by inflating its estimate.  Weighted by the
    estimates instead (C{"estimate"}), the colluders' estimates, at their
    caps above everyone's ratio, pull C{S} up (bench, 500 relays, margin
    1.25: C{junkinflate} 2.02 against 1.94).  Weighting by the probes needs every
    reading clipped (a measurer cannot read more than its own capacity
    allows): one colluder read at 2**50 would hold the whole median.  Each
    relay with a probe is then held to C{margin * S * P_k}; below 1, most
    honest relays sit at their cap and weights follow probed capacity.  A
    relay with C{P_k = 0} (probed at nothing) is held to 0, i.e. the
    floor.

    A relay without a probe (C{None}: its version cannot be probed) is left
    alone while few relays are probed.  Once the probed relays hold more
    than half of the counted estimates, leaving it alone would reward a
    liar that claims an old version to stay unprobed (bench: C{unprobed},
    C{junkinflate} from identities that claim one: 5.41 at 80 relays), so
    it is held as if probed at the lower quartile of the counted relays'
    probes (C{unprobed="quartile"}), or their lower median (C{"median"}), or
    at 0, the floor (C{"floor"}); C{"free"} leaves it alone whatever the
    majority (the first model).  The quartile is the least bad of the
    three (80 relays, readback, liars the hostile identities whose probe
    would be below the rule's: the worst lie with no / a fifth of old honest
    relays, quartile 1.26 / 1.36, median 1.35 / 1.40, floor 1.23 / 1.41):
    the higher the stand-in, the more the small hostile relays gain by
    claiming an old version; the lower, the more old honest relays lose
    (an old relay larger than the stand-in loses the difference until it
    upgrades).

    @param probed: per relay, its probed capacity or C{None}.
    """
    perUnit = bytesPerProbe(traffic, live, probed, scaleBy)
    if perUnit is None:
        return traffic
    perUnit *= margin
    stand = None  # what an unprobed relay is held as if probed at; None: left alone
    if unprobed != "free":
        counted = [(t, p) for t, p, ok in zip(traffic, probed, live) if ok]
        withProbe = sum(t for t, p in counted if p is not None)
        if withProbe > 0.5 * sum(t for t, _ in counted):
            if unprobed == "floor":
                stand = 0.0
            else:
                probes = sorted(p for _, p in counted if p is not None)
                stand = probes[int((len(probes) - 1) * UNPROBED_QUANTILE[unprobed])]
    out = []
    for t, p in zip(traffic, probed):
        if p is None:
            p = stand
        # (probed at nothing: 0, not perUnit * 0, which is NaN when a subnormal probe made perUnit infinite)
        out.append(t if p is None else 0.0 if p <= 0 else min(t, perUnit * p))
    return out


def iterate(traffic, order, links, middle, params, kappa, coverage, classes=None, probed=None):
    """
    Recompute every relay's capped sum of confirmed links from C{traffic}
    until no estimate moves by more than C{params.tolerance} of the total
    (at most C{params.iterations} rounds).

    @return: C{(traffic, live, rounds)}: the estimates, whether each relay
        counted (its partners held C{coverage} of the others' weight) and
        the rounds run.
    """
    n = len(traffic)
    if classes is None:
        classes = [7] * n
    live = [True] * n
    rounds = 0
    robust = None
    # per link, once: its ends, its confirmed bytes and which E caps it
    # (0: two middles, 1: one middle, 2: none, a link no path holds); the
    # loop below is the whole cost, so it reads flat lists, not the dict
    table = []
    for k, m in order:
        kind = 0 if middle[k] and middle[m] else 1 if middle[k] or middle[m] else 2
        table.append((k, m, float(links[(k, m)]), kind))
    for _ in range(params.iterations):
        # A relay counts only while its confirmed partners hold at least
        # params.coverage of everyone else's weight: an honest relay's
        # links reach the relays that carry most traffic, an identity that
        # carries nothing is confirmed only by its colluders.  Left out, it
        # keeps the floor (so it can come back once its partners' weight is
        # there), and neither it nor its links count in any sum or in E.
        # "The others" are the relays that could share a link with it
        # (L{neighbourPools}): in a small network a guard and the exits held
        # more than the coverage of the weight and could never confirm an
        # exit, nor the other middles a middle-only relay.
        if coverage > 0:
            seen = [0.0] * n
            for k, m, _, kind in table:
                if kind == 2:
                    continue
                seen[k] += traffic[m]
                seen[m] += traffic[k]
            pools = neighbourPools(traffic, classes)
            live = [seen[k] >= coverage * pools[k] for k in range(n)]
        counted = sum(t for t, ok in zip(traffic, live) if ok)
        middles = sum(t for t, mid, ok in zip(traffic, middle, live) if mid and ok)
        if counted <= 0:
            break
        nxt = [0.0] * n
        everyone = all(live)
        for k, m, c, kind in table:
            if not everyone and not (live[k] and live[m]):
                continue
            # a path never holds a relay twice: k's partners share E minus
            # k's own traffic (with the larger end's, the cap stays symmetric)
            tk = traffic[k]
            tm = traffic[m]
            big = tk if tk >= tm else tm
            if kind == 0:
                rest = counted - big
                cap = kappa * tk * tm / (rest if rest >= big else big)
            elif kind == 1 and middles > 0:
                rest = middles - big
                cap = kappa * tk * tm / (rest if rest >= big else big)
            else:
                cap = 0.0
            if c < cap:
                cap = c
            nxt[k] += cap
            nxt[m] += cap
        if params.medianSlack is not None:
            # the partners' reading, as a share of E: read every few rounds (it sorts every relay's
            # readings), applied every round
            if rounds % params.medianEvery == 0 or robust is None:
                robust = [r / counted for r in partnersMedian(traffic, table, live, counted, params.medianQuantile,
                                                                   middles, classes)]
            limit = params.medianSlack * counted
            nxt = [t if not ok or t <= limit * r else limit * r for t, r, ok in zip(nxt, robust, live)]
        if probed is not None:
            # inside the loop, not after it: a colluder held to its probe also votes (in the caps and the
            # partners' reading) with no more than that, so the gain cannot feed itself
            nxt = probeCap(nxt, live, probed, params.probeMargin, params.probeScaleBy, params.probeUnprobed)
        floor = sum(nxt) / n * params.floor
        if floor <= 0:
            traffic = nxt
            break
        nxt = [max(t, floor) for t in nxt]
        # settled when no estimate moves (not only no share: from an equal
        # start every estimate grows alike at first)
        moved = max(abs(a - b) for a, b in zip(nxt, traffic)) / sum(nxt)
        traffic = nxt
        rounds += 1
        if moved < params.tolerance:
            break
    return traffic, live, rounds


def seenIn(reporters, standIn, bandwidth):
    """
    Whether an epoch counts toward a relay's age in the chain (its ramp):
    a partner confirmed a link with it, or the probes read it (its probe
    stood in, above 0).  Both need someone else: a relay cannot make
    itself older, and a colluding pair, which confirms each other every
    epoch, is no older than an honest relay the probes read every epoch
    while it carried little.
    """
    return reporters > 0 or (standIn and bandwidth > 0)


def computeWeights(reports, known=(), params=Params(), roles=None, prior=None, stats=None, probed=None,
                   confirmedEpochs=None):
    """
    @param reports: L{meshvpn.measure.reports.Report}s of one epoch, at
        most one per reporter (later duplicates are ignored) and all of the
        same epoch length.
    @param known: unused by the computation (a relay must report to be
        measured); kept so callers can pass the relays they know.
    @param roles: C{{nodeId: flags}} from the relays' descriptors, or
        C{None} (every relay may hold every position).  A relay that cannot
        be a middle (a guard-only or exit-only relay) has links only with
        middles, so its links are capped against the middles' traffic
        rather than everyone's; a link between two such relays cannot
        exist on a 3-hop path and counts for nothing.
    @param prior: C{{nodeId: estimate}}, the previous epoch's measured
        bandwidth (any unit: only ratios are read), or C{None}.  It sets
        where the iteration starts (L{startingPoint}); a relay it does not
        hold starts small and must earn its weight from partners that hold
        weight.
    @param probed: C{{nodeId: probed capacity}} (L{meshvpn.measure.probed},
        what a client with C{--probe-weights}, the default, passes for
        epochs past the version deadline; the bench's C{--probes}) or
        C{None}: the reports alone, what a client without probes computes.
    @param confirmedEpochs: C{{nodeId: epochs}}, the epochs of the chain before
        this one in which each relay had a confirming partner or was read by
        the probes (L{seenIn}, L{meshvpn.measure.window.confirmedAfter}), or
        C{None}.  With it a
        weight ramps by those epochs (this one counted) instead of by the
        streak: the streak is what a relay's partners say, and where its
        partners are few (a sparse epoch) a colluder can be the weightier of
        them and name any streak, lifting a pair's weight above what its
        probes allow while the honest relays still ramp (doc/measurement.md,
        *Reputation*).  The streak still decides the guard flag.
    @return: C{{nodeId: RelayMeasure}} for every reporter.
    """
    reports = list(reports)
    if not reports:
        return {}
    lengths = {r.epochLength for r in reports}
    if len(lengths) != 1:
        raise ValueError("reports of different epoch lengths")
    epochLength = lengths.pop()
    reporters, links, streaks = confirmedLinks(reports)
    n = len(reporters)
    order = sorted(links)
    raw = [0.0] * n
    for k, m in order:
        raw[k] += links[(k, m)]
        raw[m] += links[(k, m)]
    # Start from the history: a start read per relay from this epoch's
    # reports, or an equal one, lets identities vote (sybils confirming fake
    # traffic with their colluders, or paying for a trickle through the big
    # honest relays, took all the weight).  From the start a weight grows to
    # what its confirmed links carry, by at most kappa per round:
    # params.iterations is an upper bound, the loop ends once no estimate
    # moves by more than params.tolerance of the total (the same input, the
    # same rounds).
    traffic = startingPoint(reporters, raw, prior, params.newcomer)
    fresh = not (prior and any(prior.get(rid, 0.0) > 0 for rid in reporters))
    coverage = params.freshCoverage if fresh else params.coverage
    middle = [roles is None or rid not in roles or "middle" in roles[rid] for rid in reporters]
    classes = positionsOf(reporters, roles)
    probedList = None if probed is None else [probed.get(rid) for rid in reporters]
    traffic, live, rounds = iterate(traffic, order, links, middle, params, params.kappa, coverage, classes,
                                    probedList)
    count = [0] * n  # confirming partners per relay (what `measured` counts)
    for k, m in order:
        count[k] += 1
        count[m] += 1
    needed = partnersNeeded(classes, params.minReporters)
    stood = [False] * n
    if probedList is not None:
        dense = [ok and c >= need for ok, c, need in zip(live, count, needed)]
        traffic, stood = probeStandIn(traffic, live, probedList, dense, params.probeMargin, params.probeScaleBy,
                                      params.probeFloor)
    # The caps assume links in proportion to both ends' weights; where roles
    # make traffic flow otherwise (a guard talks only to middles) every
    # estimate shrinks alike.  Shares are what paths use; the bandwidth shown
    # is scaled back so that the median reporter's estimate is what its
    # links confirm.
    ratios = sorted(raw[k] / traffic[k] for k in range(n) if traffic[k] > 0 and raw[k] > 0 and live[k] and not stood[k])
    # (raw counts links that cannot exist too; the median reporter has few)
    if ratios:
        scale = ratios[(len(ratios) - 1) // 2]
        traffic = [t * scale for t in traffic]
    total = sum(traffic)
    share = [t / total if total > 0 else 0.0 for t in traffic]
    partners = [[] for _ in range(n)]  # (streak given, vote, tiebreak)
    for k, m in order:
        sk, sm = streaks[(k, m)]
        partners[m].append((sk, share[k], k))
        partners[k].append((sm, share[m], m))
    out = {}
    for k, nodeId in enumerate(reporters):
        confirmed = partners[k]
        streak = int(weightedMedian(confirmed)) if confirmed else 0
        out[nodeId] = [traffic[k] / epochLength, streak, count[k], live[k], needed[k], stood[k]]
    measured = sorted(v[0] for v in out.values() if v[2] >= v[4] and v[0] > 0 and v[3])
    median = measured[(len(measured) - 1) // 2] if measured else 0.0
    slowEighth = measured[len(measured) // 8] if measured else 0.0
    if stats is not None:
        stats["rounds"] = rounds
    result = {}
    for nodeId, (bandwidth, streak, count, counted, need, standIn) in out.items():
        flags = set()
        weight = 0
        aged = streak if confirmedEpochs is None else confirmedEpochs.get(nodeId, 0) + seenIn(count, standIn, bandwidth)
        ramp = min(1.0, max(aged, 1) / params.rampEpochs)
        if standIn and bandwidth > 0:
            # its probe stands in for reports too sparse to read it: drawn by it, neither paid nor a guard for it
            flags.add("probed")
            weight = max(1, int(bandwidth * ramp))
        if count >= need and bandwidth > 0:
            # measured: path selection draws it by this weight, never as "new"
            flags.add("measured")
            weight = max(1, int(bandwidth * ramp))
            if not counted:
                # its partners hold too little of the weight: kept at the floor
                flags.add("isolated")
            elif bandwidth >= slowEighth:
                flags.add("fast")
            seenLongEnough = confirmedEpochs is None or aged >= min(params.guardEpochs, params.guardSeenEpochs)
            if counted and streak >= params.guardEpochs and seenLongEnough and bandwidth >= median:
                flags.add("guard")
        result[nodeId] = RelayMeasure(nodeId, bandwidth, weight, count, streak, frozenset(flags),
                                      None if confirmedEpochs is None else aged)
    return result
