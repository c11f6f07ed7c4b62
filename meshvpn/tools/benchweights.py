"""``meshvpn bench weights``: how well peer-measured weights track capacity, and what liars gain.

A pure simulation (seeded, deterministic, no network) around the real
aggregation code (L{meshvpn.measure.aggregate.computeWeights}):

- relays get true capacities from a log-normal spread (Tor's consensus
  weights are roughly log-normal over two to three orders of magnitude);
- one epoch of honest traffic: circuits pick guard, middle and exit in
  proportion to capacity (three distinct relays) and carry a log-normal
  number of bytes; each relay counts the bytes per neighbour, as a relay
  does per link, and its report says so;
- with C{--hostile f}, a random fraction f of the relays lies in every way
  we could think of against the scheme, each strategy run on its own:
  C{inflate} (claim huge traffic with every other hostile relay: fake
  traffic among colluders), C{deflate} (report nothing with any honest
  relay), C{both}, C{sybil} (inflate, plus as many zero-capacity
  identities that report and are reported by the colluders), C{clique}
  (sybil, but the colluders drop every link with honest relays: a closed
  group confirming huge traffic only among itself), C{targeted}
  (inflate, and deny every link with the tenth of honest relays that carry
  the most, to shrink the caps of everyone else), C{swarm}, the attack
  built against the equal start: sybil, but with C{--swarm} identities per
  hostile relay, each also sending real traffic (trickles) to the honest
  relays that hold half the capacity, so that its confirmed partners hold
  most of the weight, C{swarmall}, the one built against the start from
  history: the same trickles with every honest relay, so that the
  partners of each new identity hold all the weight and it grows as an
  honest newcomer does, C{junkinflate}, real junk traffic from the hostile
  relays themselves to honest relays (as C{junk}) plus C{inflate}, and
  C{junk}, which is not a lie: hostile relays fill their idle capacity
  with real junk traffic with honest relays (the honest relays run at
  C{--utilization});
- what the sybils of C{swarm} and C{swarmall} send is real, so it is
  charged to the hostile relays' true capacity (the ratio's denominator):
  each hostile relay's idle capacity (what it does not carry for clients,
  at C{--utilization}, as for junk) is shared by its sybils and spread
  over their targets by capacity (a trickle above its link's cap would be
  wasted).  C{--free-trickles} is the first model, 1 MB with each target
  whatever the hostile relays can carry (too little for a real attacker
  at hundreds of relays, and with no bound at many sybils);
- the weights have a history: the network began honest (two honest
  epochs, the first from the equal start), then each attack runs
  C{--epochs} epochs in a row, each starting from the one before, and its
  worst epoch counts.  C{--no-history} attacks from the equal start (what a
  node without history computes).

- C{--probes N} (default 5, as the network) models the active capacity
  probes every relay runs (doc/measurement.md, *Active capacity probes*):
  every identity is probed each epoch by N measurers, drawn one vote per
  machine, shared by the identities on its address (C{--probe-pick
  address}, the network's plan: one vote per /24, the sybils of a swarm on
  their hostile relay's), one vote per identity (C{identity}: an attacker
  with a /24 for each identity) or by the history's weights, hostile measurers lie in every strategy, and the
  weights are capped by the probes (L{meshvpn.measure.aggregate.probeCap});
  it adds the strategies C{probedeflate} (reports honest, measurers lie)
  and C{unprobed} (junkinflate from the hostile identities a probe would
  show small, all claiming a version that cannot be probed), and a
  C{probes} object saying what it models and what it takes as given.  All
  relays are probed in one network-wide slot, each a target and a
  measurer at once: C{--probe-contention} says what a hostile relay does
  with its measuring duties there (C{readback}, the default and the
  network's rule: its targets read it back and its probe is the lower of
  its two roles'; C{skip}: nobody checks and it drops them; C{none}: no
  contention, the first model).  C{--probe-old} leaves a fraction of
  honest relays unprobed.  C{--probes 0} models a network without probes.
  Every default is the network's (L{NETWORK_DEFAULTS} says where each
  comes from), so the default bench computes what the network computes.

It prints C{capacity_correlation_honest} (Pearson correlation of weights
with true capacity when nobody lies), C{hostile_weight_share_ratio} (the
worst lying strategy's hostile share of weight over its share of true
capacity) and every strategy's ratio.
"""

