"""Token buckets: bandwidth limits that pause, never drop, and admission limits that refuse.

The one token bucket of the code base, used two ways:

- bandwidth (L{TokenBucket.consume}): a node has one bucket, each circuit
  has its own, and a byte must pass both (hierarchical).  Bytes are always
  let through and charged; a bucket in debt makes its circuit pause the
  producers feeding it (the exit's TCP connection to the target, a link's
  reader) until the debt is refilled.  So a limit turns into TCP
  backpressure end to end instead of loss.  Per-circuit byte counts are
  kept for status (``meshvpn status``).
- admission (L{TokenBucket.tryConsume}): requests from strangers (STUN
  Binding requests, link handshakes) are answered while tokens are there
  and refused otherwise; L{BucketTable} keeps one bucket per source in a
  bounded table, so a flood of sources cannot grow memory.

Time comes only from C{IReactorTime}, so tests drive it with C{task.Clock}.

Per-source admission counts an IPv6 source by its /64 (L{sourceKey}): one
host is normally given a whole /64, and counting each of its 2^64
addresses apart would let it walk past any per-address limit.
"""

import ipaddress
from collections import OrderedDict

from zope.interface import implementer

from meshvpn.interfaces import IStatusSource, ITokenBucket

MAX_CIRCUITS = 65536
SOURCE_PREFIX6 = 64


def sourceKey(host):
    """
    What a per-source limit counts C{host} (an IP literal) under: an IPv4
    address itself, an IPv6 address's /64 (as C{"2001:db8:1:2::/64"}), an
    IPv4-mapped IPv6 address as its IPv4.  Anything else comes back as it is.
    """
    if not host or ":" not in host:
        return host
    try:
        ip = ipaddress.IPv6Address(host.split("%", 1)[0])
    except ValueError:
        return host
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((int(ip) >> (128 - SOURCE_PREFIX6) << (128 - SOURCE_PREFIX6), SOURCE_PREFIX6)))


@implementer(ITokenBucket)
class TokenBucket:
    """
    C{rate} bytes per second, at most C{burst} bytes saved up.  C{rate=None}
    means unlimited (consume never asks to wait).
    """

    # Admission control keeps one per source address: thousands of them.
    __slots__ = ("reactor", "rate", "burst", "_tokens", "_last")

    def __init__(self, reactor, rate, burst=None):
        if rate is not None and rate <= 0:
            raise ValueError("rate must be positive (or None for unlimited)")
        self.reactor = reactor
        self.rate = rate
        self.burst = burst if burst is not None else (rate or 0)
        if rate is not None and self.burst <= 0:
            raise ValueError("burst must be positive")
        self._tokens = float(self.burst)
        self._last = reactor.seconds()

    def _refill(self):
        now = self.reactor.seconds()
        if now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def available(self):
        if self.rate is None:
            return float("inf")
        self._refill()
        return self._tokens

    def reconfigure(self, rate, burst=None):
        """
        New limits from now on (a reload): tokens already saved stay, up to
        the new burst, so raising a limit never grants a burst on the spot.
        """
        if rate is not None and rate <= 0:
            raise ValueError("rate must be positive (or None for unlimited)")
        if self.rate is not None:
            self._refill()
        burst = burst if burst is not None else (rate or 0)
        if rate is not None and burst <= 0:
            raise ValueError("burst must be positive")
        if self.rate is None:
            self._tokens = float(burst)
        self.rate, self.burst = rate, burst
        self._tokens = min(self._tokens, float(burst))
        self._last = self.reactor.seconds()

    def tryConsume(self, amount=1):
        """Take C{amount} tokens if they are there: C{True}; else take nothing: C{False}."""
        if self.rate is None:
            return True
        self._refill()
        if self._tokens < amount:
            return False
        self._tokens -= amount
        return True

    def consume(self, amount):
        if self.rate is None:
            return 0.0
        self._refill()
        self._tokens -= amount
        if self._tokens >= 0:
            return 0.0
        return -self._tokens / self.rate


class BucketTable:
    """
    A L{TokenBucket} per key (a source IP, say) for admission control, in a
    table of at most C{maxKeys}: the key used least recently is forgotten
    first, and a forgotten key starts again with a full bucket.
    """

    def __init__(self, reactor, rate, burst, maxKeys):
        if maxKeys < 1:
            raise ValueError("maxKeys must be positive")
        self.reactor = reactor
        self.rate, self.burst, self.maxKeys = rate, burst, maxKeys
        self._buckets = OrderedDict()

    def tryConsume(self, key, amount=1):
        """L{TokenBucket.tryConsume} on C{key}'s bucket, made full on first use."""
        bucket = self._buckets.get(key)
        if bucket is None:
            while len(self._buckets) >= self.maxKeys:
                self._buckets.popitem(last=False)
            bucket = self._buckets[key] = TokenBucket(self.reactor, self.rate, self.burst)
        else:
            self._buckets.move_to_end(key)
        return bucket.tryConsume(amount)

    def __len__(self):
        return len(self._buckets)


def _debtWait(bucket):
    if bucket.rate is None:
        return 0.0
    return max(0.0, -bucket.available() / bucket.rate)


