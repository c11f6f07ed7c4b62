"""A target's side of a capacity probe: echo the measurers the plan assigns it, inside the slot, and no one else.

An echo goes back on the link the probe came in on, byte for byte, so a
target is never a reflector towards a third party; and it echoes only
when all of these hold, else it drops the record and counts why:

 - the link's peer authenticated as a node the epoch's probe plan puts in
   this relay's team, or close to it (L{meshvpn.measure.probeplan.ECHO_SLACK}:
   directories differ a little; an anonymous client, or any other relay,
   gets nothing);
 - the epoch's slot is open (with L{GRACE} seconds either side for clocks);
 - that measurer has drawn less than L{MAX_RATE} times the slot's length
   this epoch (a sanity bound per peer: a team member cannot make the
   target send without end);
 - the measurer's equal share of the node's bandwidth limit has room for
   it (R over the team's size, for a relay throttled to R: a client reads
   each reading as that share; without shares the measurer whose records
   came first after each refill took nearly all of it, the others reading
   0, on in-memory links).  The echo is then charged to the node's token
   bucket, the one its cells are charged to, even into debt: in the slot
   the probe goes first and the cells wait (the limiter pauses reading
   while the bucket is in debt), as FlashFlow holds clients back while a
   relay is measured.  Taking only what cells left, a relay its clients
   keep busy read 0 (the real testnet's throttled middles, every epoch);
 - the link's writes are not blocked (an echo is never queued: a queue
   would only hide the path's capacity and grow).

While it echoes, the target also reads its measurers back
(L{meshvpn.measure.probereadback}): for every measurer it echoes, the
bytes of PROBE data received in the slot, those it did not echo because
it was itself the bottleneck (no capacity left, link blocked, the sanity
bound), and in how many distinct seconds that happened.  Records from anyone else, or outside the slot, count for
nothing: they are not the measurer's duty.

A measurer probes on a probe-only link of its own (L{meshvpn.link.manager}),
which no cell batch pauses; L{ProbeEcho.linkUntil} admits one only from a
node this relay echoes, inside the slot, and until the slot's end: the
same rules as the echo, so the link gives a peer nothing the echo does not.

A malformed PROBE record never gets here: the link refuses it and closes
(L{meshvpn.link.probewire}).
"""

from meshvpn.measure.epoch import epochOf
from meshvpn.measure.probereadback import MAX_MEASURERS, Sent
from meshvpn.measure.reports import prefixOf
from meshvpn.ratelimit import TokenBucket

GRACE = 2.0  # seconds of clock difference tolerated at each end of the slot
MAX_RATE = 125_000_000  # bytes/s one measurer may draw from a target (1 Gbit/s), over the slot
KEEP = 3  # epochs of read-backs kept (the publisher asks for the one that just ended)


class ProbeEcho:
    """
    @param planOf: C{epoch -> Plan} (L{meshvpn.measure.probeplan}) or C{None} when none is known.
    @param bucket: the node's L{meshvpn.ratelimit.TokenBucket} or C{None} (no limit).
    """

    def __init__(self, clock, nodeId, planOf, epochLength, bucket=None):
        self.clock = clock
        self.nodeId = nodeId
        self.planOf = planOf
        self.epochLength = epochLength
        self.bucket = bucket
        self.counters = {"echoed": 0, "echoed_bytes": 0, "unassigned": 0, "outside_slot": 0, "over_budget": 0,
                         "no_capacity": 0, "blocked": 0, "links_admitted": 0, "links_unassigned": 0,
                         "links_outside_slot": 0}
        self._epoch = None
        self._drawn = {}  # measurer -> bytes echoed to it this epoch (only assigned measurers: at most a team)
        self._shares = {}  # measurer -> its TokenBucket share of the node's limit this epoch
        # epoch -> {measurer: [bytes received, bytes not echoed for want of our capacity, seconds that
        # happened in, the last such second]}; only
        # measurers the plan lets us echo, at most MAX_MEASURERS of them an epoch
        self._back = {}

    def probeReceived(self, link, seq, data):
        now = self.clock.seconds()
        epoch = epochOf(now, self.epochLength)
        if epoch != self._epoch:
            self._epoch, self._drawn, self._shares = epoch, {}, {}
        plan = self.planOf(epoch)
        peer = link.peerId
        if plan is None or peer is None or not plan.echoes(peer, self.nodeId):
            self.counters["unassigned"] += 1
            return False
        offset = now - epoch * self.epochLength
        if not plan.slotStart - GRACE <= offset <= plan.slotStart + plan.slotLength + GRACE:
            self.counters["outside_slot"] += 1
            return False
        back = self._readBack(epoch, peer)
        if back is not None:
            back[0] += len(data)
        drawn = self._drawn.get(peer, 0) + len(data)
        if drawn > MAX_RATE * (plan.slotLength + 2 * GRACE):
            return self._targetBound(back, data, "over_budget")
        if self.bucket is not None and self.bucket.rate is not None:
            share = self._shares.get(peer)
            if share is None:
                team = len(plan.teams.get(self.nodeId, ())) or 1
                share = self._shares[peer] = TokenBucket(self.clock, self.bucket.rate / team, self.bucket.burst / team)
            if not share.tryConsume(len(data)):
                return self._targetBound(back, data, "no_capacity")
            self.bucket.consume(len(data))
        if not link.sendProbe(seq, data, echo=True):
            return self._targetBound(back, data, "blocked")
        self._drawn[peer] = drawn
        self.counters["echoed"] += 1
        self.counters["echoed_bytes"] += len(data)
        return True

    def linkUntil(self, peer):
        """
        Until when (the clock's seconds) a probe-only link from C{peer} may
        stay open: the slot's end and its L{GRACE}, if the plan lets us
        echo C{peer} and the slot is open now; else C{None} (refused).
        """
        now = self.clock.seconds()
        epoch = epochOf(now, self.epochLength)
        plan = self.planOf(epoch)
        if plan is None or peer is None or not plan.echoes(peer, self.nodeId):
            self.counters["links_unassigned"] += 1
            return None
        start = epoch * self.epochLength + plan.slotStart
        end = start + plan.slotLength
        if not start - GRACE <= now <= end + GRACE:
            self.counters["links_outside_slot"] += 1
            return None
        self.counters["links_admitted"] += 1
        return end + GRACE

    def _readBack(self, epoch, peer):
        """The read-back counters of C{peer} this epoch (C{None} once the epoch holds L{MAX_MEASURERS} others)."""
        counts = self._back.setdefault(epoch, {})
        for old in [e for e in self._back if e <= epoch - KEEP]:
            del self._back[old]
        got = counts.get(peer)
        if got is None and len(counts) < MAX_MEASURERS:
            got = counts[peer] = [0, 0, 0, None]
        return got

    def _targetBound(self, back, data, why):
        """Drop a record we could not echo: the measurer sent more than we could take."""
        self.counters[why] += 1
        if back is not None:
            back[1] += len(data)
            second = int(self.clock.seconds())
            if second != back[3]:
                back[2], back[3] = back[2] + 1, second
        return False

    def readBackOf(self, epoch):
        """
        The read-back of C{epoch}: a L{Sent} per measurer that sent us
        anything in the slot, sorted by measurer prefix.
        """
        counts = self._back.get(epoch, {})
        return sorted((Sent(prefixOf(m), r, b, n) for m, (r, b, n, _) in counts.items() if r > 0),
                      key=lambda s: s.measurer)