import json
import math
import random
import time

import attrs

from meshvpn.measure.aggregate import UNPROBED_QUANTILE, Params, computeWeights, weightedMedian
from meshvpn.measure.probed import MEASURE_SHARE, PROBE_WINDOW
from meshvpn.measure.probeplan import TEAM_SIZE
from meshvpn.measure.reports import Report, prefixOf
from meshvpn.measure.settings import AUTO, probeSecondsFor

STRATEGIES = ("inflate", "deflate", "both", "sybil", "clique", "targeted", "swarm", "swarmall", "junkinflate")
PROBE_STRATEGIES = ("probedeflate", "unprobed")  # only with --probes: attacks on the probes themselves
CONTENTION = ("none", "skip", "readback")
EPOCH = 3600  # the bench's epoch length, seconds (the reports say so)
HUGE = 2**50
TRICKLE = 10**6  # bytes a swarm identity really exchanges with each big honest relay
# where each probe default comes from in the network's code, and where the model differs from it
NETWORK_DEFAULTS = {
    "probes": "probeplan.TEAM_SIZE (teams of 5; the network sizes them by capacity only when given one, "
              "and gives none)",
    "window": "probed.PROBE_WINDOW",
    "seconds": "settings.probeSecondsFor(auto, 3600)",
    "pick": "address: probeplan.candidatesFrom gives one vote per /24, shared by the relays in it (a swarm's "
            "sybils on their hostile relay's address share its vote)",
    "contention": "readback: probed.probedCapacities (max(target x (1 - MEASURE_SHARE), min(target, measurer)))",
    "measure_share": "probed.MEASURE_SHARE",
    "margin": "aggregate.Params().probeMargin",
    "unprobed": "aggregate.Params().probeUnprobed",
    "clip": "probed: each reading at most team size x its measurer's probed capacity (the model clips at its "
            "true capacity)",
    "schedule": "together: one slot per epoch for every relay (probeplan.slotStart)",
}


def addArguments(p):
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--relays", type=int, default=500, help="relays (default 500)")
    p.add_argument("--hostile", type=float, default=0.2, help="fraction of relays that lie (default 0.2)")
    p.add_argument("--circuits", type=int, default=100_000, help="circuits in the epoch (default 100000)")
    p.add_argument("--sigma", type=float, default=1.2, help="log-normal spread of capacities (default 1.2)")
    p.add_argument("--utilization", type=float, default=0.6, help="honest relays' load, for the junk attack (default 0.6)")
    p.add_argument("--sybil-age", type=int, default=Params().rampEpochs,
                   help="epochs of the chain the sybil identities were seen in (default: the whole ramp, the worst case; "
                        "1: new, weighed at 1/6 of it)")
    p.add_argument("--swarm", type=int, default=1, help="sybil identities per hostile relay in the swarm attack (default 1)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--epochs", type=int, default=3,
                   help="epochs each attack runs, each from the one before (default 3)")
    p.add_argument("--kappa", type=float, default=Params().kappa,
                   help=f"how far a link may exceed its fair share (default {Params().kappa})")
    p.add_argument("--median-slack", type=float, default=Params().medianSlack,
                   help="cap each estimate at this times its partners' weighted median reading (default "
                        f"{Params().medianSlack}; 0: off)")
    p.add_argument("--free-trickles", action="store_true",
                   help="the first swarm model: 1 MB per trickle, not charged to the hostile relays' capacity")
    p.add_argument("--no-history", action="store_true",
                   help="attack a network without history (every epoch starts equal): the old scheme")
    p.add_argument("--probes", type=int, default=TEAM_SIZE,
                   help=f"active capacity probes, this many measurers per relay per epoch (default {TEAM_SIZE}, the "
                        "network's team; 0: a network without probes)")
    p.add_argument("--probe-window", type=int, default=PROBE_WINDOW,
                   help=f"epochs of probes a relay's probed capacity is the median of (default {PROBE_WINDOW})")
    p.add_argument("--probe-seconds", type=float, default=probeSecondsFor(AUTO, EPOCH),
                   help="how long a relay is probed at full rate each epoch (default "
                        f"{probeSecondsFor(AUTO, EPOCH):g} s of {EPOCH}, a relay's auto)")
    p.add_argument("--probe-pick", choices=("weight", "address", "identity"), default="address",
                   help="draw measurers one machine's address, one chance, shared by its identities (default: "
                        "the network's plan, one vote per /24), one identity, one chance (an attacker with a /24 "
                        "per identity), or by the history's weights")
    p.add_argument("--probe-schedule", choices=("together", "apart"), default="together",
                   help="probe every relay in one network-wide slot (default; a machine's identities share its "
                        "capacity) or each at its own time (each sybil shows its machine's whole capacity)")
    p.add_argument("--probe-contention", choices=CONTENTION, default="readback",
                   help="one slot, each relay target and measurer at once: a hostile relay skips no duty (none: the "
                        "first model), skips all of them and shows up to 2x as a target (skip), or, its targets "
                        "reading it back and a probe the lower of its two roles, skips only its duties to colluders "
                        "(readback, default)")
    p.add_argument("--probe-old", type=float, default=0.0,
                   help="fraction of honest relays whose version knows no probe (never probed; default 0)")
    p.add_argument("--probe-unprobed", choices=("median", "quartile", "floor", "free"), default=Params().probeUnprobed,
                   help="once most relays are probed, an unprobed relay is held at the median or lower quartile "
                        f"probe (default {Params().probeUnprobed}), at the floor, or left alone (free: the first model)")
    p.add_argument("--probe-margin", type=float, default=Params().probeMargin,
                   help=f"an estimate is at most this times the bytes per probed unit (default {Params().probeMargin})")


