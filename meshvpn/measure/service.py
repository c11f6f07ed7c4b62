"""A client's weights: once per epoch, read every known relay's report and compute the weights.

The relays to read are the ones the client's directory view holds (its
L{meshvpn.dht.service.RelayFinder}); their reports come from the DHT
(L{meshvpn.measure.collect}), the weights from
L{meshvpn.measure.aggregate.computeWeights}, and path selection reads them
through L{IRelayWeights}.  Until the first epoch has been measured the
service knows nothing and path selection stays uniform.

The result is also written to C{weights.json} in the data directory (public
data: every relay's measured bandwidth, weight, streak, flags and its last
report's totals), for C{meshvpn weights} and anyone who wants to check
the computation.

Each epoch's computation starts from the one before it (the history: a
new identity starts small and must earn weight from partners that hold
it).  That history is the agreed one (L{meshvpn.measure.window}): a chain
of computations over the reports of a bounded window of past epochs, read
from the DHT, from a fixed start, so every node that reads the same
reports computes the same weights, whenever it started.  A restarted node
computes its chains again from the DHT.

With capacity probes, each epoch's computation also reads the probe
reports of the relays it reads, over the L{PROBE_WINDOW} epochs up to it,
keeps the readings the epoch's plan asked for (the plan from this node's
directory, drawn from the seed the relays' seed records carry:
L{meshvpn.measure.seedservice}) and passes
each relay's probed capacity (L{meshvpn.measure.probed}) to
C{computeWeights(probed=...)}: a relay's weight is then held to what it
really forwarded when probed, whatever its partners vouch for.  It reads
the targets' read-backs of their measurers too (a relay that skipped
measuring is held to what it would show had it measured).

Probes cap the weights only of epochs that start at or after
L{meshvpn.measure.probed.PROBES_CAP_FROM}, a constant of the code, the
same on every node of a release, not a setting: two clients with
different deadlines would compute different weights from the same
reports.  Before it the probed capacities are read and shown, but the
weights are the reports' alone: while relays of versions that cannot be
probed are common, holding them at the lower quartile probe costs honest
ones more than it takes from liars (bench: a fifth of the honest relays
unprobed, 1.83 against 1.39; doc/measurement.md), and leaving them free
lets liars claim an old version (5.41).
"""

import json
import os

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from meshvpn.interfaces import IRelayWeights, IStatusSource
from meshvpn.measure.aggregate import WEIGHED, Params, computeWeights
from meshvpn.measure.collect import ProbeReportCollector, ReadBackCollector, ReportCollector
from meshvpn.measure.epoch import PUBLISH_DELAY, epochOf, lastComplete, nextBoundary
from meshvpn.measure.probed import PROBE_WINDOW, PROBES_CAP_FROM, probedCapacities, readingsByTarget
from meshvpn.measure.probeplan import Candidate, candidatesFrom, makePlan
from meshvpn.measure.window import Chain, anchorsFor
from meshvpn.secretfile import writeSecretFile

WEIGHTS_FILE = "weights.json"
MAX_READ = 8192  # relays whose reports one epoch reads, at most


def inThread(reactor):
    """
    @return: C{computeWeights} run in C{reactor}'s thread pool (a pure
        function of its arguments), or inline for a reactor without threads
        (a test's clock).
    """
    from twisted.internet import threads

    if not hasattr(reactor, "getThreadPool"):
        return computeWeights

    def compute(*args, **kw):
        return threads.deferToThreadPool(reactor, reactor.getThreadPool(), computeWeights, *args, **kw)

    return compute


