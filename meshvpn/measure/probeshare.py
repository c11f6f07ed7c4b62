"""A probe reading counts only up to its measurer's share: a busy or small measurer's reading is a lower bound, not a measurement.

A reading is the smaller of what the target forwarded and what the
measurer could take in.  When the measurer is the bottleneck the reading
says only "the target can do at least this much" (it is *censored*), and
taken as a measurement it drags an honest target down: on a loaded
testnet, middles whose reads paused while their token bucket was in debt
read every target low, and the lower median misranked the middles
(doc/measurement.md, *Active capacity probes: the protocol*).

A reading of target T by measurer M in an epoch is censored when M was
its own bottleneck in that slot, told two ways from the reports alone:

 - it reached M's share: its rate is at least L{NEAR} times M's own
   probed capacity (as a target, first pass) over the number of targets M
   read that epoch: M could not have spared more;
 - M was busy: in that epoch M read more than half of its targets
   below L{BUSY} times what two of each one's team reached (the second
   highest reading: however many busy measurers a team holds, two
   measurers that were not agree on more, and a lone liar cannot set
   it): M, not its targets, set the pace.

A target's capacity is then the largest value C{v} that at least
L{MIN_SUPPORT} readings reach and that more readings reach than
uncensored readings fall below (a censored reading never speaks against a
value above it), and never less than the plain lower median.  Everything
is sorted, so the same readings give the same capacities anywhere.

What a hostile measurer can do with it (tested in test_probeshare):

 - deflate: nothing more than before.  The result is never below the
   plain lower median, whatever is censored; and while the honest
   readings of a target outnumber the hostile ones, it is never below the
   smallest honest reading (every honest reading reaches it, at most the
   hostile ones speak against it).  A liar that reads everyone low is
   taken for a busy measurer and loses even the vote it had;
 - inflate: a value above the plain lower median needs two readings that
   reach it, so a lone liar lifts a target at most to the highest honest
   reading; two or more need to outnumber the target's uncensored honest
   readings.  Censoring an honest reading takes liars too: to make M look
   busy, two of them in the teams of most of M's targets; to make M look
   small, most of M's own team.  Every reading is still clipped to the
   team's size times its measurer's own capacity, and a probe only caps
   a weight (C{aggregate.probeCap}): it never gives weight.
"""

NEAR = 0.8  # a reading at this fraction of its measurer's share per target or above is at that share
BUSY = 0.5  # a measurer whose readings sit below this fraction of their targets' teams' for most targets was busy
MIN_SUPPORT = 2  # readings that must reach a value above the plain lower median


def lowerMedian(values):
    values = sorted(values)
    return values[(len(values) - 1) // 2]


def censoredEstimate(readings):
    """
    The capacity that C{readings}, C{[(value, censored)]}, support: the
    largest value that at least L{MIN_SUPPORT} readings reach and more
    readings reach than uncensored ones fall below; never less than the
    plain lower median.  C{None} for no readings.
    """
    if not readings:
        return None
    values = sorted(v for v, _ in readings)
    plain = values[(len(values) - 1) // 2]
    for v in sorted(set(values), reverse=True):
        if v <= plain:
            break
        support = sum(1 for x in values if x >= v)
        against = sum(1 for x, censored in readings if not censored and x < v)
        if support >= MIN_SUPPORT and support > against:
            return v
    return plain


def _reach(values):
    """What at least L{MIN_SUPPORT} of C{values} reach (all of them when fewer)."""
    values = sorted(values, reverse=True)
    return values[min(MIN_SUPPORT, len(values)) - 1]


def censoredFlags(readings, capacities):
    """
    @param readings: C{[(epoch, target, measurer, rate, value)]}, C{value}
        the reading as a capacity (team size times rate, clipped).
    @param capacities: C{{measurer: its own probed capacity}} (first pass).
    @return: a list of booleans, one per reading: censored.
    """
    perSlot, perTarget = {}, {}  # (epoch, measurer) / (epoch, target) -> indexes of readings
    for i, (epoch, target, measurer, _, _) in enumerate(readings):
        perSlot.setdefault((epoch, measurer), []).append(i)
        perTarget.setdefault((epoch, target), []).append(i)
    # what two of the target's team saw that slot: the busy measurers, however many, do not set it
    reached = {k: _reach([readings[i][4] for i in idx]) for k, idx in perTarget.items()}
    flags = [False] * len(readings)
    for (epoch, measurer), indexes in sorted(perSlot.items()):
        share = capacities[measurer] / len(indexes)
        low = sum(1 for i in indexes if readings[i][4] < BUSY * reached[(epoch, readings[i][1])])
        busy = 2 * low > len(indexes)
        for i in indexes:
            flags[i] = busy or readings[i][3] >= NEAR * share
    return flags


def shareCapacities(samplesByEpoch, capacities):
    """
    Targets' capacities from their readings, each counted only up to its measurer's share.

    @param samplesByEpoch: C{{epoch: {target: [(rate, measurer, team size)]}}}
        (L{meshvpn.measure.probed.readingsByTarget} of each epoch).
    @param capacities: C{{measurer: its own probed capacity}} from a first
        pass without clipping; a measurer without one does not count.
    @return: C{{target: capacity}} for every target some counted measurer read.
    """
    readings = []
    for epoch in sorted(samplesByEpoch):
        for target, samples in sorted(samplesByEpoch[epoch].items()):
            for rate, measurer, n in sorted(samples, key=lambda s: (s[1], s[0], s[2])):
                if measurer in capacities:
                    readings.append((epoch, target, measurer, rate, n * min(rate, capacities[measurer])))
    flags = censoredFlags(readings, capacities)
    byTarget = {}
    for (_, target, _, _, value), censored in zip(readings, flags):
        byTarget.setdefault(target, []).append((value, censored))
    return {t: censoredEstimate(r) for t, r in sorted(byTarget.items())}
