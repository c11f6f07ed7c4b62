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
- every reporter starts from the median, over all reporters (one vote
  each), of what they confirm with it (a clique nobody else links with
  starts at a floor), and the sums and caps are recomputed
  L{Params.iterations} times, so weights grow only as far as confirmed
  links allow (by at most kappa per round);
- a relay's weight ramps up over its first L{Params.rampEpochs} epochs of
  service (its streak: the weighted median of the streaks its confirming
  partners give it), so a new relay does not draw its full share at once;
- flags: C{measured} (confirmed by at least L{Params.minReporters}
  partners), C{fast} (measured, not in the slowest eighth), C{guard}
  (measured, a streak of at least L{Params.guardEpochs} epochs and at least
  the median measured bandwidth: guard status is earned over time).

Why it holds (doc/measurement.md has the numbers): let the hostile relays
carry a fraction a of the honest relays' real traffic and hold share x of
the weight.  Deflating a link costs the liar as much as its partner (both
ends lose it).  Inflating adds at most kappa * x * T_h, so at the fixed
point x / (1 - x) = a / (1 - kappa * x): with kappa = 1.25 and a = 0.25
(a fifth of the capacity), x = 0.28 instead of 0.2, and a clique cannot
run away unless it starts above the unstable root (x = 0.72) or
(1 + a)^2 < 4 * kappa * a (a > 0.38: more than 28% of the capacity).

Determinism: reporters, neighbours and pairs are processed sorted by id,
ties in a median broken by id, and every operation is plain IEEE float
arithmetic in a fixed order, so the same reports give bit-identical
weights anywhere.
"""

import attrs

from meshvpn.measure.reports import prefixOf


@attrs.frozen
class Params:
    iterations: int = 40
    kappa: float = 1.25  # a link may carry this many times its fair share
    startQuantile: float = 0.5  # the median: colluders voting up a friend's start must outnumber the rest
    minReporters: int = 3
    rampEpochs: int = 6
    guardEpochs: int = 24


@attrs.frozen
class RelayMeasure:
    """What the reports say of one relay."""

    nodeId: bytes
    bandwidth: float  # measured, bytes per second (before the ramp)
    weight: int  # what path selection draws by
    reporters: int  # reporters that named it with traffic
    streak: int  # epochs of continuous service, as its reporters see it
    flags: frozenset

    def toJSON(self):
        return {
            "node_id": self.nodeId.hex(),
            "bandwidth": round(self.bandwidth, 1),
            "weight": self.weight,
            "reporters": self.reporters,
            "streak": self.streak,
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


def computeWeights(reports, known=(), params=Params(), roles=None):
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
    # Start from what most reporters see, one vote each: the median over
    # all reporters of c_ij * n (one that confirmed nothing with j says 0),
    # floored so that sparsely seen relays can grow.  A clique confirming
    # fake traffic only among itself is seen by none of the others and
    # starts at the floor, unless it is most of the reporters; from there a
    # weight grows by at most kappa per round, and only as far as its
    # confirmed links carry it.
    named = [[] for _ in range(n)]
    for k, m in order:
        c = float(links[(k, m)]) * n
        named[k].append((c, 1.0, m))
        named[m].append((c, 1.0, k))
    start = [weightedMedian(named[k], float(n - 1 - len(named[k])), q=params.startQuantile) for k in range(n)]
    medianRaw = sorted(raw)[(n - 1) // 2]
    floor = max(sorted(start)[(n - 1) // 2], medianRaw, 1.0) / 100.0
    traffic = [max(t, floor) for t in start]
    kappa = params.kappa
    middle = [roles is None or rid not in roles or "middle" in roles[rid] for rid in reporters]
    for _ in range(params.iterations):
        total = sum(traffic)
        middles = sum(t for t, mid in zip(traffic, middle) if mid)
        if total <= 0:
            break
        nxt = [0.0] * n
        for k, m in order:
            if middle[k] and middle[m]:
                cap = kappa * traffic[k] * traffic[m] / total
            elif (middle[k] or middle[m]) and middles > 0:
                cap = kappa * traffic[k] * traffic[m] / middles
            else:
                cap = 0.0
            c = min(float(links[(k, m)]), cap)
            nxt[k] += c
            nxt[m] += c
        traffic = nxt
    # The caps assume links in proportion to both ends' weights; where roles
    # make traffic flow otherwise (a guard talks only to middles) every
    # estimate shrinks alike.  Shares are what paths use; the bandwidth shown
    # is scaled back so that the median reporter's estimate is what its
    # links confirm.
    ratios = sorted(raw[k] / traffic[k] for k in range(n) if traffic[k] > 0 and raw[k] > 0)
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
        out[nodeId] = [traffic[k] / epochLength, streak, len(confirmed)]
    measured = sorted(v[0] for v in out.values() if v[2] >= params.minReporters and v[0] > 0)
    median = measured[(len(measured) - 1) // 2] if measured else 0.0
    slowEighth = measured[len(measured) // 8] if measured else 0.0
    result = {}
    for nodeId, (bandwidth, streak, count) in out.items():
        flags = set()
        weight = 0
        if count >= params.minReporters and bandwidth > 0:
            flags.add("measured")
            weight = int(bandwidth * min(1.0, max(streak, 1) / params.rampEpochs))
            if bandwidth >= slowEighth:
                flags.add("fast")
            if streak >= params.guardEpochs and bandwidth >= median:
                flags.add("guard")
        result[nodeId] = RelayMeasure(nodeId, bandwidth, weight, count, streak, frozenset(flags))
    return result
