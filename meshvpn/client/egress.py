"""The egress gate of a capturing VPN client (L{IDirectEgress}).

While C{meshvpn-client --tun} captures the machine, everything the node
itself sends outside the tunnel -- the TCP link to its guard, the DHT, STUN
and datagram-link traffic of its UDP socket -- must take the route it would
take without the tunnel, and be let through the kill switch.  The link
manager awaits L{EgressGate.allow} before it dials; the UDP multiplexer asks
L{EgressGate.passes} before each datagram and holds the ones to new
destinations until they are allowed.  So a host route and a kill-switch
exception exist *before* the first packet to any destination, however it
was learned (bootstrap list, DHT responses, the directory).

Requests made in one reactor turn become one batch: one route-table dump,
the host routes, one C{nft} call, then every waiter fires.  Every few
seconds (L{EgressGate.tick}) the routes are looked up again (so they follow
a new default gateway) and entries unused for C{idle} seconds are removed
(route and kill-switch element), unless C{pinned()} still names them
(bootstrap nodes, relays in the directory, open links).  At most
C{maxEntries} entries exist; when full, the least recently used unpinned
one makes room, and if there is none the request is refused.
"""

from twisted.internet import defer, task
from twisted.logger import Logger
from zope.interface import implementer

from meshvpn.client.capture import directAddress
from meshvpn.errors import EgressRefused
from meshvpn.interfaces import IDirectEgress, IStatusSource

IDLE = 300.0
MAX_ENTRIES = 1024
TICK = 2.0
MAX_HELD = 256  # requests an L{EgressHold} keeps before the gate is up (a start is one turn: a few dials)


def _key(protocol, host, port):
    """
    C{(protocol, ip, port)} normalised (either family), or C{None} if it
    needs no gate (loopback, link-local, a name: L{directAddress}).
    """
    ip = directAddress(host)
    if ip is None or not isinstance(port, int) or not 0 < port < 65536:
        return None
    return (protocol, ip, port)


