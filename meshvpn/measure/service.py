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

Each epoch's computation starts from the previous epoch's estimates (the
history: a new identity starts small and must earn weight from partners
that hold it; doc/measurement.md says why).  The history is kept in memory
and, with a data directory, read back from C{weights.json} at start, so a
restarted client keeps it; a history older than L{HISTORY_EPOCHS} epochs
is not used.
"""

import json
import os

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from meshvpn.interfaces import IRelayWeights, IStatusSource
from meshvpn.measure.aggregate import Params, computeWeights
from meshvpn.measure.collect import ReportCollector
from meshvpn.measure.epoch import PUBLISH_DELAY, epochOf, lastComplete, nextBoundary
from meshvpn.secretfile import writeSecretFile

WEIGHTS_FILE = "weights.json"
HISTORY_EPOCHS = 24  # a history older than this many epochs is dropped: start afresh
MAX_READ = 8192  # relays whose reports one epoch reads, at most


def readHistory(path):
    """
    @return: C{(epoch, epochLength, {nodeId: bandwidth})} from a
        C{weights.json}, or C{None} when it is missing or not in form (it is
        our own file, but a bad one must only cost the history).
    """
    try:
        with open(path, "rb") as f:
            body = json.loads(f.read(16 * 2**20))
        prior = {}
        for r in body["relays"]:
            nodeId = bytes.fromhex(r["node_id"])
            bandwidth = float(r["bandwidth"])
            if len(nodeId) == 32 and bandwidth > 0 and bandwidth < float("inf"):
                prior[nodeId] = bandwidth
        return int(body["epoch"]), int(body["epoch_length"]), prior
    except (OSError, ValueError, KeyError, TypeError):
        return None


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


def weightsJSON(epoch, epochLength, measures, reports, updated):
    """The public summary C{weights.json} holds."""
    byReporter = {r.reporter: r for r in reports}
    relays = []
    for nodeId, m in sorted(measures.items()):
        entry = m.toJSON()
        entry["uptime"] = m.streak * epochLength
        r = byReporter.get(nodeId)
        if r is not None:
            entry["report"] = {"epoch": r.epoch, "neighbours": len(r.traffic),
                               "bytes": sum(b for b, _ in r.traffic.values()), "parts": len(r.parts)}
        relays.append(entry)
    return {"epoch": epoch, "epoch_length": epochLength, "updated": updated, "reports": len(reports),
            "relays": relays}


@implementer(IRelayWeights, IStatusSource)
class MeasuredWeights(service.Service):
    """
    @param dht: a callable returning the L{meshvpn.interfaces.IDHT}.
    @param known: a callable returning C{{nodeId: flags}} of the relays to
        read (the flags, from their descriptors, say which positions each
        may hold).
    @param dataDir: where to write C{weights.json} (C{None}: nowhere).
    """

    log = Logger()

    def __init__(self, clock, dht, known, epochLength, dataDir=None, params=Params(), compute=computeWeights):
        """
        @param compute: C{computeWeights} or a stand-in with its signature
            that may return a Deferred: roles pass L{inThread}, since at
            hundreds of relays the computation takes seconds of CPU, which
            must not stall the reactor that carries circuits.
        """
        self.clock = clock
        self.compute = compute
        self.collector = ReportCollector(dht)
        self.known = known
        self.epochLength = epochLength
        self.dataDir = dataDir
        self.params = params
        self.epoch = None
        self.measures = {}
        self.reports = {}
        self.observers = []  # callables(epoch), told after each epoch's weights are computed
        self.histories = {}  # {epoch: {nodeId: bandwidth}}, the last two computed: where the next one starts
        self.lastRoles = {}  # {nodeId: flags} of the relays last read, as the directory last gave them
        self._call = None

    # IRelayWeights
    def measurement(self, nodeId):
        m = self.measures.get(nodeId)
        return m if m is not None and "measured" in m.flags else None

    def weightOf(self, nodeId):
        m = self.measures.get(nodeId)
        return None if m is None else m.weight

    def report(self, nodeId):
        return self.reports.get(nodeId)

    # the epoch loop
    def startService(self):
        super().startService()
        if not self.histories and self.dataDir is not None:
            found = readHistory(os.path.join(self.dataDir, WEIGHTS_FILE))
            if found is not None and found[1] == self.epochLength:
                self.histories[found[0]] = found[2]
        self._schedule()

    def toRead(self, epoch):
        """
        C{{nodeId: flags}} of the relays whose reports to read for C{epoch}:
        those the directory view holds now, and those the history measured
        (with the flags they had when last seen; none known, every position).
        The directory view is a sample that changes as it refreshes; with
        the history's relays, what a client reads grows toward every relay
        that reports, so clients with different samples read more alike.
        At most L{MAX_READ}: the directory's first, then the history's.
        """
        roles = dict(self.known())
        self.lastRoles.update(roles)
        prior = self.priorFor(epoch) or {}
        for nodeId in sorted(prior):
            if len(roles) >= MAX_READ:
                break
            roles.setdefault(nodeId, self.lastRoles.get(nodeId, frozenset({"guard", "middle", "exit"})))
        self.lastRoles = {i: f for i, f in self.lastRoles.items() if i in roles}
        return roles

    def priorFor(self, epoch):
        """The history the computation of C{epoch} starts from, or C{None}."""
        before = [e for e in self.histories if 0 < epoch - e <= HISTORY_EPOCHS]
        return self.histories[max(before)] if before else None

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
        reports = yield self.collector.fetchAll(list(roles), epoch)
        reports = [r for r in reports if r.epochLength == self.epochLength]
        self.measures = yield defer.maybeDeferred(self.compute, reports, known=list(roles), params=self.params,
                                                  roles=roles, prior=self.priorFor(epoch))
        if self.measures:
            self.histories[epoch] = {i: m.bandwidth for i, m in self.measures.items() if m.bandwidth > 0}
            for old in sorted(self.histories)[:-2]:
                del self.histories[old]
        self.reports = {r.reporter: r for r in reports}
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
                           self.clock.seconds())
        writeSecretFile(os.path.join(self.dataDir, WEIGHTS_FILE), json.dumps(body, indent=1).encode())

    def status(self):
        return {
            "epoch": self.epoch,
            "epoch_length": self.epochLength,
            "current_epoch": epochOf(self.clock.seconds(), self.epochLength),
            "reports": len(self.reports),
            "measured": sum(1 for m in self.measures.values() if "measured" in m.flags),
            "rejected": self.collector.rejected,
        }