def _ids(n, rng, tag):
    return [bytes(rng.getrandbits(8) for _ in range(31)) + bytes([tag]) for _ in range(n)]


def _traffic(caps, circuits, rng):
    """Per-pair bytes of one epoch of circuits chosen by capacity: C{{(i, j): bytes}} with i < j."""
    n = len(caps)
    cum = []
    acc = 0.0
    for c in caps:
        acc += c
        cum.append(acc)
    pairs = {}
    choices = rng.choices
    population = range(n)
    for _ in range(circuits):
        while True:
            g, m, e = choices(population, cum_weights=cum, k=3)
            if g != m and m != e and g != e:
                break
        size = int(rng.lognormvariate(13.0, 1.0))  # ~0.5 MB median per circuit
        for a, b in ((g, m), (m, e)):
            key = (a, b) if a < b else (b, a)
            pairs[key] = pairs.get(key, 0) + size
    return pairs


def _reportsOf(ids, pairs):
    traffic = [dict() for _ in ids]
    for (a, b), v in pairs.items():
        traffic[a][prefixOf(ids[b])] = (v, 30)
        traffic[b][prefixOf(ids[a])] = (v, 30)
    return traffic


def _build(ids, traffic):
    return [Report(ids[k], b"", 1, 3600, t, ()) for k, t in enumerate(traffic)]


def _pearson(xs, ys):
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else 0.0


def _ranks(xs):
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    r = [0] * len(xs)
    for rank, i in enumerate(order):
        r[i] = rank
    return r


def _share(weights, ids, members):
    total = sum(weights.get(i, 0) for i in ids)
    return sum(weights.get(ids[k], 0) for k in members) / total if total else 0.0


def _idle(hostile, pairs, utilization, probeShare=0.0):
    """
    What each hostile relay could still send: its capacity less what it carries, at the honest
    utilisation, less what probes take (C{probeShare} of its capacity: being probed and probing others).
    """
    carried = dict.fromkeys(hostile, 0)
    for (a, b), v in pairs.items():
        if a in carried:
            carried[a] += v
        if b in carried:
            carried[b] += v
    return [max(0.0, carried[h] * (1 / utilization - 1) - carried[h] / utilization * probeShare) for h in hostile]


def _probeShare(probes):
    """
    The share of every relay's capacity an epoch of probes takes: it is probed at full rate for
    C{probes.seconds}, and the teams it measures in carry, over the network, as many bytes again.
    """
    return 2 * probes.seconds / EPOCH if probes else 0.0