def weightsJSON(epoch, epochLength, measures, reports, updated, probed=None, probeRoles=None, probesCap=None):
    """
    The public summary C{weights.json} holds.

    @param probeRoles: C{{nodeId: (target role, measurer role or None)}}:
        shown as C{probed_as_target} and C{probed_as_measurer} (C{null}: no
        read-back; C{"not limiting"}: its targets could not keep up with it).
    @param probesCap: whether the probes capped these weights (the version deadline), or C{None}: not shown.
    """
    byReporter = {r.reporter: r for r in reports}
    probed = probed or {}
    probeRoles = probeRoles or {}
    relays = []
    for nodeId, m in sorted(measures.items()):
        entry = m.toJSON()
        entry["uptime"] = m.streak * epochLength
        entry["probed"] = None if nodeId not in probed else round(probed[nodeId], 1)
        if nodeId in probeRoles:
            target, measurer = probeRoles[nodeId]
            entry["probed_as_target"] = round(target, 1)
            entry["probed_as_measurer"] = (None if measurer is None else "not limiting" if measurer == float("inf")
                                           else round(measurer, 1))
        r = byReporter.get(nodeId)
        if r is not None:
            entry["report"] = {"epoch": r.epoch, "neighbours": len(r.traffic),
                               "bytes": sum(b for b, _ in r.traffic.values()), "parts": len(r.parts)}
        relays.append(entry)
    body = {"epoch": epoch, "epoch_length": epochLength, "updated": updated, "reports": len(reports),
            "probed": len(probed), "relays": relays}
    if probesCap is not None:
        body["probes_cap"] = probesCap
    return body


