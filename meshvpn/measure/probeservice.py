"""A relay's capacity probes, each epoch: probe the targets the plan gives it, echo the measurers it is given.

The plan of an epoch (L{meshvpn.measure.probeplan}) comes from the
relays this node's directory holds, one vote each (relays do not compute
the agreed weights; see doc/measurement.md), computed when the slot
opens (the measurer side) or a probe arrives (the target side) and again
only if the directory changed; a client computes the same from the same
directory.  At the slot's start the relay opens a probe-only link to each
of its targets (L{meshvpn.interfaces.ILinkManager.openLink}; link version 5
and later), runs one L{meshvpn.measure.prober.ProbeStream} on it for
C{--probe-seconds} and closes it.  The link is its own so that no cell batch
pauses it at either end: on the shared link, a busy relay's read limiter
held the records and their echoes behind its cells, and read it at 0.  A
target that takes no such link (an older release) is probed on the shared
link, and counted (C{shared_fallback}).  The
readings (bytes echoed, milliseconds) wait for the epoch's end, when the
publisher signs and stores them beside the traffic report.  A target that
could not be reached reads 0 (it forwarded nothing that slot); one whose
link is older than version 5 is left out (it cannot be probed).

As a target it also reads its measurers back (L{ProbeEcho}), and the
publisher signs that beside the readings (L{readBackOf}), but only for an
epoch whose slot opened while the service ran: a relay that started after
the slot saw none of its measurers, and a read-back of nobody would read
them all at nothing.
"""

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from meshvpn.interfaces import IStatusSource
from meshvpn.measure.epoch import epochOf
from meshvpn.measure.probeecho import ProbeEcho
from meshvpn.measure.probeplan import TEAM_SIZE, candidatesFrom, makePlan, slotStart
from meshvpn.measure.prober import ProbeStream
from meshvpn.measure.probereports import MAX_TARGETS, Reading
from meshvpn.measure.reports import prefixOf

PROBE_LINK_VERSION = 5  # the link version that knows the PROBE record (link/wire.py)
KEEP = 3  # epochs of plans and readings kept


def planFromDirectory(directory, epoch, epochLength, probeSeconds, teamSize=TEAM_SIZE, seed=b"", candidates=None):
    """
    The plan of C{epoch} from C{{nodeId: descriptor}}, one vote per relay.

    @param seed: the epoch's seed (L{meshvpn.interfaces.IProbeSeeds}); C{b""}: the epoch alone.
    @param candidates: the node ids that may be drawn (those with a
        commitment in time), or C{None}: every relay of the directory.
    """
    relays = [d for i, d in sorted(directory.items()) if candidates is None or i in candidates]
    return makePlan(epoch, epochLength, probeSeconds, candidatesFrom(relays), seed=seed, teamSize=teamSize)


class PlanCache:
    """
    The plans of the last few epochs, each computed again only when the
    directory's relays or the epoch's seed changed (a plan costs a hash per
    pair of relays).

    @param seeds: an L{meshvpn.interfaces.IProbeSeeds}, or C{None}: the
        epoch alone (what a network carrying no seed draws from).
    """

    def __init__(self, directory, epochLength, probeSeconds, teamSize=TEAM_SIZE, keep=KEEP, seeds=None):
        self.seeds = seeds
        self.directory = directory
        self.epochLength = epochLength
        self.probeSeconds = probeSeconds
        self.teamSize = teamSize
        self.keep = keep
        self._plans = {}  # epoch -> (relays it was computed from, Plan)

    def __call__(self, epoch):
        known = self.directory()
        seed, candidates = (b"", None) if self.seeds is None else self.seeds.planInputs(epoch)
        relays = (frozenset(known), seed, candidates)
        got = self._plans.get(epoch)
        if got is None or got[0] != relays:
            got = self._plans[epoch] = (relays, planFromDirectory(known, epoch, self.epochLength, self.probeSeconds,
                                                                  self.teamSize, seed, candidates))
        for old in sorted(self._plans)[: -self.keep]:
            del self._plans[old]
        return got[1]


