"""The client's circuit manager: paths from the directory, spares built ahead, rebuilt when a hop dies.

It knows nothing of cells or links: it is given

- C{relaySource()}: a Deferred list of L{RelayInfo} (from the DHT directory);
- C{buildCircuit(path)}: a Deferred circuit (an L{ICircuit} with
  C{whenClosed()} and C{close(reason)}), failing with L{CircuitBuildFailed}
  naming the hop that failed when it knows it;

and decides which path each circuit takes (the guard from the client's
L{guards.GuardSet}, middle and exit from L{pathselect}), which circuit each request
uses (per isolation key, exit fitting the target), keeps spare circuits built
ahead of need, retries a failed build through other relays, and replaces a
circuit that dies while in use, logging how long that took.  The guard set
hears of every build through a guard: up when built, down when the guard
hop failed; when it has no usable guard the build fails rather than enter
through a random relay.
The control plane steers it (L{ICircuitSteering}): a new identity retires
every circuit for new streams, and a relay filter applies the user's pinned
and excluded relays to every path chosen after it is set.  It also watches
(L{ICircuitObserver}): each observer hears of a circuit in the same turn it
is built, once it is listed, and again when it closes.

A build that fails past the guard (a TRUNCATED, DESTROY or timeout while
extending) names no hop, so nothing is excluded for good on one relay's
word; it is counted against the guard instead (Tor's path bias, in small):
the status shows the count, and a guard through which most builds fail
past it is logged once.  The relay the failed extension was for is avoided
for a while, within the bounds of L{meshvpn.circuits.avoid} (a hostile
guard cannot use it to steer paths).

Recovery (the chaos bench's faults):

- a circuit that dies of a cause nobody proved (a DESTROY from the
  network) is replaced at once through a path that avoids both its middle
  and its exit (either may be the dead relay: a killed exit used to be
  chosen again, one build in four), softly: when nothing else fits they
  are used; a replacement whose every attempt failed (a small directory
  that knew no path without the dead relay yet) is tried again after 2, 4,
  8, 16 and 30 s, not given up at once;
- a request for an isolation key whose replacement is being built waits
  for that build instead of starting a second one (a dead exit's users
  used to double the build load just when it mattered), unless a spare fits;
- spares are built through exits no other spare uses, so one exit's death
  never takes every warm circuit with it;
- a circuit on which a stream got no answer in time
  (L{streamTimedOut}, from the stream opener) takes no new streams;
- a guard whose link was closed as silent (it answered no liveness PING:
  it hangs) is marked down once, so the next circuits enter elsewhere;
- builds time out adaptively (L{meshvpn.circuits.buildtimeout}), and a
  timeout is charged to no relay: a starved machine no longer counts its
  guards down until it refuses to build;
- a guard whose link is I{suspected} (a PING unanswered past a bound from
  measured round trips, L{meshvpn.link.liveness}; it may be hung or cut,
  the link is not closed yet) is skipped while suspected: its circuits take
  no new stream and the streams waiting on them move
  (L{whenSuspect}, used by the stream opener), a VPN's packet circuit
  through it is closed once a circuit through another guard is ready, and
  new circuits enter through the next guard instead (L{backup});
- a middle or exit whose previous hop says its link to it is suspected
  (NEXT_HOP_SUSPECTED, L{meshvpn.onion.nexthop}: the relay's own PING went
  unanswered) is a I{suspected relay} until that hop hears it again (at
  most L{HOP_SUSPECT_S}): every circuit through it takes no new stream
  and its waiting streams move at once (not one probe per circuit), idle
  spares through it close and are rebuilt without it; nothing carrying
  streams is closed (on a loaded machine a suspicion is often wrong).  A
  circuit whose end-to-end probe went unanswered (L{circuitUnanswered})
  is retired and its middle and exit avoided for new paths.

What a hostile hop gets from NEXT_HOP_SUSPECTED, as the attacker sees it:
at most the circuit that carried it is retired, which the hop could always
do by destroying it; beyond that, a suspected relay is avoided only if the
avoidance list takes it (L{meshvpn.circuits.avoid}: 60 s, three relays at
once, three per reporting hop per ten minutes; the same budget a hop's
"cannot extend" already spends), never as a guard, never dropped from the
directory, and still used when nothing else fits.  So a liar removes at
most the three relays a false CONNECTFAILED already removes, for as long.

The backup guard, bounded (a hostile network that drops packets must not
make the client walk through its guards): it is the guard set's next
choice after the first, and suspicion moves circuits only within the
primary guards (three, sticky for months: the set Tor itself falls back
within), never to a guard outside them, so no new guard is ever exposed
by suspicion; when every primary is suspected nothing is swapped, and
only the link's verdict (it is closed as silent) marks a guard down,
which the guard set bounds on its own (its new-guards-per-day limit).  With C{warmBackup} a spare circuit through the backup
guard is kept built from the start, so moving needs no build; it is handed
out only while the first guard is suspected or down.  Without it the
backup is built at the first suspicion.
"""

import collections
import random

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from meshvpn.errors import MeshVPNError, NoPath
from meshvpn.interfaces import ICircuitManager, ICircuitSteering, ILinkLivenessObserver, IStatusSource
from meshvpn.circuits.avoid import ExtendAvoidance
from meshvpn.circuits.busy import MAX_CIRCUITS_PER_KEY, BusyCircuits
from meshvpn.circuits.buildtimeout import BuildTimeout
from meshvpn.circuits.guards import N_PRIMARY
from meshvpn.circuits.mppath import chooseSecondLeg
from meshvpn.circuits.pathselect import choosePath

