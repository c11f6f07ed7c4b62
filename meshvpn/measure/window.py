"""Agreed weights: the same reports of a bounded window of epochs give every node the same weights.

An epoch's computation starts from the one before it (the history: a new
identity starts small and must earn its weight).  If each node kept its
own history, two nodes would agree only approximately, and a node whose
history began during an attack would differ from one that was there.
Here the history itself is a function of the published reports: the
weights of epoch e are computed by a *chain* that starts at a fixed epoch,
the anchor C{anchorOf(e)}, from the equal start (no history), and runs
epoch by epoch to e, each computation starting from the one before.
Anchors are multiples of L{WINDOW}, and a chain starts one window back, so
it spans between C{WINDOW + 1} and C{2 * WINDOW} epochs: every chain has
at least a whole window of history behind its result, and any node that
reads the same reports of those epochs computes bit-identical weights,
whenever it started.

Cost: a node keeps the state of two chains (the one in use and the next
one, which starts at the next anchor), so each epoch costs two
computations; a node that starts late computes at most C{2 * WINDOW}
epochs once.  Reports are stored in the DHT under L{SLOTS} epoch slots,
so the whole window is there to read.
"""

from meshvpn.measure.aggregate import seenIn

WINDOW = 6  # epochs a chain holds at least behind the epoch it computes
SLOTS = 2 * WINDOW + 2  # report slots in the DHT: a chain's epochs, plus the one being written and a spare


def anchorOf(epoch, window=WINDOW):
    """The first epoch of the chain whose result is C{epoch}'s weights."""
    return (epoch // window - 1) * window


def anchorsFor(epoch, window=WINDOW):
    """The chains a node advances at C{epoch}: the one in use and the next one."""
    first = anchorOf(epoch, window)
    return [first, first + window]


def priorOf(measures):
    """The history one epoch hands the next: every measured relay's estimate."""
    return {i: m.bandwidth for i, m in measures.items() if m.bandwidth > 0}


def confirmedAfter(confirmed, measures):
    """
    The epochs of the chain in which each relay had a confirming partner or
    was read by the probes (L{meshvpn.measure.aggregate.seenIn}),
    C{measures}' epoch counted: what its weight ramps by
    (C{computeWeights(confirmedEpochs=...)}).  Agreed like the rest of the chain,
    and never more than the epochs it spans: a relay's partners cannot make
    it older than that, as they can its streak.
    """
    out = dict(confirmed)
    for i, m in measures.items():
        if seenIn(m.reporters, "probed" in m.flags, m.bandwidth):
            out[i] = out.get(i, 0) + 1
    return out


class Chain:
    """
    One chain's state: the last epoch computed, the history it hands on
    and the last non-empty result.  An epoch with no reports changes
    nothing (the next one starts where the chain was).
    """

    def __init__(self, anchor):
        self.anchor = anchor
        self.last = anchor - 1
        self.prior = None
        self.confirmed = {}  # {nodeId: epochs of this chain it had a confirming partner in} (confirmedAfter)
        self.measures = {}
        self.current = {}  # the result of the last epoch itself (empty when it had no reports)
        self._before = None

    def step(self, epoch, measures):
        if epoch != self.last + 1:
            raise ValueError(f"chain at {self.last} cannot take epoch {epoch}")
        self._before = (self.last, self.prior, self.confirmed, self.measures, self.current)
        self.last = epoch
        self.current = measures
        if measures:
            self.measures = measures
            self.prior = priorOf(measures)
            self.confirmed = confirmedAfter(self.confirmed, measures)

    def rewind(self):
        """Undo the last step (to compute that epoch again, with reports that came late). @return: whether it could."""
        if self._before is None:
            return False
        self.last, self.prior, self.confirmed, self.measures, self.current = self._before
        self._before = None
        return True


def chainWeights(reportsOf, epoch, compute, window=WINDOW, **kw):
    """
    The agreed weights of C{epoch}, from scratch: C{compute} (with
    C{computeWeights}' signature) run from C{anchorOf(epoch)} to C{epoch}.

    @param reportsOf: C{epoch -> [Report]}.
    @return: C{{nodeId: RelayMeasure}}.
    """
    chain = Chain(anchorOf(epoch, window))
    for e in range(chain.anchor, epoch + 1):
        reports = reportsOf(e)
        chain.step(e, compute(reports, prior=chain.prior, confirmedEpochs=chain.confirmed, **kw) if reports else {})
    return chain.measures