@implementer(IStatusSource)
class ProbeService(service.Service):
    """
    @param links: an L{meshvpn.interfaces.ILinkManager} (its probe handler is set to this service).
    @param directory: a callable returning C{{nodeId: descriptor}} of the relays known.
    @param bucket: the node's bandwidth L{meshvpn.ratelimit.TokenBucket}, or C{None}.
    """

    log = Logger()

    def __init__(self, clock, identity, links, directory, epochLength, probeSeconds, bucket=None,
                 teamSize=TEAM_SIZE, seeds=None):
        self.clock = clock
        self.identity = identity
        self.links = links
        self.directory = directory
        self.epochLength = epochLength
        self.probeSeconds = probeSeconds
        self.teamSize = teamSize
        self.planOf = PlanCache(directory, epochLength, probeSeconds, teamSize, seeds=seeds)
        self.echo = ProbeEcho(clock, identity.nodeId, self.planOf, epochLength, bucket)
        self.readings = {}  # epoch -> {target nodeId: Reading}
        self.attended = set()  # epochs whose slot opened while this service ran (a read-back is worth signing)
        self.counters = {"probes": 0, "unreachable": 0, "too_old": 0, "stray_echoes": 0, "dedicated": 0,
                         "shared_fallback": 0, "dedicated_lost": 0}
        self._streams = {}  # link -> ProbeStream running on it
        self._call = None
        links.setProbeHandler(self)

    # the link's PROBE records
    def probeReceived(self, link, seq, data, echo):
        if not echo:
            self.echo.probeReceived(link, seq, data)
            return
        stream = self._streams.get(link)
        if stream is None:
            self.counters["stray_echoes"] += 1
            return
        stream.echoReceived(seq, data)

    def probeLinkUntil(self, peerId):
        """The link manager asks before taking a probe-only link from C{peerId} (L{ProbeEcho.linkUntil})."""
        return self.echo.linkUntil(peerId)

    # the slot
    def startService(self):
        super().startService()
        self._schedule(epochOf(self.clock.seconds(), self.epochLength))

    def stopService(self):
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        for stream in list(self._streams.values()):
            stream.stop()

    def _schedule(self, epoch):
        now = self.clock.seconds()
        while True:
            # (the slot's time does not depend on the relays, nor on the seed, read only at
            # 10% of the epoch: it is the epoch's alone, public, and no plan is needed yet)
            at = epoch * self.epochLength + slotStart(b"", epoch, self.epochLength, self.probeSeconds)
            if at >= now:
                break
            epoch += 1
        self._call = self.clock.callLater(at - now, self._slot, epoch)

    def _slot(self, epoch):
        self._schedule(epoch + 1)
        d = self.probeEpoch(epoch)
        d.addErrback(lambda f: self.log.failure("capacity probes of epoch {e} failed", f, e=epoch))

    def probeEpoch(self, epoch):
        """Probe every target the plan of C{epoch} gives this relay. @return: Deferred firing when all are done."""
        plan = self.planOf(epoch)
        end = epoch * self.epochLength + plan.slotStart + plan.slotLength
        known = self.directory()
        targets = [t for t in plan.targetsOf(self.identity.nodeId) if t in known][:MAX_TARGETS]
        self.readings.setdefault(epoch, {})
        for old in [e for e in self.readings if e < epoch - KEEP + 1]:
            del self.readings[old]
        self.attended = {e for e in self.attended if e >= epoch - KEEP + 1} | {epoch}
        return defer.gatherResults([self._probe(epoch, known[t], end) for t in targets])

    @defer.inlineCallbacks
    def _probe(self, epoch, descriptor, end):
        target = descriptor.nodeId
        millis = max(1, int(round(self.probeSeconds * 1000)))
        try:
            link, dedicated = yield self._linkTo(descriptor)
        except Exception as e:
            self.counters["unreachable"] += 1
            self.log.info("probe target {t} unreachable: {why}", t=target.hex()[:16], why=e)
            self.readings[epoch][target] = Reading(prefixOf(target), 0, millis)
            return
        try:
            if (getattr(link, "version", None) or 0) < PROBE_LINK_VERSION:
                self.counters["too_old"] += 1
                return
            seconds = end - self.clock.seconds()
            if seconds <= 0:
                self.readings[epoch][target] = Reading(prefixOf(target), 0, millis)
                return
            closed = link.whenClosed() if dedicated else None  # (fires if the target closes it under the probe)
            stream = ProbeStream(self.clock, link, seconds)
            self._streams[link] = stream
            self.counters["probes"] += 1
            try:
                echoed, took = yield stream.start()
            finally:
                if self._streams.get(link) is stream:
                    del self._streams[link]
            if closed is not None and closed.called:
                self.counters["dedicated_lost"] += 1  # the target closed it (refused, or its slot ended first)
        finally:
            if dedicated:
                link.close("probe slot over")
        self.readings[epoch][target] = Reading(prefixOf(target), echoed, took)
        self.log.info("probe of {t}: {b} bytes echoed in {ms} ms", t=target.hex()[:16], b=echoed, ms=took)

    @defer.inlineCallbacks
    def _linkTo(self, descriptor):
        """C{(link, dedicated)}: a probe-only link of our own to the target, else the shared one."""
        openLink = getattr(self.links, "openLink", None)
        if openLink is not None:
            try:
                link = yield openLink(descriptor, purpose="probe")
            except Exception as e:
                self.log.info("no probe-only link to {t} ({why}); probing on the shared link",
                              t=descriptor.nodeId.hex()[:16], why=e)
            else:
                self.counters["dedicated"] += 1
                return link, True
        self.counters["shared_fallback"] += 1
        link = yield self.links.getLink(descriptor)
        return link, False

    def readingsOf(self, epoch):
        """The readings of C{epoch}, sorted by target (for the signed probe report)."""
        return sorted(self.readings.get(epoch, {}).values(), key=lambda r: r.target)

    def readBackOf(self, epoch):
        """
        C{(slot milliseconds, [Sent])}: what each measurer sent this relay in
        the slot of C{epoch} (L{meshvpn.measure.probereadback}), or C{None}
        if the slot did not open while this service ran.
        """
        if epoch not in self.attended:
            return None
        plan = self.planOf(epoch)
        return max(1, int(round(plan.slotLength * 1000))), self.echo.readBackOf(epoch)

    def status(self):
        out = dict(self.counters)
        out.update({"echo_" + k: v for k, v in self.echo.counters.items()})
        out["probe_seconds"] = self.probeSeconds
        done = [e for e in self.readings if self.readings[e]]
        if done:
            last = max(done)
            out["last_epoch"] = last
            out["last_targets"] = len(self.readings[last])
        return out