_SYSTEM_RANDOM = random.SystemRandom()  # path and guard choices an observer must not predict


SPARE_REPLACE_DELAY = 0.25  # seconds between taking a spare and building its replacement
FALLBACK_BUILD_FLOOR_S = 2.0  # the least a build through a fallback guard (first one suspected) may take
FALLBACK_BUILD_FACTOR = 4  # times the median recent build a build through a fallback guard may take
LOST_GUARD_S = 30.0  # a guard whose link went is passed over this long (the primary guards' first retry)
HOP_SUSPECT_S = 30.0  # a relay its previous hop suspects is passed over this long, unless heard again sooner
# After a replacement's every attempt failed, it is tried again this long later (then given up:
# the next stream builds its own); about a minute in all, the directory's sampling period when hurried.
REPLACE_RETRY_S = (2.0, 4.0, 8.0, 16.0, 30.0)


class CircuitBuildFailed(MeshVPNError):
    """A circuit could not be built; C{hop} is the index (0 = guard) that failed, if known."""

    def __init__(self, message, hop=None, extending=None, silent=False):
        super().__init__(message)
        self.hop = hop
        # charged to no hop: the index of the hop being added when it failed
        self.extending = extending
        self.silent = silent  # the guard link closed because the guard hangs


RECENT_TIMES = 20  # build and rebuild times kept for status
SELF = b""  # the reporter of what this client saw itself, in the avoidance list
PROBE = b"probe"  # the reporter of circuits whose end-to-end probe went unanswered (its own budget)


