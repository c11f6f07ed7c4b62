"""A relay's probed capacity, from the probe reports of a window of epochs, the same for every node that reads them.

Only readings the epoch's plan asked for count: a reading of a target by
a measurer the plan did not put in that target's team is dropped, so a
relay cannot collect readings from friends it chose.  Each reading is the
rate the target forwarded to one measurer; a team of C{n} shares the
target's capacity, so it reads C{n} times that.  A relay's capacity is the
lower median of its readings over the window, each first clipped to what
its measurer can take in (C{n} times the measurer's own probed capacity,
from a first pass without clipping): unclipped, a few colluding measurers
would read a colluder at any size.  A measurer with no probed capacity of
its own (nobody could read it), or one read at 0, does not count: clipped
to 0, the readings of a relay too busy to be read would zero its targets,
and theirs the next (a hostile measurer read at 0 loses its say, nothing
more).  Everything is processed
sorted by id, so the same reports give the same capacities anywhere.

That is the relay's reading in its *target* role.  In the one slot it is
a measurer too, and a relay that skipped measuring would keep its whole
link for its echoes and be read up to twice its share as a target.  So
its targets read it back (L{meshvpn.measure.probereadback}), and its
reading in the *measurer* role is the lower median of those read-backs
over the window, weighted by each target's own target-role capacity (the
targets hold the weight of what they can absorb: a measurer that serves
its small targets and skips its big ones is still read at what it
skipped).  A read-back is the measurer's sending rate to that target
times its number of targets (a measurer splits its part of the slot among
them, so each sees about that fraction: the same units as the target
role, C{team size x rate}); a target that could not keep up with it for
most of the slot (it dropped what it could not echo in at least 3/4 of
the slot's seconds) reads it as not limiting; a target whose
read-back names it not at all read it sending nothing, 0.  The relay's
probed capacity is then the bench's C{readback} rule
(L{meshvpn.tools.benchweights}): the lower of its two roles, never below
its target role times C{1 - MEASURE_SHARE}, what an honest split shows as
a target.  A skipper (all its read-backs 0) is held to that, which is
what it would show had it measured; hostile targets reading an honest
measurer back at 0 cut it by at most C{MEASURE_SHARE}, and only if they
hold more than half of its targets' weight.  A relay no target read back
(its targets run a version without read-backs) keeps its target role.
"""

import math

from meshvpn.measure.aggregate import weightedMedian
from meshvpn.measure.probereports import MAX_TARGETS
from meshvpn.measure.reports import prefixOf

PROBE_WINDOW = 6  # epochs of probe readings a capacity is read from (the agreed history's window)
MEASURE_SHARE = 0.5  # the part of a relay's slot its measuring duties take (the bench's measureShare)
# The version deadline: probes cap the weights of epochs starting at or after this Unix time
# (2026-11-30 00:00 UTC, the release whose relays probe by default and whose clients, payer and
# payout checks read probes by default).  Every node of a release must agree on it, or two nodes would
# compute different weights from the same reports; a later release that changes what the probes mean
# moves it to when that release is expected everywhere (doc/measurement.md, *The version deadline*).
PROBES_CAP_FROM = 1_795_996_800


