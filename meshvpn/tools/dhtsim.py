"""An in-memory network that runs the real DHT code (L{meshvpn.dht.rpc.DHTNode}) at scale.

Datagrams are real encoded bytes delivered through a virtual UDP network with
latency and loss on a virtual clock.  L{HeapClock} implements
C{IReactorTime} with a heap: C{task.Clock} re-sorts its whole call list on
every C{callLater}, which is fine for unit tests but quadratic with the
hundreds of thousands of timers a 2000-node run needs.  Unit tests use this
network on a plain C{task.Clock}.
"""

import heapq
import ipaddress
import random

from nacl.public import PrivateKey
from nacl.signing import SigningKey
from zope.interface import implementer
from twisted.internet.error import AlreadyCalled, AlreadyCancelled
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from meshvpn.dht.directory import DirectoryPolicy
from meshvpn.dht.pow import solve
from meshvpn.dht.records import RecordStore
from meshvpn.dht.rpc import DHTNode
from meshvpn.identity import NodeIdentity


@implementer(IDelayedCall)
class _Call:
    __slots__ = ("time", "seq", "f", "args", "kw", "cancelled", "called", "clock")

    def getTime(self):
        return self.time

    def cancel(self):
        if self.cancelled:
            raise AlreadyCancelled()
        if self.called:
            raise AlreadyCalled()
        self.cancelled = True

    def delay(self, secondsLater):
        self.reset(self.time + secondsLater - self.clock.now)

    def reset(self, secondsFromNow):
        # lazy: the old heap entry no longer matches our seq and is skipped
        self.clock._push(self, secondsFromNow)

    def active(self):
        return not (self.cancelled or self.called)


@implementer(IReactorTime)
class HeapClock:
    """A virtual clock: C{callLater} is O(log n), C{cancel} O(1) (lazy deletion)."""

    def __init__(self, start=0.0):
        self.now = start
        self._heap = []
        self._seq = 0

    def seconds(self):
        return self.now

    def _push(self, c, delay):
        c.time = self.now + delay if delay > 0 else self.now
        self._seq += 1
        c.seq = self._seq
        heapq.heappush(self._heap, (c.time, c.seq, c))

    def callLater(self, delay, f, *args, **kw):
        c = _Call()
        c.f, c.args, c.kw = f, args, kw
        c.cancelled = c.called = False
        c.clock = self
        self._push(c, delay)
        return c

    def getDelayedCalls(self):
        return [c for _, seq, c in self._heap if c.seq == seq and c.active()]

    def runUntil(self, t):
        """Run every call due up to time C{t}, then set the clock to C{t}."""
        heap = self._heap
        pop = heapq.heappop
        while heap and heap[0][0] <= t:
            when, seq, c = pop(heap)
            if c.cancelled or c.seq != seq:
                continue
            self.now = when
            c.called = True
            c.f(*c.args, **c.kw)
        self.now = max(self.now, t)

    def advance(self, amount):
        self.runUntil(self.now + amount)


class SimNetwork:
    """
    Virtual UDP: C{send(src, data, dst)} delivers C{data} to the node bound at
    C{dst} after C{latency} seconds (one way), or drops it with probability
    C{loss}.  Nodes that left simply stop receiving.
    """

    def __init__(self, clock, latency=0.05, loss=0.0, rng=None):
        self.clock = clock
        self.latency = latency
        self.loss = loss
        self.rng = rng or random.Random()
        self.handlers = {}
        self.datagrams = 0
        self.dropped = 0

    def bind(self, addr, handler):
        self.handlers[addr] = handler

    def unbind(self, addr):
        self.handlers.pop(addr, None)

    def sender(self, src):
        def send(data, dst):
            self.datagrams += 1
            if self.loss and self.rng.random() < self.loss:
                self.dropped += 1
                return
            self.clock.callLater(self.latency, self._deliver, src, data, dst)

        return send

    def _deliver(self, src, data, dst):
        h = self.handlers.get(dst)
        if h is not None:
            h.datagramReceived(data, src)


class AddressPool:
    """Unique fake public addresses from 198.18.0.0/15 (never routed, per our network rule)."""

    def __init__(self, rng):
        self.rng = rng
        self.used = set()
        self.base = int(ipaddress.IPv4Address("198.18.0.0"))

    def allocate(self):
        while True:
            ip = str(ipaddress.IPv4Address(self.base + self.rng.randrange(1, 2**17 - 1)))
            if ip not in self.used:
                self.used.add(ip)
                return (ip, 4000)


def simIdentity(rng):
    """Keys from the run's seeded rng, so a simulation with a seed is reproducible."""
    return NodeIdentity(SigningKey(rng.randbytes(32)), PrivateKey(rng.randbytes(32)))


def makeStore(config):
    return RecordStore(config.maxRecords, config.maxPerKey, config.maxPerPublisher,
                       admit=DirectoryPolicy(config.exemptLoopback))


def makeSimNode(network, clock, address, config, clientMode=False, identity=None, rng=None, work=None, cls=DHTNode):
    """
    A real L{DHTNode} (or subclass C{cls}) bound to C{address} on C{network}.
    It does the proof of work the configuration asks for, unless C{work} is given.
    """
    rng = rng or network.rng
    if identity is None:
        identity = simIdentity(rng)
    if work is None:
        work = solve(identity.identityPublicKey, 0 if clientMode else config.powBits)
    node = cls(
        clock,
        identity,
        network.sender(address),
        makeStore(config),
        config,
        clientMode=clientMode,
        txid=lambda: rng.getrandbits(64).to_bytes(8, "big"),
        rng=rng,
        work=work,
    )
    node.address = address
    network.bind(address, node)
    return node
