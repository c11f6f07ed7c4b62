"""What a node knows of the probe plan's commitments and reveals, and which of them count.

The seed of epoch e's plan (L{meshvpn.measure.probeplan.planSeed}) is the
hash of the secrets revealed for e whose commitment was published a whole
epoch before; the plan's candidates are the relays with such a
commitment.  Nothing a relay says about when it published is trusted, so
the book goes by when this node I{read} it:

  - a commitment to the secret of e counts only if this node read it
    before e started (so before anyone revealed a secret of e: it cannot
    have been chosen knowing them; a relay whose record appears later,
    however it is dated, is not a candidate of e); a relay asks more,
    C{commitBy}: read by the point of e - 1 at which it reads the
    records of e - 1, the same point as the reveals, so relays that read
    the same records at that point agree (a commitment stored later,
    by a relay that started mid-epoch, would otherwise be counted by
    those that happened to read it and not by the others, and a reveal
    counted by some changes every team).  The one exception is
    the records of epochs up to L{lateUntil}, which this node could not
    read in time (it had not started; a relay sets it to the epoch
    before the one it started in, a client to that one): it takes what
    it finds;
  - the first commitment read for (relay, epoch) is the one kept; one
    that differs later marks the relay as changing its commitment, and its
    reveal of that epoch is not counted (withheld);
  - a reveal counts only if read by C{revealBy} of the epoch (relays: when
    the slot may first open, so every relay's plan uses what it read at
    the same fixed point; C{None} for a client, which computes after the
    fact and follows the relays' attested seed, below);
  - each record also says which seed its relay's plan of the epoch before
    used; a client takes the seed more than half of the epoch's
    candidates that said one agree on (L{attestedSeed}), else its own.
"""

from meshvpn.measure.probeplan import commitmentOf, planSeed

KEEP = 16  # epochs of commitments, reveals and attestations kept (the probe window and its margin)


class SeedBook:
    def __init__(self, epochLength, lateUntil=-1, revealBy=None, commitBy=1.0):
        """
        @param lateUntil: the last epoch whose records this node could not
            read in time: taken as found.
        @param revealBy: the fraction of an epoch by which a reveal must be
            read to count (C{None}: whenever).
        @param commitBy: the fraction of the epoch before by which a
            commitment must be read to count (1: before the epoch starts).
        """
        self.commitBy = commitBy
        self.epochLength = epochLength
        self.lateUntil = lateUntil
        self.revealBy = revealBy
        self.commitments = {}  # epoch -> {nodeId: commitment}
        self.changed = {}  # epoch -> {nodeIds that showed two commitments}
        self.reveals = {}  # epoch -> {nodeId: secret}
        self.attests = {}  # epoch -> {nodeId: seed its plan used}
        self.counters = {"records": 0, "late_commitments": 0, "late_reveals": 0, "changed_commitments": 0,
                         "bad_reveals": 0}

    def add(self, record, now):
        """Take one verified L{meshvpn.measure.probeseed.SeedRecord}, read (or, a relay's own, stored) at C{now}."""
        e, node = record.epoch, record.publisher
        self.counters["records"] += 1
        self._commit(e + 1, node, record.commitment, now)
        self._reveal(e, node, record.secret, now)
        if e >= 1:
            self.attests.setdefault(e - 1, {})[node] = record.usedSeed
        self._prune(e)

    def _commit(self, epoch, node, commitment, now):
        if now > (epoch - 1 + self.commitBy) * self.epochLength and epoch - 1 > self.lateUntil:
            self.counters["late_commitments"] += 1
            return
        known = self.commitments.setdefault(epoch, {})
        first = known.setdefault(node, commitment)
        if first != commitment and node not in self.changed.setdefault(epoch, set()):
            self.changed[epoch].add(node)
            self.counters["changed_commitments"] += 1

    def _reveal(self, epoch, node, secret, now):
        if (self.revealBy is not None and epoch > self.lateUntil
                and now > (epoch + self.revealBy) * self.epochLength):
            self.counters["late_reveals"] += 1
            return
        commitment = self.commitments.get(epoch, {}).get(node)
        if commitment is not None and commitment != commitmentOf(node, epoch, secret):
            self.counters["bad_reveals"] += 1
            return
        # (read before its commitment, a reveal waits for planSeed's check; a matching one replaces it)
        known = self.reveals.setdefault(epoch, {})
        if node not in known or commitment is not None:
            known[node] = secret

    def _prune(self, epoch):
        for table in (self.commitments, self.changed, self.reveals, self.attests):
            for old in [e for e in table if e < epoch - KEEP]:
                del table[old]

    def committed(self, epoch):
        """The relays with a commitment for C{epoch} that counts (a frozenset), C{None} when there is none."""
        known = self.commitments.get(epoch)
        return frozenset(known) if known else None

    def seedOf(self, epoch):
        """C{planSeed} over the reveals of C{epoch} that count (a relay that changed its commitment withheld)."""
        changed = self.changed.get(epoch, set())
        reveals = {n: s for n, s in self.reveals.get(epoch, {}).items() if n not in changed}
        return planSeed(epoch, reveals, self.commitments.get(epoch, {}))

    def attestedSeed(self, epoch):
        """
        The seed more than half of C{epoch}'s candidates that attested one
        say their plan used, or C{None}.  Only candidates vote (a relay with
        no commitment for the epoch drew no plan worth following).
        """
        candidates = self.committed(epoch) or frozenset()
        votes = {}
        for node, seed in self.attests.get(epoch, {}).items():
            if node in candidates:
                votes[seed] = votes.get(seed, 0) + 1
        total = sum(votes.values())
        for seed, n in sorted(votes.items()):
            if 2 * n > total:
                return seed
        return None

    def planInputs(self, epoch, attested=False):
        """
        C{(seed, candidates)} of C{epoch}'s plan: candidates C{None} (and
        the seed C{b""}, the epoch alone) when no commitment is known, as
        before the network carried any; with C{attested}, the seed most
        candidates said they used when there is one.
        """
        candidates = self.committed(epoch)
        if candidates is None:
            return b"", None
        seed = self.attestedSeed(epoch) if attested else None
        return (self.seedOf(epoch) if seed is None else seed), candidates