def _lowerMedian(values):
    values = sorted(values)
    return values[(len(values) - 1) // 2]


def readingsByTarget(reportsByEpoch, planOf):
    """
    @param reportsByEpoch: C{{epoch: [ProbeReport]}}.
    @param planOf: C{epoch -> Plan}.
    @return: C{{target nodeId: [(rate, measurer nodeId, team size)]}} of the readings the plans asked for.
    """
    samples = {}
    for epoch in sorted(reportsByEpoch):
        plan = planOf(epoch)
        byPrefix = {prefixOf(t): t for t in plan.teams}
        seen = set()
        for report in sorted(reportsByEpoch[epoch], key=lambda r: r.measurer):
            if report.epoch != epoch or report.measurer in seen:
                continue
            seen.add(report.measurer)
            for r in report.readings:
                target = byPrefix.get(r.target)
                if target is None or not plan.assigned(report.measurer, target):
                    continue
                samples.setdefault(target, []).append((r.rate, report.measurer, len(plan.teams[target])))
    return samples


def probedCapacities(reportsByEpoch, planOf, readBacksByEpoch=None, roles=None):
    """
    @param readBacksByEpoch: C{{epoch: [ReadBack]}} or C{None} (no
        read-back: a relay's capacity is its target role).
    @param roles: a dict to fill with C{{nodeId: (target role, measurer
        role or None)}}, or C{None}.
    @return: C{{nodeId: probed capacity in bytes/s}} for every relay some
        assigned measurer with a capacity of its own read.
    """
    samples = readingsByTarget(reportsByEpoch, planOf)
    first = {t: _lowerMedian([n * rate for rate, _, n in s]) for t, s in sorted(samples.items())}
    # (a censored estimate that lifted a target above the lower median when two readings reached higher
    # read a 108 KB/s relay at 289 KB/s: doc/measurement.md, not kept)
    out = {}
    for t, s in sorted(samples.items()):
        # (a measurer read at 0 says nothing of its targets either: clipped to its 0, a busy relay's
        # readings zeroed every target it read, and theirs the next, until no relay had a probe)
        clipped = [n * min(rate, first[m]) for rate, m, n in s if first.get(m, 0) > 0]
        if clipped:
            out[t] = _lowerMedian(clipped)
    return withMeasurerRole(out, readBacksByEpoch, planOf, roles)


def withMeasurerRole(targetRole, readBacksByEpoch, planOf, roles=None):
    """
    @param targetRole: C{{nodeId: target-role capacity}}.
    @return: C{{nodeId: probed capacity}}: each target role combined with
        the relay's measurer role read back by its targets (L{combine}).
    """
    backs = readBacksByMeasurer(readBacksByEpoch or {}, planOf, targetRole)
    out = {}
    for t, capacity in sorted(targetRole.items()):
        measurer = weightedMedian(backs[t]) if t in backs else None
        out[t] = combine(capacity, measurer)
        if roles is not None:
            roles[t] = (capacity, measurer)
    return out


def readBacksByMeasurer(readBacksByEpoch, planOf, targetRole):
    """
    @param readBacksByEpoch: C{{epoch: [ReadBack]}}.
    @param targetRole: C{{nodeId: target-role capacity}}: a target's
        weight in its measurers' medians (a target without one has no say).
    @return: C{{measurer nodeId: [(reading, target's weight, target nodeId)]}}
        for every measurer the plans gave a target that published a read-back.
    """
    samples = {}
    for epoch in sorted(readBacksByEpoch):
        plan = planOf(epoch)
        duties = {}  # measurer -> its targets, sorted (it probes the first MAX_TARGETS)
        for t in sorted(plan.teams):
            for m in plan.teams[t]:
                duties.setdefault(m, []).append(t)
        seen = set()
        for back in sorted(readBacksByEpoch[epoch], key=lambda b: b.target):
            t = back.target
            if back.epoch != epoch or t in seen or t not in plan.teams:
                continue
            seen.add(t)
            weight = targetRole.get(t)
            if not weight:
                continue
            for m in plan.teams[t]:
                mine = duties[m][:MAX_TARGETS]
                if t not in mine:
                    continue  # beyond what a measurer probes: no duty
                sent = back.of(m)
                if sent is None:
                    reading = 0.0
                elif sent.filled(back.millis):
                    reading = math.inf
                else:
                    reading = len(mine) * sent.received * 1000 / back.millis
                samples.setdefault(m, []).append((reading, weight, t))
    return samples


def combine(target, measurer):
    """The bench's C{readback} rule: the lower role, never below an honest split's target role."""
    if measurer is None:
        return target
    return max(target * (1 - MEASURE_SHARE), min(target, measurer))