class CircuitThrottle:
    """
    One circuit's share: its own bucket under the node's.  Producers feeding
    the circuit (one per stream, say) are paused together while either
    bucket is in debt.
    """

    def __init__(self, limiter, circuitId, bucket):
        self.limiter = limiter
        self.circuitId = circuitId
        self.bucket = bucket
        self.bytesIn = 0
        self.bytesOut = 0
        self.pauses = 0
        self.producers = []
        self.paused = False
        self._resumeCall = None

    def addProducer(self, producer):
        """C{producer} (an C{IPushProducer}) feeds this circuit; pause it with the circuit."""
        if producer not in self.producers:
            self.producers.append(producer)
            if self.paused:
                producer.pauseProducing()

    def removeProducer(self, producer):
        if producer in self.producers:
            self.producers.remove(producer)

    def account(self, nbytes, direction="out"):
        """
        Charge C{nbytes} to the circuit and the node (they have already
        passed); pause the producers if either bucket went into debt.

        @param direction: C{"in"} (towards the client) or C{"out"}.
        @return: the seconds until the producers resume (0: not paused).
        """
        if direction == "in":
            self.bytesIn += nbytes
        else:
            self.bytesOut += nbytes
        wait = max(self.bucket.consume(nbytes), self.limiter.nodeBucket.consume(nbytes))
        self.limiter.accounted(nbytes, direction)
        if wait > 0:
            self._pauseFor(wait)
        return wait

    def _pauseFor(self, wait):
        reactor = self.limiter.reactor
        if self._resumeCall is not None and self._resumeCall.active():
            due = reactor.seconds() + wait
            if due > self._resumeCall.getTime():
                self._resumeCall.reset(wait)
            return
        self.paused = True
        self.pauses += 1
        for p in list(self.producers):
            p.pauseProducing()
        self._resumeCall = reactor.callLater(wait, self._resume)

    def wake(self):
        """A bucket's state changed from outside (credit arrived, say): look again now, not when the pause ends."""
        if self._resumeCall is not None and self._resumeCall.active():
            self._resumeCall.reset(0)

    def _resume(self):
        self._resumeCall = None
        # The node bucket may still be in debt from other circuits' bytes.
        wait = max(_debtWait(self.bucket), _debtWait(self.limiter.nodeBucket))
        if wait > 0:
            self._resumeCall = self.limiter.reactor.callLater(wait, self._resume)
            return
        self.paused = False
        for p in list(self.producers):
            p.resumeProducing()

    def close(self):
        if self._resumeCall is not None and self._resumeCall.active():
            self._resumeCall.cancel()
        self._resumeCall = None
        self.producers = []
        self.limiter._forget(self.circuitId)

    def status(self):
        return {"bytes_in": self.bytesIn, "bytes_out": self.bytesOut, "paused": self.paused, "pauses": self.pauses}


@implementer(IStatusSource)
class BandwidthLimiter:
    """
    The node's limits: C{rate}/C{burst} for the whole node and
    C{circuitRate}/C{circuitBurst} for each circuit (C{None}: unlimited).
    """

    def __init__(self, reactor, rate=None, burst=None, circuitRate=None, circuitBurst=None, maxCircuits=MAX_CIRCUITS):
        self.reactor = reactor
        self.nodeBucket = TokenBucket(reactor, rate, burst)
        self.circuitRate = circuitRate
        self.circuitBurst = circuitBurst
        self.maxCircuits = maxCircuits
        self._circuits = {}
        self.bytesIn = 0
        self.bytesOut = 0

    def circuit(self, circuitId):
        """
        @param circuitId: the circuit itself (or another key that lives
            exactly as long as it): never C{id(circuit)}, which Python gives
            to the next object once the circuit is freed.
        @return: the L{CircuitThrottle} of C{circuitId}, made on first use;
            L{release} it when the circuit closes.
        @raise OverflowError: more than C{maxCircuits} circuits are tracked
            (the circuit layer should refuse the circuit: RESOURCELIMIT).
        """
        throttle = self._circuits.get(circuitId)
        if throttle is None:
            if len(self._circuits) >= self.maxCircuits:
                raise OverflowError("too many circuits for the bandwidth limiter")
            bucket = TokenBucket(self.reactor, self.circuitRate, self.circuitBurst)
            throttle = self._circuits[circuitId] = CircuitThrottle(self, circuitId, bucket)
        return throttle

    def accounted(self, nbytes, direction):
        if direction == "in":
            self.bytesIn += nbytes
        else:
            self.bytesOut += nbytes

    def release(self, circuitId):
        """The circuit closed: stop its throttle and forget it (no-op if it had none)."""
        throttle = self._circuits.get(circuitId)
        if throttle is not None:
            throttle.close()

    def tracked(self):
        return len(self._circuits)

    def _forget(self, circuitId):
        self._circuits.pop(circuitId, None)

    def status(self):
        return {
            "rate": self.nodeBucket.rate,
            "burst": self.nodeBucket.burst,
            "circuit_rate": self.circuitRate,
            "circuit_burst": self.circuitBurst,
            "bytes_in": self.bytesIn,
            "bytes_out": self.bytesOut,
            "circuits": {str(getattr(cid, "prevId", cid)): t.status() for cid, t in self._circuits.items()},
        }
