"""A client's side of the reports: fetch each known relay's report of one epoch from the DHT, check it, join it.

Every part must be a record owned by the relay it claims to come from (the
record's publisher key is the report's key), of the asked epoch, and
complete; anything else is dropped and counted, never half-used.  Lookups
run a few at a time, so a client with hundreds of relays to read does not
flood the DHT.
"""

from twisted.internet import defer

from meshvpn.dht.records import ownedKey
from meshvpn.measure.probereadback import ReadBackError, parseReadBack
from meshvpn.measure.probereports import ProbeReportError, parseProbeReport
from meshvpn.measure.publish import probeSalt, readBackSalt, reportSalt
from meshvpn.measure.reports import ReportError, joinParts, parsePart


class ReportCollector:
    """
    @param dht: a callable returning the L{meshvpn.interfaces.IDHT}.
    """

    def __init__(self, dht, concurrency=8):
        self.dht = dht
        self._limit = defer.DeferredSemaphore(concurrency)
        self.rejected = 0
        self.missing = 0

    def _part(self, nodeId, part, epoch):
        d = self._limit.run(self.dht().get, ownedKey(nodeId, reportSalt(part, epoch)))
        return d.addCallback(self._check, nodeId, part, epoch)

    def _check(self, record, nodeId, part, epoch):
        if record is None:
            return None
        try:
            p = parsePart(record.value)
        except ReportError:
            self.rejected += 1
            return None
        if record.publisherKey != p.identityKey or p.reporter != nodeId or p.part != part:
            self.rejected += 1
            return None
        if p.epoch != epoch:
            return None  # an older (or newer) epoch's report: not this one
        return p

    @defer.inlineCallbacks
    def fetch(self, nodeId, epoch):
        """@return: Deferred firing with the relay's L{Report} of C{epoch}, or C{None}."""
        first = yield self._part(nodeId, 0, epoch)
        if first is None:
            self.missing += 1
            return None
        rest = yield defer.gatherResults([self._part(nodeId, i, epoch) for i in range(1, first.parts)])
        parts = [first] + list(rest)
        if any(p is None for p in parts):
            self.missing += 1
            return None
        try:
            return joinParts(parts)
        except ReportError:
            self.rejected += 1
            return None

    def fetchAll(self, nodeIds, epoch):
        """@return: Deferred firing with the list of L{Report}s found, sorted by reporter."""
        ds = [self.fetch(n, epoch).addErrback(lambda f: None) for n in sorted(set(nodeIds))]
        d = defer.gatherResults(ds)
        return d.addCallback(lambda found: [r for r in found if r is not None])


class ProbeReportCollector:
    """
    The probe reports of one epoch: one owned record per measurer, kept
    only if it parses, is signed by the key that published the record, is
    the asked measurer's and of the asked epoch.

    @param dht: a callable returning the L{meshvpn.interfaces.IDHT}.
    """

    parse = staticmethod(parseProbeReport)
    error = ProbeReportError
    salt = staticmethod(probeSalt)

    def __init__(self, dht, concurrency=8):
        self.dht = dht
        self._limit = defer.DeferredSemaphore(concurrency)
        self.rejected = 0

    @staticmethod
    def owner(report):
        return report.measurer

    def _check(self, record, nodeId, epoch):
        if record is None:
            return None
        try:
            report = self.parse(record.value)
        except self.error:
            self.rejected += 1
            return None
        if record.publisherKey != report.identityKey or self.owner(report) != nodeId:
            self.rejected += 1
            return None
        return report if report.epoch == epoch else None

    def fetch(self, nodeId, epoch):
        """@return: Deferred firing with the relay's report of C{epoch}, or C{None}."""
        d = self._limit.run(self.dht().get, ownedKey(nodeId, self.salt(epoch)))
        return d.addCallback(self._check, nodeId, epoch)

    def fetchAll(self, nodeIds, epoch):
        """@return: Deferred firing with the list of L{ProbeReport}s found, sorted by measurer."""
        ds = [self.fetch(n, epoch).addErrback(lambda f: None) for n in sorted(set(nodeIds))]
        d = defer.gatherResults(ds)
        return d.addCallback(lambda found: [r for r in found if r is not None])


class ReadBackCollector(ProbeReportCollector):
    """The read-backs of one epoch (L{meshvpn.measure.probereadback}): one owned record per target, checked alike."""

    parse = staticmethod(parseReadBack)
    error = ReadBackError
    salt = staticmethod(readBackSalt)

    @staticmethod
    def owner(report):
        return report.target