@implementer(ICircuitManager, ICircuitSteering, ILinkLivenessObserver, IStatusSource)
class CircuitManager(service.Service):
    log = Logger()

    def __init__(
        self, reactor, relaySource, buildCircuit, guards=None, spares=1, buildTimeout=10.0,
        attempts=4, maintainEvery=5.0, rng=None, warmBackup=False,
    ):
        self.reactor = reactor
        self._directory = relaySource
        # callable(list of RelayInfo) -> list of RelayInfo, set by the control
        # plane (the user's pinned and excluded relays); None: the directory as is.
        self.relayFilter = None
        self._build = buildCircuit
        self.guards = guards
        self.spares = spares
        self.buildTimeout = buildTimeout
        self.attempts = attempts
        self.maintainEvery = maintainEvery
        self.rng = rng
        self._spare = []  # built, unassigned: (circuit, path)
        self._assigned = {}  # isolation key -> list of (circuit, path)
        self._building = 0
        self._retired = []  # (circuit, path) no new stream may use (newIdentity); closed once idle
        # The last few only: status shows 20, and a long-running client builds without end.
        self.buildTimes = collections.deque(maxlen=RECENT_TIMES)
        self.rebuildTimes = collections.deque(maxlen=RECENT_TIMES)
        self.failedPastGuard = 0
        self.fallbackGuardsTimedOut = 0  # builds through a fallback guard past their short deadline
        self._throughGuard = {}  # guard node id -> [built, failed past it]
        self.timeouts = BuildTimeout(buildTimeout)
        self.avoid = ExtendAvoidance(reactor)
        self._replacing = {}  # isolation key -> requests waiting for its replacement circuit
        self._busy = BusyCircuits(self.reactor)  # which circuits carry a bulk transfer (new streams avoid them)
        self._replaceLater = {}  # isolation key -> the pending retry of its failed replacement
        self._spareExits = []  # exits of spares being built
        self.streamTimeouts = 0
        self._loop = None
        self._observers = []
        # suspicion (link liveness): guards whose link is suspected now, the
        # streams waiting to hear of it, the backup spare through another guard
        self.warmBackup = warmBackup
        self._suspects = set()
        self._lost = {}  # guard node id -> the call that ends its suspicion (its link went)
        self._suspectWaiters = {}  # circuit -> Deferreds of whenSuspect
        self.backup = None  # (circuit, path): a spare through the next guard, handed out only while the first is suspected
        self._buildingBackup = False
        self._wantPackets = False  # a packet circuit was asked for: the backup must carry packets
        self._packetCircuits = {}  # circuit -> path, handed out for packets (a VPN holds one until it closes)
        self.suspicions = 0
        self.movedOnSuspicion = 0
        # relays a circuit's hop says it cannot hear (NEXT_HOP_SUSPECTED): node id -> (reporter, end call)
        self._hopSuspects = {}
        self.nextHopSuspicions = 0

    # -- observers

    def addObserver(self, observer):
        self._observers.append(observer)

    def _announce(self, circuit):
        """C{circuit} was just built and listed: tell the observers now, and when it closes."""
        for observer in list(self._observers):
            try:
                observer.circuitBuilt(circuit)
            except Exception:
                self.log.failure("circuit observer failed")
        if self._observers:
            circuit.whenClosed().addBoth(self._announceClosed, circuit)

    def _announceClosed(self, reason, circuit):
        for observer in list(self._observers):
            try:
                observer.circuitClosed(circuit, reason)
            except Exception:
                self.log.failure("circuit observer failed")

    # -- service

    def startService(self):
        super().startService()
        self._loop = task.LoopingCall(self._maintain)
        self._loop.clock = self.reactor
        self._loop.start(self.maintainEvery, now=True).addErrback(self._loopFailed)

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        for circuit, _ in list(self._all()):
            circuit.close("finished")
        if self.backup is not None:
            self.backup[0].close("finished")
        for call in [*self._lost.values(), *(call for _, call in self._hopSuspects.values()),
                     *self._replaceLater.values()]:
            if call.active():
                call.cancel()
        self._lost.clear()
        self._hopSuspects.clear()
        self._replaceLater.clear()

    def _loopFailed(self, failure):
        self.log.failure("circuit maintenance stopped", failure)

    def _maintain(self):
        self._closeIdleRetired()
        self._ensureBackup()
        # Start as many builds as the spare target lacks; never hold the loop on
        # them.  Counted once: a build that fails at once (no usable guard) is
        # retried at the next tick, not in a loop that never yields.
        for _ in range(self.spares - len(self._spare) - self._building):
            # through an exit no other spare uses: one exit's death leaves a warm circuit
            d = self._buildWithRetries(None, spare=True)
            d.addCallbacks(self._addSpare, self._spareFailed)

    def _addSpare(self, built):
        if not self.running:
            built[0].close("finished")
            return
        self._spare.append(built)
        built[0].whenClosed().addBoth(self._spareClosed, built)
        self._announce(built[0])

    def _spareClosed(self, reason, built):
        if built in self._spare:
            self._spare.remove(built)
            if self.running:
                self.reactor.callLater(0, self._maintain)

    def _spareFailed(self, failure):
        self.log.warn("could not build a spare circuit: {why}", why=failure.getErrorMessage())

    # -- requests

    def getCircuit(self, target=None, isolation=None, packets=False):
        """
        A circuit for C{isolation} whose exit accepts C{target} (and, with
        C{packets}, carries IP packets): an assigned one if it fits, else a
        spare, else a new one.
        """
        if packets and not self._wantPackets:
            self._wantPackets = True
            if self.backup is not None and not _accepts(self.backup[1], None, True):
                self.backup[0].close("finished")  # rebuilt to carry packets: the VPN is who moves
        d = self._getCircuit(target, isolation, packets)
        if packets:
            d.addCallback(self._handedForPackets)
        return d

    def _handedForPackets(self, circuit):
        pair = next((p for p in self._all() if p[0] is circuit), None)
        if pair is not None and circuit not in self._packetCircuits:
            self._packetCircuits[circuit] = pair[1]
            circuit.whenClosed().addBoth(lambda _: self._packetCircuits.pop(circuit, None))
        return circuit

    def _getCircuit(self, target, isolation, packets):
        bad = self._badHops()
        mine = self._assigned.get(isolation, [])
        fitting = [pair for pair in mine if _accepts(pair[1], target, packets) and not self._suspected(pair[1], bad)]
        if fitting:
            pair, busy = self._busy.choose(fitting)
            # Every fitting circuit of this key carries a bulk transfer: a new
            # stream there waits behind its cells in flight, so it takes a
            # spare as a second circuit of the same key (never another key's;
            # never a build on the stream's path; not for packets, which the
            # VPN keeps on one circuit).
            if not busy or packets or len(mine) >= MAX_CIRCUITS_PER_KEY:
                return defer.succeed(pair[0])
            quiet = self._takeSpare(target, packets, bad, apart=pair[1])
            if quiet is None:
                return defer.succeed(pair[0])
            self.log.info("a quiet circuit for a new stream: the key's circuit carries a bulk transfer")
            self._assign(isolation, quiet)
            self.reactor.callLater(SPARE_REPLACE_DELAY, self._maintain)
            return defer.succeed(quiet[0])
        for i, (circuit, path) in enumerate(self._spare):
            if _accepts(path, target, packets) and not self._suspected(path, bad):
                del self._spare[i]
                self._assign(isolation, (circuit, path))
                # The replacement spare starts a moment later: built at once, its
                # handshakes (ntor, perhaps a new TLS link) land on the same relays
                # as this stream's first cells and delayed its first byte by 5-10 ms.
                self.reactor.callLater(SPARE_REPLACE_DELAY, self._maintain)
                return defer.succeed(circuit)
        if self._suspects and self.backup is not None and _accepts(self.backup[1], target, packets) \
                and not self._suspected(self.backup[1]):
            # the first guard is suspected: the warm circuit through the next one, no build
            pair, self.backup = self.backup, None
            self._assign(isolation, pair)
            self.reactor.callLater(SPARE_REPLACE_DELAY, self._maintain)
            return defer.succeed(pair[0])
        waiting = self._replacing.get(isolation)
        if waiting is not None:
            # This key's dead circuit is being replaced: use that build, not a second one.
            d = defer.Deferred()
            waiting.append(d)
            return d.addCallback(lambda _: self._getCircuit(target, isolation, packets))
        d = self._buildWithRetries(target, packets=packets)

        def built(pair):
            self._assign(isolation, pair)
            self._announce(pair[0])
            return pair[0]

        return d.addCallback(built)

    def getSecondLeg(self, circuit):
        """
        A new circuit to C{circuit}'s exit through a guard and middle of its
        own (L{meshvpn.circuits.mppath}), for a multipath set.  It is not
        handed to other streams; it closes with the set.
        """
        return defer.Deferred.fromCoroutine(self._buildSecondLeg(circuit))

    async def _buildSecondLeg(self, circuit):
        first = next((path for pairs in self._assigned.values() for c, path in pairs if c is circuit), None)
        if first is None:
            raise NoPath("not a circuit this manager handed out")
        relays = await self._relaySource()
        guard = None
        if self.guards is not None:
            guard = self.guards.choose(relays, exclude=[r.nodeId for r in first])
            if guard is None:
                raise NoPath(f"no second guard: {self.guards.refusal}")
        path = chooseSecondLeg(relays, first, guard=guard, rng=self.rng)
        built = await self._build(path).addTimeout(self.timeouts.current(), self.reactor)
        self._countThroughGuard(path[0], failed=False)
        self._watchNextHops(built)
        return built

    def _takeSpare(self, target, packets, bad, apart):
        """
        A fitting spare, the one sharing the fewest relays with C{apart} (the
        busy circuit's path: every relay both use is a queue and a busy
        process the new stream would wait in), or C{None}.
        """
        busyRelays = {r.nodeId for r in apart}
        fitting = [(sum(r.nodeId in busyRelays for r in path), i) for i, (_, path) in enumerate(self._spare)
                   if _accepts(path, target, packets) and not self._suspected(path, bad)]
        if not fitting:
            return None
        return self._spare.pop(min(fitting)[1])

    def _assign(self, isolation, pair):
        self._assigned.setdefault(isolation, []).append(pair)
        circuit, path = pair
        self._busy.rate(circuit)  # its first sample: the next request reads its rate from here
        circuit.whenClosed().addBoth(self._closed, isolation, pair)

    def _closed(self, reason, isolation, pair):
        self._busy.forget(pair[0])
        err = getattr(reason, "value", reason)
        if getattr(err, "silent", False):
            self._hangs(pair[1][0].nodeId)
        elif getattr(err, "hop", None) == 0 and self.running:
            self._linkLost(pair[1][0].nodeId)
        if pair in self._retired:  # retired (newIdentity, a stream timeout): nothing to replace
            self._retired.remove(pair)
            return
        pairs = self._assigned.get(isolation, [])
        if pair in pairs:
            pairs.remove(pair)
            if not pairs:
                del self._assigned[isolation]
        if not self.running:
            return
        # A circuit in use died: replace it now so the next stream does not wait.
        self.log.info(
            "circuit through {path} closed ({reason}); rebuilding", path=_describe(pair[1]), reason=_reason(reason)
        )
        old = self._replaceLater.pop(isolation, None)
        if old is not None and old.active():
            old.cancel()
        self._replace(isolation, pair[1], _suspect(err, pair[1]), self.reactor.seconds(), 0)

    def _replace(self, isolation, deadPath, avoid, started, tries):
        """
        Build the replacement of the circuit on C{deadPath}; when every
        attempt fails, try again after L{REPLACE_RETRY_S} (the directory may
        know only paths through the dead relay until its next sampling,
        which the failed choice asked for), unless a stream's own build
        gave C{isolation} a circuit meanwhile.
        """
        self._replaceLater.pop(isolation, None)
        if not self.running or (tries and self._assigned.get(isolation)):
            return

        def replaced(newPair):
            took = self.reactor.seconds() - started
            self.rebuildTimes.append(took)
            self.log.info("replacement circuit through {path} ready after {took:.3f}s", path=_describe(newPair[1]), took=took)
            self._assign(isolation, newPair)
            self._announce(newPair[0])

        def failed(f):
            if tries < len(REPLACE_RETRY_S) and self.running:
                delay = REPLACE_RETRY_S[tries]
                self.log.warn("replacement circuit failed: {why}; trying again in {delay:g}s",
                              why=f.getErrorMessage(), delay=delay)
                self._replaceLater[isolation] = self.reactor.callLater(
                    delay, self._replace, isolation, deadPath, avoid, started, tries + 1)
            else:
                self.log.warn("replacement circuit failed: {why}", why=f.getErrorMessage())

        def done(_):
            for waiter in self._replacing.pop(isolation, []):
                waiter.callback(None)

        # Same kind of exit as the dead one (a VPN circuit needs a packet exit).
        packets = "packet-exit" in deadPath[-1].roles
        self._replacing.setdefault(isolation, [])
        d = self._buildWithRetries(None, avoid=avoid, packets=packets)
        d.addCallbacks(replaced, failed).addBoth(done)

    def _hangs(self, nodeId):
        """
        C{nodeId}'s link answered no PING: we saw it hang ourselves.  It is
        marked down as a guard, and avoided as a middle or exit for a while
        too (the next guard's link to it may not have noticed yet, and a
        replacement extended through it would wait out the build timeout).
        """
        if self.guards is not None:
            self.guards.markDown(nodeId)
        self.avoid.failed(SELF, nodeId)

    def circuitUnanswered(self, circuit):
        """
        C{circuit} answered no end-to-end probe (the stream opener's): a
        hung middle or exit.  It is retired as L{streamTimedOut} does, and
        its middle and exit are avoided for a while (either may hang; the
        probe's own reporter budget, L{meshvpn.circuits.avoid}), so the
        stream that moves and the spares built next go elsewhere.
        """
        pair = self._pairOf(circuit)
        retired = self.streamTimedOut(circuit)
        if pair is not None:
            for relay in pair[1][1:]:
                self.avoid.failed(PROBE, relay.nodeId)
            self._closeSparesThrough(set(self.avoid.avoided()))
        return retired

    def streamTimedOut(self, circuit):
        """
        A stream on C{circuit} got no answer in time (Tor's
        CircuitStreamTimeout): no new stream uses it; it carries its open
        streams on and closes once it has none.
        """
        self.streamTimeouts += 1
        return self._retire(circuit, "left a stream unanswered")

    def _retire(self, circuit, why):
        """No new stream uses C{circuit} (in use); it closes once it carries none. @return: C{True} if it was in use."""
        for key, pairs in list(self._assigned.items()):
            for pair in pairs:
                if pair[0] is circuit:
                    pairs.remove(pair)
                    if not pairs:
                        del self._assigned[key]
                    self._retired.append(pair)
                    self.log.info("circuit through {path} {why}; no new streams on it", path=_describe(pair[1]), why=why)
                    return True
        return False

    def _relaySource(self):
        relays = self._directory()
        if self.relayFilter is not None:
            relays.addCallback(self.relayFilter)
        return relays

    # -- steering (the control plane's actions)

    def newIdentity(self):
        """
        Tor's NEWNYM: no new stream uses a circuit built before now.  Spare
        circuits close at once (new ones are built); circuits in use are
        retired: they carry their open streams to the end and close once
        they have none (a packet circuit has none, so the VPN moves to a new
        circuit within one maintenance round).

        @return: the number of circuits closed or retired.
        """
        spare, self._spare = self._spare, []
        for circuit, _ in spare:
            circuit.close("finished")
        retired = [pair for pairs in self._assigned.values() for pair in pairs]
        self._assigned = {}
        self._retired.extend(retired)
        self._closeIdleRetired()
        if self.running:
            self.reactor.callLater(0, self._maintain)
        return len(spare) + len(retired)

    def _closeIdleRetired(self):
        for circuit, path in list(self._retired):
            streams = _circuitStatusOf(circuit, path, False).get("streams") or []
            if not streams:
                circuit.close("finished")  # _closed removes it from _retired

    # -- building

    def _buildWithRetries(self, target, exclude=(), packets=False, avoid=(), spare=False, swap=True):
        """
        C{exclude}: node ids proven bad (never used); C{avoid}: suspects,
        used only when no path fits without them; C{spare}: a spare, through
        an exit no other spare uses or is being built through (if one fits).
        """
        return defer.Deferred.fromCoroutine(self._buildLoop(target, list(exclude), packets, list(avoid), spare, swap))

    def _choosePath(self, relays, target, guard, exclude, packets, avoid, spare=False):
        """
        A path without C{exclude}, and without the soft ones if one fits:
        relays seen failing first (the avoidance list), then C{avoid} in
        its order (a dead circuit's middle, then its exit), then the exits
        of other spares.  When no path fits, the least sure are given up
        first: with two exits, one of them just dead, the replacement still
        avoids the dead relay rather than choosing at random again.
        """
        soft = []
        # suspected guards (hung or cut, perhaps) are avoided as middles and exits too
        for nodeId in [*self.avoid.avoided(), *self._suspects, *avoid,
                       *([path[-1].nodeId for _, path in self._spare] + self._spareExits if spare else [])]:
            if nodeId not in soft and nodeId not in exclude:
                soft.append(nodeId)
        for keep in range(len(soft), 0, -1):
            try:
                return choosePath(relays, target=target, guard=guard, rng=self.rng,
                                  exclude=set(exclude) | set(soft[:keep]), packets=packets)
            except NoPath:
                continue  # give up the least sure suspect and try again
        if soft:
            # Every path we know runs through a relay we would rather avoid:
            # the directory is too small (a client backs off sampling once one
            # path fits), so ask it for more now rather than at its next round.
            wanted = getattr(self._directory, "refreshSoon", None)
            if wanted is not None:
                wanted()
        return choosePath(relays, target=target, guard=guard, rng=self.rng, exclude=exclude, packets=packets)

    async def _buildLoop(self, target, exclude, packets=False, avoid=(), spare=False, swap=True):
        self._building += 1
        path = None
        try:
            lastError = None
            for attempt in range(self.attempts):
                relays = await self._relaySource()
                guard = None
                fallback = False
                if self.guards is not None:
                    # Never a random guard instead: that is how a network that
                    # makes guards fail gets a client to try all of them.
                    guard, fallback = self._guardChoice(relays, exclude, swap)
                    if guard is None:
                        raise NoPath(f"no usable guard: {self.guards.refusal}")
                if spare and path is not None:
                    self._spareExits.remove(path[-1].nodeId)
                path = None
                path = self._choosePath(relays, target, guard, exclude, packets, avoid, spare)
                if spare:
                    self._spareExits.append(path[-1].nodeId)
                started = self.reactor.seconds()
                timeout = self.timeouts.current()
                if fallback:
                    # A guard taken because the first is suspected: the same cut
                    # may have silenced it (a dial to a host that drops SYNs waits
                    # for the connect timeout), so it gets a short deadline and,
                    # past it, counts as lost like a guard whose link went; the
                    # next attempt takes another primary guard.
                    timeout = min(timeout, max(FALLBACK_BUILD_FLOOR_S, FALLBACK_BUILD_FACTOR * self._typicalBuild()))
                try:
                    circuit = await self._build(path).addTimeout(timeout, self.reactor)
                except defer.TimeoutError:
                    if fallback:
                        self.fallbackGuardsTimedOut += 1
                        self._linkLost(path[0].nodeId)
                        lastError = CircuitBuildFailed(f"build through the fallback guard of {_describe(path)} "
                                                       f"timed out after {timeout:.1f}s")
                        continue
                    # Charged to no relay: on a starved machine every build is slow.
                    self.log.info("build through {path} timed out after {t:.1f}s", path=_describe(path), t=timeout)
                    self.timeouts.timedOut()
                    lastError = CircuitBuildFailed(f"build through {_describe(path)} timed out after {timeout:.1f}s")
                    continue
                except CircuitBuildFailed as e:
                    lastError = e
                    if e.silent:
                        self._hangs(path[0].nodeId)
                    if e.hop is not None:
                        exclude.append(path[e.hop].nodeId)
                        if e.hop == 0 and self.guards is not None:
                            self.guards.markDown(path[0].nodeId)
                    elif e.extending is not None:
                        self._countThroughGuard(path[0], failed=True)
                        self.avoid.failed(path[e.extending - 1].nodeId, path[e.extending].nodeId)
                    continue
                self._watchNextHops(circuit)
                if self.guards is not None:
                    self.guards.succeeded(path[0].nodeId)
                    if self.backup is None and self.warmBackup:
                        # the first guard is confirmed now: the backup may follow, a moment later
                        self.reactor.callLater(SPARE_REPLACE_DELAY, self._ensureBackup)
                self._countThroughGuard(path[0], failed=False)
                took = self.reactor.seconds() - started
                self.buildTimes.append(took)
                self.timeouts.built(took)
                return circuit, path
            raise lastError or NoPath("no attempt made")
        finally:
            self._building -= 1
            if spare and path is not None:
                self._spareExits.remove(path[-1].nodeId)

    def _typicalBuild(self):
        """The median of the recent build times (0 before the first)."""
        recent = sorted(list(self.buildTimes)[-20:])
        return recent[len(recent) // 2] if recent else 0.0

    def _countThroughGuard(self, guard, failed):
        if guard.nodeId not in self._throughGuard and len(self._throughGuard) >= 64:
            self._throughGuard.clear()  # bounded: a client uses a few guards, not many
        counts = self._throughGuard.setdefault(guard.nodeId, [0, 0])
        counts[failed] += 1
        if failed:
            self.failedPastGuard += 1
            built, past = counts
            if past == 10 and past > built:
                self.log.warn("{past} of {n} circuit builds through guard {g} failed past it; a guard that fails "
                              "extensions on purpose chooses its clients' paths", past=past, n=built + past,
                              g=guard.nodeId.hex()[:16])

    # -- suspicion (ILinkLivenessObserver)

    def _suspected(self, path, bad=None):
        """
        Any hop of C{path} is a suspected guard (a backup may have the first
        guard as its middle), or a hop past the guard is a suspected or
        avoided relay (L{_badHops}).
        """
        if any(r.nodeId in self._suspects for r in path):
            return True
        if bad is None:
            bad = self._badHops()
        return bool(bad) and any(r.nodeId in bad for r in path[1:])

    def _badHops(self):
        """
        Relays no new stream goes through as a middle or exit now: those a
        hop suspects (until it hears them again; bounded, see
        L{meshvpn.circuits.avoid}).  The avoidance list itself only steers
        new paths: on a starved machine relays suspect each other for a
        moment, and every user behind a client rebuilding at once (the
        circuits through a relay heard again) is a build storm.
        """
        return self._hopSuspects

    def _pairOf(self, circuit):
        pair = next((p for p in self._all() if p[0] is circuit), None)
        if pair is None and self.backup is not None and self.backup[0] is circuit:
            pair = self.backup
        return pair

    def _watchNextHops(self, circuit):
        try:
            circuit.onNextHopSuspected = self._nextHopSuspected
        except AttributeError:
            pass  # a circuit that carries no relay's word (a test's stand-in)

    def _nextHopSuspected(self, circuit, hop, suspected):
        """
        Hop C{hop} of C{circuit} says its link to hop C{hop + 1} is
        suspected (or heard again).  See the module docstring for what
        follows and why a liar gains nothing.
        """
        pair = self._pairOf(circuit)
        if pair is None or hop + 1 >= len(pair[1]):
            return
        reporter, target = pair[1][hop].nodeId, pair[1][hop + 1].nodeId
        if not suspected:
            held = self._hopSuspects.get(target)
            if held is not None and held[0] == reporter:
                self._endHopSuspicion(target)
            return
        self.nextHopSuspicions += 1
        self.log.info("hop {h} of circuit {path} suspects its next hop {t}", h=hop, path=_describe(pair[1]),
                      t=target.hex()[:8])
        if target not in self._hopSuspects and not self.avoid.failed(reporter, target):
            # over the bounds: nothing beyond this circuit, which its reporter could end anyway
            self._retire(circuit, "has a hop that cannot hear the next")
            self._wakeSuspectWaiters([circuit])
            return
        if target not in self._hopSuspects:
            call = self.reactor.callLater(HOP_SUSPECT_S, self._endHopSuspicion, target)
            self._hopSuspects[target] = (reporter, call)
        through = [c for c, path in [*self._all(), *([self.backup] if self.backup else [])]
                   if any(r.nodeId == target for r in path[1:])]
        self._wakeSuspectWaiters(through)
        self._closeSparesThrough({target})
        self._movePackets()
        if self.running:
            self.reactor.callLater(0, self._maintain)

    def _endHopSuspicion(self, nodeId):
        held = self._hopSuspects.pop(nodeId, None)
        if held is not None and held[1].active():
            held[1].cancel()

    def _wakeSuspectWaiters(self, circuits):
        for circuit in circuits:
            for d in self._suspectWaiters.pop(circuit, []):
                d.callback(None)

    def _closeSparesThrough(self, bad):
        """Idle spares (and the backup) through C{bad} relays close; L{_maintain} builds others without them."""
        if not bad:
            return
        for circuit, path in list(self._spare):
            if any(r.nodeId in bad for r in path[1:]):
                circuit.close("finished")
        if self.backup is not None and any(r.nodeId in bad for r in self.backup[1][1:]):
            self.backup[0].close("finished")

    def _chooseGuard(self, relays, exclude, swap=True):
        """
        The guard set's choice, or, if its link is suspected, another
        primary guard whose link is not: suspicion moves only within the
        primary guards, never to a guard outside them (bounded; see the
        module docstring).
        """
        return self._guardChoice(relays, exclude, swap)[0]

    def _guardChoice(self, relays, exclude, swap=True):
        """@return: C{(guard, fallback)}: L{_chooseGuard}'s guard, and whether it stands in for a suspected first."""
        guard = self.guards.choose(relays, exclude=exclude)
        if guard is None or not swap or guard.nodeId not in self._suspects:
            return guard, False
        passed = [guard.nodeId]
        candidates = []
        while len(passed) < N_PRIMARY:
            other = self.guards.choose(relays, exclude=[*exclude, *passed])
            if other is None or not self.guards.isPrimary(other.nodeId):
                break
            if other.nodeId not in self._suspects:
                candidates.append(other)
            passed.append(other.nodeId)
        if not candidates:
            return guard, False
        # Spread over every primary guard not suspected, not always the next
        # one: a network that cuts two guards silently (SYNs dropped) would
        # otherwise hold every rebuild on a dial to the second cut guard until
        # its 30 s connect timeout, while the third was reachable.  Still only
        # primary guards: nothing new is exposed.
        return (self.rng or _SYSTEM_RANDOM).choice(candidates), True

    def peerSuspected(self, nodeId, suspected):
        if not suspected:
            if nodeId not in self._lost:
                self._suspects.discard(nodeId)
            return
        inUse = [pair for pair in self._all() if any(r.nodeId == nodeId for r in pair[1])]
        if self.backup is not None and any(r.nodeId == nodeId for r in self.backup[1]):
            inUse.append(self.backup)
        if not inUse:
            return  # not a guard of ours (bounded: the set holds only guards we route through)
        self._suspects.add(nodeId)
        self.suspicions += 1
        self.log.info("guard {g} suspected (a PING unanswered); {n} circuits through it skipped",
                      g=nodeId.hex()[:16], n=len(inUse))
        for circuit, path in inUse:
            for d in self._suspectWaiters.pop(circuit, []):
                d.callback(None)
        self._movePackets()
        if self.running:
            self.reactor.callLater(0, self._maintain)

    def _movePackets(self):
        """
        A packet circuit (the VPN holds one until it closes) through a
        suspected guard is closed once another that carries packets is
        ready, so the VPN's next one is that, with no build; without one it
        is left for the verdict (a suspicion may be wrong, and a VPN with
        no circuit at all is worse than one that waits).
        """
        ready = [p for p in [*self._spare, *([self.backup] if self.backup else [])]
                 if _accepts(p[1], None, True) and not self._suspected(p[1])]
        if not ready:
            return
        for circuit, path in list(self._packetCircuits.items()):
            if self._suspected(path):
                self.movedOnSuspicion += 1
                circuit.close("guard suspected")

    def _linkLost(self, nodeId):
        """
        The guard's link went (reset, a killed or restarting relay): treated
        as suspected for L{LOST_GUARD_S}, so the streams retried now take the
        backup with no build instead of a rebuild through a guard that may
        refuse the connection; after that it is chosen again as usual.
        """
        if nodeId in self._suspects:
            return
        self._suspects.add(nodeId)
        self.suspicions += 1

        def expire():
            if nodeId in self._lost:
                del self._lost[nodeId]
                self._suspects.discard(nodeId)

        old = self._lost.pop(nodeId, None)
        if old is not None and old.active():
            old.cancel()
        self._lost[nodeId] = self.reactor.callLater(LOST_GUARD_S, expire)
        self.reactor.callLater(0, self._maintain)

    def whenSuspect(self, circuit):
        pair = next((p for p in self._all() if p[0] is circuit), None)
        if pair is not None and self._suspected(pair[1]):
            return defer.succeed(None)

        def cancel(d):
            waiters = self._suspectWaiters.get(circuit, [])
            if d in waiters:
                waiters.remove(d)
                if not waiters:
                    del self._suspectWaiters[circuit]

        d = defer.Deferred(cancel)
        waiters = self._suspectWaiters.get(circuit)
        if waiters is None:
            self._suspectWaiters[circuit] = waiters = []
            circuit.whenClosed().addBoth(lambda _: self._suspectWaiters.pop(circuit, None))
        waiters.append(d)
        return d

    def streamMoved(self):
        """The opener moved a waiting stream off a suspected circuit (counted for status)."""
        self.movedOnSuspicion += 1

    def _ensureBackup(self):
        if self.running and self.guards is not None and (self.warmBackup or self._suspects) \
                and self.backup is None and not self._buildingBackup:
            self._buildingBackup = True
            defer.Deferred.fromCoroutine(self._buildBackup()).addBoth(self._backupDone)

    async def _buildBackup(self):
        """A spare through the guard after the first (never a third: see the module docstring)."""
        if not any(self.guards.confirmed(g) for g in self.guards.guardIds()):
            return  # no circuit built yet: nothing to back up (and no wait on the directory)
        relays = await self._relaySource()
        first = self.guards.choose(relays)
        if first is None or not self.guards.confirmed(first.nodeId):
            # not before a circuit went through the first: built first, the
            # backup's guard would be confirmed ahead of it and become the first
            return
        second = self.guards.choose(relays, exclude=[first.nodeId])
        if second is None or second.nodeId in self._suspects:
            return
        # nowhere in its path: a backup with the first guard as its middle fails with it
        circuit, path = await self._buildWithRetries(None, exclude=[first.nodeId], packets=self._wantPackets,
                                                     swap=False)
        if not self.running or self.backup is not None:
            circuit.close("finished")
            return
        self.backup = (circuit, path)
        circuit.whenClosed().addBoth(self._backupClosed, self.backup)
        self._announce(circuit)
        self._movePackets()

    def _backupDone(self, result):
        self._buildingBackup = False
        if isinstance(result, Failure):
            # NoPath: the directory is still too small for a path without the first guard (tried again later)
            log = self.log.debug if result.check(NoPath) else self.log.info
            log("could not build a circuit through a backup guard: {why}", why=result.getErrorMessage())

    def _backupClosed(self, reason, pair):
        if self.backup is pair:
            self.backup = None

    # -- status

    def _all(self):
        yield from self._spare
        for pairs in self._assigned.values():
            yield from pairs
        yield from self._retired

    def circuits(self):
        return [c for c, _ in self._all()]

    def _circuitStatus(self, circuit, path):
        entry = _circuitStatusOf(circuit, path, (circuit, path) in self._spare)
        if (circuit, path) in self._retired:
            entry["retired"] = True
        return entry

    def status(self):
        return {
            "circuits": [self._circuitStatus(c, path) for c, path in self._all()],
            "suspected_guards": [g.hex() for g in self._suspects],
            "suspected_relays": len(self._hopSuspects),
            "next_hop_suspicions": self.nextHopSuspicions,
            "suspicions": self.suspicions,
            "moved_on_suspicion": self.movedOnSuspicion,
            "backup_guard": self.backup[1][0].nodeId.hex() if self.backup is not None else None,
            "building": self._building,
            "failed_past_guard": self.failedPastGuard,
            "fallback_guards_timed_out": self.fallbackGuardsTimedOut,
            "build_timeout_s": round(self.timeouts.current(), 2),
            "stream_timeouts": self.streamTimeouts,
            **self.avoid.status(),
            "build_times_s": list(self.buildTimes),
            "rebuild_times_s": list(self.rebuildTimes),
            **({"guards": self.guards.status()} if self.guards is not None else {}),
        }


def _circuitStatusOf(circuit, path, spare):
    entry = {"path": [r.nodeId.hex() for r in path], "spare": spare,
             # per hop: keys from the hybrid X25519 + ML-KEM-768 handshake (meshvpn.onion.circhandshake)
             "post_quantum_hops": list(getattr(circuit, "postQuantumHops", ())),
             # per hop: its relay crypto ("cgo": tagging-resistant; "tor1": the original)
             "relay_crypto": list(getattr(circuit, "relayCrypto", ()))}
    if circuit.streamHandler is not None:
        entry.update(circuit.streamHandler.status())
    return entry


def _suspect(reason, path):
    """
    Whom the replacement of a circuit that died of C{reason} avoids (softly:
    used when nothing else fits).  A hop that provably broke the protocol
    (C{reason.hop}: its authenticated cell did) is avoided; the guard is
    kept (changing guards is what an attacker wants; a hung guard is marked
    down by the guard set instead), so a guard that kills a circuit gets no
    innocent relay excluded.  Otherwise (a DESTROY from the network: the
    client cannot tell which relay died) both the middle and the exit: a
    dead exit's users were rebuilt through it again one time in four.
    """
    hop = getattr(getattr(reason, "value", reason), "hop", None)
    if hop is None:
        return [r.nodeId for r in path[1:]]
    return [] if hop == 0 else [path[hop].nodeId]


def _accepts(path, target, packets=False):
    exit = path[-1]
    if packets and "packet-exit" not in exit.roles:
        return False
    return target is None or exit.exitAccepts is None or exit.exitAccepts(target)


def _describe(path):
    return " -> ".join(r.nodeId.hex()[:8] for r in path)


def _reason(reason):
    return getattr(reason, "getErrorMessage", lambda: str(reason))()
