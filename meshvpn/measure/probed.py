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
its own (nobody could read it) does not count.  Everything is processed
sorted by id, so the same reports give the same capacities anywhere.
"""

from meshvpn.measure.probeshare import shareCapacities
from meshvpn.measure.reports import prefixOf

PROBE_WINDOW = 6  # epochs of probe readings a capacity is read from (the agreed history's window)


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


def probedCapacities(reportsByEpoch, planOf):
    """
    @return: C{{nodeId: probed capacity in bytes/s}} for every relay some
        assigned measurer with a capacity of its own read.
    """
    samples = readingsByTarget(reportsByEpoch, planOf)
    first = {t: _lowerMedian([n * rate for rate, _, n in s]) for t, s in sorted(samples.items())}
    # (a reading its busy or small measurer bounded is only a lower bound: probeshare)
    return shareCapacities({e: readingsByTarget({e: reportsByEpoch[e]}, planOf) for e in reportsByEpoch}, first)