def _probed(allIds, caps, host, hostileIdx, probes, pick, rng, lie=True):
    """
    Each identity's probed capacity: the lower median of C{probes.count * probes.window} readings by
    measurers drawn from C{pick} (C{{index: chance}}; the epoch's randomness, so no relay picks its
    measurers).

    An honest measurer reads what the target really forwards: its true capacity (a hostile relay
    could throttle, which only lowers it; a sybil is probed at its host's whole capacity, the worst
    case: its host's identities probed at different times).  A hostile measurer (C{lie}) reads an
    honest target at 0 and a colluder at any size it likes.

    Readings are in capacity units: each role's bytes over the share of the slot the protocol asks
    that role for (the demand of both roles is known from the public draw), so an honest relay,
    splitting its capacity between them, reads its capacity in both.  C{probes.contention} says
    what a hostile relay does with its measuring duties (L{CONTENTION}).
    """
    population = sorted(pick)
    cum, acc = [], 0.0
    for k in population:
        acc += pick[k]
        cum.append(acc)
    draws = probes.count * probes.window
    # what each identity can show an honest measurer: its machine's capacity (probes.together: one
    # network-wide slot, a machine's identities share it; apart, each identity probed at its own time shows
    # all of it); a hostile machine also sends only to the honest measurers of its team, which the team's
    # median then reads 1 / (1 - f) high (f: the measurers' hostile share)
    identities = {}
    for j in range(len(allIds)):
        identities[host[j]] = identities.get(host[j], 0) + 1
    hostileShare = sum(pick.get(k, 0.0) for k in hostileIdx) / sum(pick.values())
    machine = [caps[host[j]] / (identities[host[j]] if probes.together else 1) for j in range(len(allIds))]
    # a hostile relay also sends only to the honest measurers of its team, and serves only its honest targets:
    # its dropped duties towards colluders are what lets each role read 1 / (1 - f) high.  With nobody
    # checking its measuring ("skip") it drops every duty and gives the whole slot to its target role, which
    # then reads 1 / (1 - measureShare) high on top; read back ("readback") by its targets and held to the
    # lower of its roles, it does best splitting the slot as an honest relay does, both roles reading
    # c / (1 - f)
    freed = 1.0 / (1.0 - probes.measureShare) if probes.contention == "skip" else 1.0
    shown = [machine[j] / ((1 - hostileShare) or 1.0) * freed if j in hostileIdx and lie else machine[j]
             for j in range(len(allIds))]
    asShown = [machine[i] / ((1 - hostileShare) or 1.0) if i in hostileIdx and lie else machine[i]
               for i in range(len(allIds))]
    out = {}
    asMeasurer = {}  # measurer index -> [(what its target read it at, the target's weight, target index)]
    for j, nodeId in enumerate(allIds):
        readings = []
        while len(readings) < draws:
            i = rng.choices(population, cum_weights=cum)[0]
            if i == j:
                continue
            if i in hostileIdx and lie:
                readings.append((probes.count * caps[host[i]] if probes.clip else float(HUGE)) if j in hostileIdx else 0.0)
            else:
                readings.append(shown[j])
            if probes.contention == "readback":
                # the target reads its measurer back: an honest target what the measurer sent, a hostile one
                # 0 for an honest measurer and its clip for a colluder
                if j in hostileIdx and lie:
                    back = probes.count * caps[host[j]] if i in hostileIdx else 0.0
                else:
                    back = asShown[i]
                asMeasurer.setdefault(i, []).append((back, pick.get(j, 0.0), j))
        readings.sort()
        out[nodeId] = readings[(len(readings) - 1) // 2]
    if probes.contention == "readback":
        for i, back in asMeasurer.items():
            # the lower of the two roles' readings, but never below what the target role alone shows for an
            # honest split: a measurer read at 0 by hostile targets loses its measuring share, not everything
            target = out[allIds[i]]
            measurer = weightedMedian(back)
            out[allIds[i]] = max(target * (1 - probes.measureShare), min(target, measurer))
    return out


def _withoutProbes(probed, liars, old):
    """
    C{probed} less the relays that cannot be probed: the C{liars}, and the C{old} honest relays (C{{nodeId}},
    running a version that knows no probe); a relay without a probe is C{None}, as for the weights.
    """
    return {i: None if i in old or i in liars else p for i, p in probed.items()}


def _attack(strategy, ids, caps, honestTraffic, hostile, pairs, utilization, rng, params, swarm=1, prior=None,
            epochs=1, freeTrickles=False, probes=None, sybilAge=1):
    """
    Hostile share of weight over hostile share of capacity under C{strategy}.

    @param prior: the weights' history before the attack (C{{nodeId:
        estimate}}), or C{None} for none; the attack then runs C{epochs}
        epochs in a row, each starting from the one before, and the worst
        epoch counts.
    @param probes: C{None} (what the network runs) or the probes' design
        study (L{Probes}): hostile measurers lie in every strategy.
    @param sybilAge: the epochs of the chain the sybil identities were seen
        in, this one counted (their ramp: 1 is a new identity's 1/6); the
        relays, hostile and honest, were seen in all of it.
    """
    unprobed = strategy == "unprobed"
    if unprobed:
        # junkinflate from identities that claim a version too old to be probed
        strategy = "junkinflate"
    n = len(ids)
    hostileSet = set(hostile)
    traffic = [dict(t) for t in honestTraffic]
    allIds = list(ids)
    colluders = [ids[k] for k in hostile]
    if strategy in ("sybil", "clique", "swarm", "swarmall"):
        sybils = _ids(len(hostile) * (swarm if strategy.startswith("swarm") else 1), rng, 0xEE)
        allIds += sybils
        colluders += sybils
        traffic += [dict() for _ in sybils]
    if strategy in ("swarm", "swarmall"):
        # real trickles with the honest relays that hold half the capacity (swarmall: with every honest relay)
        honestByCap = sorted((k for k in range(n) if k not in hostileSet), key=lambda k: -caps[k])
        half, acc, big = sum(caps[k] for k in honestByCap) / 2, 0.0, []
        for k in honestByCap:
            if acc >= half and strategy == "swarm":
                break
            big.append(k)
            acc += caps[k]
        if freeTrickles:
            # the first model: TRICKLE bytes per link whatever the hostile relays can carry
            sent = [{k: TRICKLE for k in big} for _ in sybils]
        else:
            # the bytes are real: each hostile relay's sybils run on it and share its idle capacity
            # (what it does not carry for clients, at the honest utilisation), spread over the targets
            # by capacity, so that no trickle is wasted above its link's cap
            idle = _idle(hostile, pairs, utilization, _probeShare(probes))
            bigCap = sum(caps[k] for k in big)
            sent = [{k: max(1, int(idle[s // swarm] / swarm * caps[k] / bigCap)) for k in big}
                    for s in range(len(sybils))]
        for s, sid in enumerate(sybils):
            for k, b in sent[s].items():
                traffic[n + s][prefixOf(ids[k])] = (b, 1)
                traffic[k][prefixOf(sid)] = (b, 1)
    hostileIdx = set(hostile) | set(range(n, len(allIds)))
    if strategy in ("junk", "junkinflate"):
        # real bytes: each hostile relay fills its idle capacity with honest relays, by their capacity
        pairs = dict(pairs)
        honest = [k for k in range(n) if k not in hostileSet]
        hw = [caps[k] for k in honest]
        hwTotal = sum(hw)
        for h, extra in zip(hostile, _idle(hostile, pairs, utilization, _probeShare(probes))):
            for k, w in zip(honest, hw):
                key = (h, k) if h < k else (k, h)
                pairs[key] = pairs.get(key, 0) + int(extra * w / hwTotal)
        traffic = _reportsOf(ids, pairs)
    if strategy not in ("junk", "probedeflate"):
        topVoters = set()
        if strategy == "targeted":
            honestByCap = sorted((k for k in range(n) if k not in hostileSet), key=lambda k: -caps[k])
            topVoters = {prefixOf(ids[k]) for k in honestByCap[: max(1, n // 10)]}
        for k in hostileIdx:
            t = traffic[k]
            me = prefixOf(allIds[k])
            if strategy in ("deflate", "both", "clique"):
                t = {p: v for p, v in t.items() if p in {prefixOf(c) for c in colluders}}
            elif strategy == "targeted":
                t = {p: v for p, v in t.items() if p not in topVoters}
            if strategy in ("inflate", "both", "sybil", "clique", "targeted", "swarm", "swarmall", "junkinflate"):
                for c in colluders:
                    if prefixOf(c) != me:
                        t[prefixOf(c)] = (HUGE, 0xFFFF)
            traffic[k] = t
    reports = _build(allIds, traffic)
    hostileCap = sum(caps[k] for k in hostile) / sum(caps)
    # a sybil's machine is its hostile relay's
    host = list(range(n)) + [hostile[(s // swarm) if strategy.startswith("swarm") else s]
                             for s in range(len(allIds) - n)]
    worst = 0.0
    for _ in range(epochs):
        probed = None
        if probes:
            if probes.pick == "address":
                # the identities on one machine's address share its vote
                sharing = {}
                for h in host:
                    sharing[h] = sharing.get(h, 0) + 1
                pick = {k: 1.0 / sharing[host[k]] for k in range(len(allIds))}
            elif probes.pick == "identity" or prior is None:
                pick = dict.fromkeys(range(len(allIds)), 1.0)
            else:
                pick = {k: prior.get(i, 0.0) for k, i in enumerate(allIds) if prior.get(i, 0.0) > 0}
            probed = _probed(allIds, caps, host, hostileIdx, probes, pick, rng, lie=strategy != "junk")
            liars = ()
            if unprobed:
                # the identities a probe would show below what an unprobed relay is held at once most are
                # probed claim an old version (every one while unprobed relays are left alone, none if they
                # are held at the floor); the larger ones are better off probed
                values = sorted(p for p in probed.values())
                quantile = UNPROBED_QUANTILE.get(params.probeUnprobed)
                stand = (float("inf") if params.probeUnprobed == "free" else
                         values[int((len(values) - 1) * quantile)] if quantile is not None else 0.0)
                liars = [allIds[k] for k in sorted(hostileIdx) if probed[allIds[k]] < stand]
            probed = _withoutProbes(probed, liars, probes.old)
        # an old network: every relay, hostile or not, was seen in every epoch of the chain (the full ramp,
        # whatever streak the liars name); the sybils in sybilAge of them
        seen = {i: (params.rampEpochs if k < n else sybilAge - 1) for k, i in enumerate(allIds)}
        measured = computeWeights(reports, known=allIds, params=params, prior=prior, probed=probed,
                                  confirmedEpochs=seen)
        prior = {i: m.bandwidth for i, m in measured.items()}
        weights = {i: m.weight for i, m in measured.items()}
        total = sum(weights.values())
        worst = max(worst, sum(weights.get(allIds[k], 0) for k in hostileIdx) / total if total else 0.0)
    return worst / hostileCap if hostileCap else 0.0, worst, hostileCap


@attrs.frozen
class Probes:
    """The probes the bench models (by default the network's): measurers per relay per epoch, epochs pooled, seconds probed, how measurers are drawn."""

    count: int
    window: int
    seconds: float
    pick: str
    clip: bool = True  # a reading is at most the team's size times the measurer's own capacity
    together: bool = True  # one network-wide slot: a machine's identities share its capacity in the probe
    contention: str = "readback"  # what a hostile relay does with its measuring duties in the slot (CONTENTION)
    measureShare: float = MEASURE_SHARE  # the share of a relay's slot its measuring duties take (asks balanced with its own probe)
    old: frozenset = frozenset()  # honest relays whose version knows no probe (never probed)


def run(args, out=print):
    started = time.process_time()
    rng = random.Random(args.seed)
    n = args.relays
    ids = _ids(n, rng, 0)
    caps = [rng.lognormvariate(0.0, args.sigma) for _ in range(n)]
    pairs = _traffic(caps, args.circuits, rng)
    honestTraffic = _reportsOf(ids, pairs)
    params = Params(kappa=args.kappa, medianSlack=args.median_slack or None, probeMargin=args.probe_margin,
                    probeUnprobed=args.probe_unprobed)
    hostile = sorted(random.Random(args.seed + 1).sample(range(n), int(round(args.hostile * n))))
    probes = None
    if args.probes > 0:
        honest = [k for k in range(n) if k not in set(hostile)]
        old = random.Random(args.seed + 3).sample(honest, int(round(args.probe_old * len(honest))))
        probes = Probes(args.probes, args.probe_window, args.probe_seconds, args.probe_pick,
                        together=args.probe_schedule == "together", contention=args.probe_contention,
                        old=frozenset(ids[k] for k in old))
    # the network's history: it began honest (one epoch from the equal start), then one more honest epoch
    # with probes and nobody lying, every measurer reads a relay's true capacity
    probedHonest = _withoutProbes(dict(zip(ids, caps)), (), probes.old) if probes else None
    measured = computeWeights(_build(ids, honestTraffic), known=ids, params=params, probed=probedHonest)
    measured = computeWeights(_build(ids, honestTraffic), known=ids, params=params,
                              prior={i: m.bandwidth for i, m in measured.items()}, probed=probedHonest)
    history = {i: m.bandwidth for i, m in measured.items()}
    weights = [measured[i].weight if i in measured else 0 for i in ids]
    isolated = [k for k, i in enumerate(ids) if i in measured and "isolated" in measured[i].flags]
    result = {
        "relays": n,
        "hostile_fraction": args.hostile,
        "circuits": args.circuits,
        "capacity_sigma": args.sigma,
        "seed": args.seed,
        "kappa": args.kappa,
        "median_slack": args.median_slack or None,
        "capacity_correlation_honest": round(_pearson(weights, caps), 4),
        "capacity_rank_correlation_honest": round(_pearson(_ranks(weights), _ranks(caps)), 4),
        "measured_relays": sum(1 for i in ids if i in measured and "measured" in measured[i].flags),
        "isolated_honest": len(isolated),
        "isolated_honest_capacity_share": round(sum(caps[k] for k in isolated) / sum(caps), 5),
    }
    if hostile:
        strategies = {}
        lies = STRATEGIES + (PROBE_STRATEGIES if probes else ())
        for s in lies + ("junk",):
            ratio, share, capShare = _attack(s, ids, caps, honestTraffic, hostile, pairs, args.utilization,
                                             random.Random(args.seed + 2), params, args.swarm,
                                             prior=None if args.no_history else history, epochs=args.epochs,
                                             freeTrickles=args.free_trickles, probes=probes, sybilAge=args.sybil_age)
            strategies[s] = {"ratio": round(ratio, 3), "weight_share": round(share, 4)}
        result["sybil_age_epochs"] = args.sybil_age
        result["hostile_capacity_share"] = round(capShare, 4)
        result["strategies"] = strategies
        worst = max(lies, key=lambda s: strategies[s]["ratio"])
        result["hostile_weight_share_ratio"] = strategies[worst]["ratio"]
        result["worst_strategy"] = worst
        result["junk_traffic_ratio"] = strategies["junk"]["ratio"]
        result["junk_utilization"] = args.utilization
        result["swarm_sybils_per_hostile"] = args.swarm
        result["swarm_trickles"] = "free" if args.free_trickles else "idle capacity"
        result["history"] = not args.no_history
        result["attack_epochs"] = args.epochs
    if probes:
        # what the network runs with the defaults (doc/measurement.md, "Active capacity probes")
        result["probes"] = {"measurers_per_relay_epoch": probes.count,
                            "window_epochs": probes.window, "seconds_per_epoch": probes.seconds,
                            "pick": probes.pick, "margin": args.probe_margin,
                            "schedule": "together" if probes.together else "apart",
                            "capacity_share_per_epoch": round(_probeShare(probes), 5),
                            "contention": probes.contention, "measure_share": probes.measureShare,
                            "old_honest_fraction": args.probe_old, "unprobed_held_at": args.probe_unprobed,
                            # what the model takes as given and does not test (doc/measurement.md)
                            "assumed_not_modelled": ["teams big enough to fill their targets",
                                                     "measurers and slot from randomness no relay chooses",
                                                     "each role's reading scaled by its demand, known to all",
                                                     "a hostile measurer's clip is its true capacity, not its "
                                                     "probed one"],
                            "network_defaults": NETWORK_DEFAULTS}
    result["cpu_seconds"] = round(time.process_time() - started, 2)
    if args.json:
        out(json.dumps(result))
    else:
        for k, v in result.items():
            out(f"{k}: {v}")
    return 0
