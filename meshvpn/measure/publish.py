"""A relay's side: at every epoch boundary, sign what the links carried and publish it in the DHT.

The report of epoch e goes out as owned DHT records, one per part, under
C{ownedKey(nodeId, b"meshvpn-bw:" + slot + part)}, the slot being e modulo
L{meshvpn.measure.window.SLOTS}: anyone who knows a relay's node id finds
its report of any epoch of the window there, and only the relay can write
it (the DHT checks the record signature).  Record sequence numbers grow
with the epoch, so the report of a newer epoch in the same slot replaces
the older one on every storing node, and a record lives until its slot is
reused, so a client finds every epoch its agreed weights are computed from.

With capacity probes (L{meshvpn.measure.probeservice}), the relay's
signed probe readings of the epoch go beside the report, one owned record
under C{ownedKey(nodeId, b"meshvpn-probe:" + slot)} (at most 32 targets,
one record), with the same sequence number and lifetime; and its signed
read-back of the epoch (what each of its measurers sent it in the slot:
L{meshvpn.measure.probereadback}) under
C{ownedKey(nodeId, b"meshvpn-probeback:" + slot)}, even when nobody sent
anything (that is the point: a measurer that skipped is read at nothing).

The streak of a neighbour (epochs in a row it carried traffic with us) is
kept in memory: a restarted relay starts its neighbours' streaks again,
which can only make them look younger, never older.
"""

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from meshvpn.dht.records import makeRecord
from meshvpn.interfaces import IStatusSource
from meshvpn.measure.epoch import epochOf, nextBoundary
from meshvpn.measure.probereadback import signReadBack
from meshvpn.measure.probereports import signProbeReport
from meshvpn.measure.reports import MAX_STREAK, makeReport
from meshvpn.measure.window import SLOTS

SALT_PREFIX = b"meshvpn-bw:"
PROBE_SALT_PREFIX = b"meshvpn-probe:"
READBACK_SALT_PREFIX = b"meshvpn-probeback:"


def reportSalt(part, epoch):
    """The salt of part C{part} of the report of C{epoch}."""
    return SALT_PREFIX + bytes([epoch % SLOTS, part])


def probeSalt(epoch):
    """The salt of the probe report of C{epoch}."""
    return PROBE_SALT_PREFIX + bytes([epoch % SLOTS])


def readBackSalt(epoch):
    """The salt of the read-back of C{epoch}."""
    return READBACK_SALT_PREFIX + bytes([epoch % SLOTS])


@implementer(IStatusSource)
class ReportPublisher(service.Service):
    """
    @param dht: an L{meshvpn.interfaces.IDHT} (a callable returning it, as
        the DHT exists only once its service started).
    @param meter: an L{meshvpn.interfaces.ITrafficMeter}.
    @param probes: what holds the relay's probe readings and read-backs
        (C{readingsOf(epoch)}, C{readBackOf(epoch)}:
        L{meshvpn.measure.probeservice.ProbeService}), or C{None}: no probe report.
    """

    log = Logger()

    def __init__(self, clock, identity, dht, meter, epochLength, probes=None):
        self.clock = clock
        self.probes = probes
        self.lastProbes = None  # (epoch, targets) of the last probe report stored
        self.lastReadBack = None  # (epoch, measurers) of the last read-back stored
        self.identity = identity
        self.dht = dht
        self.meter = meter
        self.epochLength = epochLength
        self.streaks = {}
        self.last = None  # (epoch, {peer: (bytes, streak)}, parts published)
        self.failures = 0
        self._call = None
        self._epoch = None

    def startService(self):
        super().startService()
        now = self.clock.seconds()
        self._epoch = epochOf(now, self.epochLength)
        self.meter.drain()  # what came before our first whole epoch is not an epoch's worth
        self._call = self.clock.callLater(nextBoundary(now, self.epochLength), self._tick)

    def stopService(self):
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()

    def _tick(self):
        now = self.clock.seconds()
        ended = self._epoch
        self._epoch = epochOf(now, self.epochLength)
        self._call = self.clock.callLater(nextBoundary(now, self.epochLength), self._tick)
        d = self.publishEpoch(ended)
        d.addErrback(lambda f: self.log.failure("bandwidth report of epoch {e} failed", f, e=ended))

    def closeEpoch(self, epoch):
        """Drain the meter into epoch C{epoch}'s signed report parts."""
        traffic = self.meter.drain()
        streaks = {}
        for peer, count in traffic.items():
            if count > 0:
                streaks[peer] = min(self.streaks.get(peer, 0) + 1, MAX_STREAK)
        self.streaks = streaks
        table = {peer: (traffic[peer], streaks[peer]) for peer in streaks}
        parts = makeReport(self.identity, epoch, self.epochLength, table)
        self.last = (epoch, table, len(parts))
        return parts

    @defer.inlineCallbacks
    def publishEpoch(self, epoch):
        parts = self.closeEpoch(epoch)
        expires = (epoch + SLOTS) * self.epochLength  # until its slot is written again
        dht = self.dht()
        results = yield defer.DeferredList(
            [dht.put(makeRecord(self.identity, reportSalt(p.part, epoch), p.raw, epoch, expires)) for p in parts],
            consumeErrors=True,
        )
        failed = sum(1 for ok, _ in results if not ok)
        if failed:
            self.failures += 1
            self.log.warn("bandwidth report of epoch {e}: {n} of {m} parts not stored", e=epoch, n=failed, m=len(parts))
        else:
            self.log.info("bandwidth report of epoch {e} published: {k} neighbours", e=epoch, k=len(self.last[1]))
        if self.probes is not None:
            yield self.publishProbes(epoch, expires)
            yield self.publishReadBack(epoch, expires)
        return len(parts) - failed

    @defer.inlineCallbacks
    def publishProbes(self, epoch, expires):
        readings = self.probes.readingsOf(epoch)
        if not readings:
            return
        report = signProbeReport(self.identity, epoch, self.epochLength, readings)
        try:
            yield self.dht().put(makeRecord(self.identity, probeSalt(epoch), report.raw, epoch, expires))
        except Exception as e:
            self.failures += 1
            self.log.warn("probe report of epoch {e} not stored: {why}", e=epoch, why=e)
            return
        self.lastProbes = (epoch, len(readings))
        self.log.info("probe report of epoch {e} published: {n} targets", e=epoch, n=len(readings))

    @defer.inlineCallbacks
    def publishReadBack(self, epoch, expires):
        got = self.probes.readBackOf(epoch)
        if got is None:
            return
        millis, sent = got
        readBack = signReadBack(self.identity, epoch, self.epochLength, millis, sent)
        try:
            yield self.dht().put(makeRecord(self.identity, readBackSalt(epoch), readBack.raw, epoch, expires))
        except Exception as e:
            self.failures += 1
            self.log.warn("read-back of epoch {e} not stored: {why}", e=epoch, why=e)
            return
        self.lastReadBack = (epoch, len(readBack.sent))
        self.log.info("read-back of epoch {e} published: {n} measurers sent to us", e=epoch, n=len(readBack.sent))

    def status(self):
        out = {"epoch_length": self.epochLength, "failures": self.failures}
        if self.last is not None:
            epoch, table, parts = self.last
            out.update(last_epoch=epoch, neighbours=len(table), parts=parts,
                       bytes=sum(b for b, _ in table.values()))
        if self.lastProbes is not None:
            out.update(last_probe_epoch=self.lastProbes[0], probe_targets=self.lastProbes[1])
        if self.lastReadBack is not None:
            out.update(last_readback_epoch=self.lastReadBack[0], readback_measurers=self.lastReadBack[1])
        return out