@implementer(IDirectEgress, IStatusSource)
class EgressGate:
    """
    @param routes: the L{meshvpn.interfaces.IRouteController} that adds and
        removes host routes and kill-switch exceptions.
    @param pinned: C{callable() -> iterable of (protocol, host, port)} never
        expired while listed.
    """

    log = Logger()

    def __init__(self, reactor, routes, pinned=lambda: (), idle=IDLE, maxEntries=MAX_ENTRIES, every=TICK):
        self.reactor = reactor
        self.routes = routes
        self.pinned = pinned
        self.idle = idle
        self.maxEntries = maxEntries
        self.every = every
        self._open = {}  # key -> when last seen in use
        self._used = set()  # keys used since the last tick
        self._waiting = {}  # key -> [Deferred], allowed in the next batch
        self._batch = None
        self._loop = None
        self.counters = {"allowed": 0, "expired": 0, "evicted": 0, "refused": 0, "batches": 0}

    # -- lifetime

    def start(self, already=()):
        """
        Begin ticking; C{already} are the entries the route controller
        kept at capture (the bootstrap nodes).
        """
        now = self.reactor.seconds()
        for item in already:
            key = _key(*item)
            if key is not None:
                self._open[key] = now
        self._loop = task.LoopingCall(self.tick)
        self._loop.clock = self.reactor
        self._loop.start(self.every, now=False).addErrback(lambda f: self.log.failure("egress gate stopped", f))

    def stop(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._batch is not None and self._batch.active():
            self._batch.cancel()
        self._batch = None
        waiting, self._waiting = self._waiting, {}
        for ds in waiting.values():
            for d in ds:
                d.errback(EgressRefused("the VPN is stopping"))
        self._open.clear()

    # -- IDirectEgress

    def passes(self, protocol, address):
        key = (protocol, address[0], address[1])
        if key not in self._open:
            # Per datagram, so the address as the socket spells it is tried first; only a miss
            # pays for normalising (an IPv6 address written out in full, an IPv4-mapped one).
            key = _key(protocol, address[0], address[1])
            if key not in self._open:
                return False
        self._used.add(key)
        return True

    def allow(self, destinations):
        waits = []
        for protocol, host, port in destinations:
            key = _key(protocol, host, port)
            if key is None:
                continue
            if key in self._open:
                self._used.add(key)
                continue
            waiters = self._waiting.get(key)
            if waiters is None:
                if len(self._open) + len(self._waiting) >= self.maxEntries and not self._evict():
                    self.counters["refused"] += 1
                    return defer.fail(EgressRefused(f"too many direct destinations ({self.maxEntries})"))
                waiters = self._waiting[key] = []
            d = defer.Deferred()
            waiters.append(d)
            waits.append(d)
        if not waits:
            return defer.succeed(None)
        if self._batch is None:
            self._batch = self.reactor.callLater(0, self._apply)
        if len(waits) == 1:
            return waits[0]
        return defer.gatherResults(waits, consumeErrors=True).addCallbacks(lambda _: None, _firstError)

    # -- batches

    def _apply(self):
        self._batch = None
        waiting, self._waiting = self._waiting, {}
        if not waiting:
            return
        self.counters["batches"] += 1
        try:
            failed = set(self.routes.keep(set(waiting)))
        except Exception:
            self.log.failure("could not let {n} destinations out of the tunnel", n=len(waiting))
            failed = set(waiting)
        now = self.reactor.seconds()
        for key, ds in waiting.items():
            if key in failed:
                self.counters["refused"] += 1
                for d in ds:
                    d.errback(EgressRefused(f"no route to {key[1]} outside the tunnel"))
                continue
            self._open[key] = now
            self.counters["allowed"] += 1
            for d in ds:
                d.callback(None)

    # -- upkeep

    def tick(self):
        """Follow route changes, then expire what has not been used for C{idle} seconds."""
        try:
            self.routes.refresh()
        except Exception:
            self.log.failure("could not look the host routes up again")
        now = self.reactor.seconds()
        self._markUsed(now)
        stale = [k for k, seen in self._open.items() if now - seen > self.idle]
        if stale:
            pinned = self._pinnedKeys()
            stale = [k for k in stale if k not in pinned]
        if stale:
            self._remove(stale)
            self.counters["expired"] += len(stale)

    def _markUsed(self, now):
        for key in self._used:
            if key in self._open:
                self._open[key] = now
        self._used.clear()

    def _pinnedKeys(self):
        try:
            return {k for k in (_key(*item) for item in self.pinned()) if k is not None}
        except Exception:
            self.log.failure("could not list the pinned direct destinations")
            return set(self._open)  # expire nothing rather than something in use

    def _evict(self):
        """Make room for one entry: drop the least recently used unpinned one. @return: whether it did."""
        self._markUsed(self.reactor.seconds())
        pinned = self._pinnedKeys()
        candidates = sorted((seen, k) for k, seen in self._open.items() if k not in pinned)
        if not candidates:
            return False
        self._remove([candidates[0][1]])
        self.counters["evicted"] += 1
        return True

    def _remove(self, keys):
        for k in keys:
            self._open.pop(k, None)
        try:
            self.routes.unkeep(set(keys))
        except Exception:
            self.log.failure("could not remove {n} direct destinations", n=len(keys))

    def status(self):
        return {"direct_destinations": len(self._open), "waiting": len(self._waiting), **self.counters}


def _firstError(failure):
    failure.trap(defer.FirstError)
    return failure.value.subFailure


@implementer(IDirectEgress)
class EgressHold:
    """
    What a capturing VPN client's egress users consult from the moment it
    is wired until its gate is up: nothing passes, every C{allow} waits.

    Services start one after another in one reactor turn, and the circuit
    manager starts before the VPN: with relays known at start (last run's,
    or a bridge's), its first spare dialled the guard before the gate
    existed, outside any host route, and the capture that followed cut
    that half-open connection off.  Installed at wiring time
    (L{meshvpn.client.vpn.TunClient}), the hold makes the order safe
    whatever starts first: a dial waits for L{release}, which hands it to
    the gate (or, C{None}: no capture after all, straight out).
    """

    def __init__(self):
        self._waiting = {}  # Deferred -> destinations, in the order asked
        self.held = 0

    def start(self, already=()):
        pass  # nothing to tick: the hold only waits for the gate

    def stop(self):
        waiting, self._waiting = self._waiting, {}
        for d in waiting:
            d.errback(EgressRefused("the VPN is stopping"))

    def status(self):
        return {"held": self.held, "waiting": len(self._waiting)}

    def passes(self, protocol, address):
        return False

    def allow(self, destinations):
        if len(self._waiting) >= MAX_HELD:
            return defer.fail(EgressRefused("the VPN is not capturing yet and too much waits for it"))
        d = defer.Deferred(lambda d: self._waiting.pop(d, None))  # given up on (the dial timed out)
        self._waiting[d] = list(destinations)
        self.held += 1
        return d

    def release(self, gate):
        """The gate is up (C{gate}), or there will be none (C{None}): what waited goes on."""
        waiting, self._waiting = self._waiting, {}
        for d, destinations in waiting.items():
            if gate is None:
                d.callback(None)
            else:
                gate.allow(destinations).chainDeferred(d)
