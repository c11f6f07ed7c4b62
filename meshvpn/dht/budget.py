"""What a DHT node spends on others: per-source and global budgets that drop, never queue.

Three limits stand between a datagram and work done for its sender:
  - a token bucket per source IP (L{SourceLimiter}); at most C{maxSources}
    are tracked, and sources beyond that share one overflow bucket, so a
    flood of spoofed sources can neither reset a flooder's bucket nor earn a
    fresh burst each;
  - a global budget of answers per second (all sources together);
  - a global budget of Ed25519 operations done for others per second
    (signing proofs, checking STOREd records), so CPU spent on strangers
    is bounded whatever they send.
A request over any limit is dropped and counted; nothing waits in a queue.
"""


class Bucket:
    """A token bucket that refuses when empty: C{rate} per second, at most C{burst} saved."""

    __slots__ = ("rate", "burst", "tokens", "last")

    def __init__(self, rate, burst, now=0.0):
        self.rate = float(rate)
        self.burst = float(burst)
        self.tokens = float(burst)
        self.last = now

    def take(self, now, amount=1.0):
        """@return: C{True} (and charge C{amount}) if the bucket holds it."""
        if now > self.last:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now
        if self.tokens < amount:
            return False
        self.tokens -= amount
        return True

    def fullAt(self, now):
        """@return: C{True} if the bucket has refilled completely by C{now} (forgetting it loses nothing)."""
        return self.tokens + (now - self.last) * self.rate >= self.burst


class SourceLimiter:
    """Per-source-IP token buckets, bounded: C{maxSources} tracked, the rest share one overflow bucket."""

    def __init__(self, rate, burst, maxSources=4096, overflowShare=4):
        self.rate = rate
        self.burst = burst
        self.maxSources = maxSources
        self._buckets = {}
        # untracked sources share what a few sources would get
        self.overflow = Bucket(rate * overflowShare, burst * overflowShare)
        self._lastPrune = None

    def allow(self, ip, now):
        b = self._buckets.get(ip)
        if b is None:
            if len(self._buckets) >= self.maxSources:
                self._prune(now)
            if len(self._buckets) >= self.maxSources:
                return self.overflow.take(now)
            b = self._buckets[ip] = Bucket(self.rate, self.burst, now)
        return b.take(now)

    def _prune(self, now):
        # At most once per refill time: a full table is not rescanned per datagram.
        if self._lastPrune is not None and now - self._lastPrune < self.burst / self.rate:
            return
        self._lastPrune = now
        for ip in [ip for ip, b in self._buckets.items() if b.fullAt(now)]:
            del self._buckets[ip]

    def __len__(self):
        return len(self._buckets)