@implementer(IRelayWeights, IStatusSource)
class MeasuredWeights(service.Service):
    """
    @param dht: a callable returning the L{meshvpn.interfaces.IDHT}.
    @param known: a callable returning C{{nodeId: flags}} of the relays to
        read (the flags, from their descriptors, say which positions each
        may hold).
    @param dataDir: where to write C{weights.json} (C{None}: nowhere).
    @param directory: a callable returning C{{nodeId: descriptor}} of the
        relays known, for the probe plans; C{None}: probe reports are not read.
    @param seeds: an L{meshvpn.interfaces.IProbeSeeds} the plans' seeds
        and candidates come from (L{meshvpn.measure.seedservice}); C{None}:
        the epoch alone, every relay (a network that carries no seed).
    """

    log = Logger()

    def __init__(self, clock, dht, known, epochLength, dataDir=None, params=Params(), compute=computeWeights,
                 directory=None, probesCapFrom=PROBES_CAP_FROM, seeds=None):
        """
        @param compute: C{computeWeights} or a stand-in with its signature
            that may return a Deferred: roles pass L{inThread}, since at
            hundreds of relays the computation takes seconds of CPU, which
            must not stall the reactor that carries circuits.
        @param probesCapFrom: the Unix time from which epochs' weights are
            capped by probes (tests move it; nodes keep the constant).
        """
        self.probesCapFrom = probesCapFrom
        self.seeds = seeds
        self.readBackCollector = ReadBackCollector(dht)
        self.readBacks = {}  # {epoch: [ReadBack]} of complete epochs, for the window
        self.probeRoles = {}  # {nodeId: (target role, measurer role or None)} of the epoch in use
        self.clock = clock
        self.compute = compute
        self.collector = ReportCollector(dht)
        self.probeCollector = ProbeReportCollector(dht)
        self.directory = directory
        self.probed = {}  # {nodeId: probed capacity} of the epoch in use
        self.probeReports = {}  # {epoch: [ProbeReport]} of complete epochs, for the window
        self._plans = {}  # epoch -> (relays it was drawn from, Plan)
        self.known = known
        self.epochLength = epochLength
        self.dataDir = dataDir
        self.params = params
        self.epoch = None
        self.measures = {}
        self.reports = {}
        self.observers = []  # callables(epoch), told after each epoch's weights are computed
        self.chains = {}  # {anchor: Chain}: the chain in use and the next one
        self.computations = 0  # epochs computed (two an epoch once the chains are running)
        self.lastRoles = {}  # {nodeId: flags} of the relays last read, as the directory last gave them
        self._call = None

    # IRelayWeights
    def measurement(self, nodeId):
        m = self.measures.get(nodeId)
        # (a relay its probe weighs, its reports too sparse to measure it, is drawn by that weight too)
        return m if m is not None and m.flags & WEIGHED else None

    def weightOf(self, nodeId):
        m = self.measures.get(nodeId)
        return None if m is None else m.weight

    def report(self, nodeId):
        return self.reports.get(nodeId)

    def probedCapacity(self, nodeId):
        """The relay's probed capacity (bytes/s) in the epoch in use, or C{None}."""
        return self.probed.get(nodeId)

    # capacity probes
    def _planOf(self, epoch):
        """
        The plan of C{epoch} from the relays the directory holds and the
        measurers that published probe reports of it (a relay the
        directory's sample misses is still a relay every other one drew
        from; left out, it would change the teams it ranks in), drawn from
        the seed the relays' plans used and among the relays with a
        commitment in time (L{meshvpn.interfaces.IProbeSeeds}).
        """
        known = self.directory()
        seed, allowed = (b"", None) if self.seeds is None else self.seeds.planInputs(epoch, attested=True)
        if allowed is not None:
            known = {i: d for i, d in known.items() if i in allowed}
        extra = sorted({r.measurer for r in self.probeReports.get(epoch, ())} - set(known))
        if allowed is not None:
            extra = [m for m in extra if m in allowed]
        relays = (frozenset(known) | frozenset(extra), seed)
        got = self._plans.get(epoch)
        if got is None or got[0] != relays:
            # (the teams do not depend on the slot's length: 1 s will do)
            drawn = candidatesFrom([known[i] for i in sorted(known)]) + [Candidate(m) for m in extra]
            plan = makePlan(epoch, self.epochLength, 1.0, drawn, seed=seed)
            got = self._plans[epoch] = (relays, plan)
        return got[1]

    @defer.inlineCallbacks
    def probedFor(self, epoch, nodeIds):
        """
        The probed capacities of C{epoch}: the probe reports of the
        L{PROBE_WINDOW} epochs up to it, from the measurers C{nodeIds}
        (an epoch before the last is read once and kept).
        @return: Deferred firing with C{{nodeId: bytes/s}} (empty without probes).
        """
        if self.directory is None:
            return {}
        window = range(max(epoch - PROBE_WINDOW + 1, 0), epoch + 1)
        if self.seeds is not None:
            # an epoch's commitments are in the record of the one before, the seed its relays used in
            # the one after (read as soon as it starts: so the commitments for the next epoch in time)
            for e in range(max(window[0] - 1, 0), epoch + 2):
                # (the epoch just started again for relays whose record was not stored yet)
                yield self.seeds.read(e, nodeIds, retry=e == epoch + 1)
        for e in window:
            if e not in self.probeReports or e == epoch:
                self.probeReports[e] = yield self.probeCollector.fetchAll(nodeIds, e)
            if e not in self.readBacks or e == epoch:
                self.readBacks[e] = yield self.readBackCollector.fetchAll(nodeIds, e)
        keep = epoch - 2 * PROBE_WINDOW - 12
        for old in [e for e in self.probeReports if e < keep]:
            del self.probeReports[old]
        for old in [e for e in self.readBacks if e < keep]:
            del self.readBacks[old]
        for old in [e for e in self._plans if e < keep]:
            del self._plans[old]
        roles = {}
        probed = probedCapacities({e: self.probeReports[e] for e in window}, self._planOf,
                                  {e: self.readBacks[e] for e in window}, roles=roles)
        self.probeRoles = roles
        kept = readingsByTarget({epoch: self.probeReports[epoch]}, self._planOf)
        self.log.info("probes of epoch {e}: {r} reports, {k} of {n} readings the plan asked for; {p} relays probed "
                      "over the window", e=epoch, r=len(self.probeReports[epoch]), k=sum(map(len, kept.values())),
                      n=sum(len(r.readings) for r in self.probeReports[epoch]), p=len(probed))
        return probed

    def probesCap(self, epoch):
        """Whether probes cap the weights of C{epoch} (it starts at or after the deadline)."""
        return epoch * self.epochLength >= self.probesCapFrom

    def capsOf(self, epoch, probed):
        """What C{computeWeights(probed=...)} gets for C{epoch}: the probes once past the deadline, else C{None}."""
        return probed if probed and self.probesCap(epoch) else None

    # the epoch loop
    def startService(self):
        super().startService()
        self._schedule()

    def toRead(self, epoch):
        """
        C{{nodeId: flags}} of the relays whose reports to read for C{epoch}:
        those the directory view holds now, and those the chain in use
        measured (with the flags they had when last seen; none known, every
        position).
        The directory view is a sample that changes as it refreshes; with
        the history's relays, what a client reads grows toward every relay
        that reports, so clients with different samples read more alike.
        At most L{MAX_READ}: the directory's first, then the history's.
        """
        roles = dict(self.known())
        self.lastRoles.update(roles)
        chain = self.chains.get(anchorsFor(epoch)[0])
        prior = (chain.prior if chain is not None else None) or {}
        for nodeId in sorted(prior):
            if len(roles) >= MAX_READ:
                break
            roles.setdefault(nodeId, self.lastRoles.get(nodeId, frozenset({"guard", "middle", "exit"})))
        self.lastRoles = {i: f for i, f in self.lastRoles.items() if i in roles}
        return roles

    def _chain(self, anchor, epoch):
        """The chain from C{anchor}, ready to compute up to C{epoch} (one that went past it starts again)."""
        c = self.chains.get(anchor)
        if c is not None and c.last >= epoch and not (c.last == epoch and c.rewind()):
            c = None
        if c is None:
            c = Chain(anchor)
            c.last = max(anchor, 0) - 1
        return c

    def stopService(self):
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()

    def _schedule(self):
        if not self.running:
            return
        now = self.clock.seconds()
        # read each epoch's reports a little after it ended, once relays have published
        delay = nextBoundary(now - self.epochLength * PUBLISH_DELAY, self.epochLength)
        self._call = self.clock.callLater(delay, self._tick)

    def _tick(self):
        d = self.refresh()
        d.addErrback(lambda f: self.log.failure("computing relay weights failed", f))
        d.addBoth(lambda _: self._schedule())

    @defer.inlineCallbacks
    def refresh(self, epoch=None):
        """
        Read the reports of C{epoch} (default: the last complete one) and
        recompute.  @return: Deferred firing with the number of reports used.
        """
        now = self.clock.seconds()
        if epoch is None:
            epoch = lastComplete(now, self.epochLength)
        roles = self.toRead(epoch)
        chains = [self._chain(anchor, epoch) for anchor in anchorsFor(epoch)]
        reports, probed = [], {}
        for e in range(max(min(c.last for c in chains) + 1, 0), epoch + 1):
            reports = yield self.collector.fetchAll(list(roles), e)
            reports = [r for r in reports if r.epochLength == self.epochLength]
            probed = yield self.probedFor(e, list(roles))
            for c in chains:
                if c.last == e - 1:
                    measures = {}
                    if reports:
                        measures = yield defer.maybeDeferred(self.compute, reports, known=list(roles),
                                                             params=self.params, roles=roles, prior=c.prior,
                                                             confirmedEpochs=c.confirmed, probed=self.capsOf(e, probed))
                        self.computations += 1
                    c.step(e, measures)
        self.chains = {c.anchor: c for c in chains}
        self.measures = chains[0].current
        self.reports = {r.reporter: r for r in reports}
        self.probed = probed
        self.epoch = epoch
        measured = sum(1 for m in self.measures.values() if "measured" in m.flags)
        self.log.info("relay weights of epoch {e}: {n} reports, {m} relays measured", e=epoch, n=len(reports),
                      m=measured)
        self.write()
        for observer in list(self.observers):
            try:
                observer(epoch)
            except Exception:
                self.log.failure("a weights observer failed")
        return len(reports)

    def write(self):
        if self.dataDir is None:
            return
        body = weightsJSON(self.epoch, self.epochLength, self.measures, list(self.reports.values()),
                           self.clock.seconds(), self.probed, self.probeRoles,
                           bool(self.probed) and self.probesCap(self.epoch))
        writeSecretFile(os.path.join(self.dataDir, WEIGHTS_FILE), json.dumps(body, indent=1).encode())

    def status(self):
        return {
            "epoch": self.epoch,
            "epoch_length": self.epochLength,
            "current_epoch": epochOf(self.clock.seconds(), self.epochLength),
            "reports": len(self.reports),
            "measured": sum(1 for m in self.measures.values() if "measured" in m.flags),
            "rejected": self.collector.rejected,
            "probed": len(self.probed),
            "probes_cap": self.epoch is not None and bool(self.probed) and self.probesCap(self.epoch),
            "probe_reports_rejected": self.probeCollector.rejected,
            "readbacks_rejected": self.readBackCollector.rejected,
        }
