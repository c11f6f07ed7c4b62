"""A relay's bandwidth limits on the cells it reads, node-wide and per circuit, with backpressure.

As Tor's global read bucket does: every batch of cells read from a link is
charged to the node's token bucket, and each circuit's relay cells in the
batch to that circuit's bucket; a link whose batch puts either in debt is
paused (its TCP window then closes, so the sender slows down) until the
debt is paid.  Nothing is dropped.  Pausing the link also holds the other
circuits on it for that while: a relay keeps no queue per circuit, so this
is the price of per-circuit limits without per-circuit buffering.  Charging
happens once per batch, never per cell.
"""

import weakref

from zope.interface import implementer


from meshvpn.interfaces import IStatusSource
from meshvpn.link.cellsize import CELL_SIZE
from meshvpn.ratelimit import TokenBucket


@implementer(IStatusSource)
class LinkReadLimiter:
    def __init__(self, reactor, rate, burst=None, circuitRate=None, circuitBurst=None):
        self.reactor = reactor
        self.bucket = TokenBucket(reactor, rate, burst)
        self.circuitRate = circuitRate
        self.circuitBurst = circuitBurst
        # Circuits vanish from here when the switch forgets them.
        self._circuits = weakref.WeakKeyDictionary()  # circuit -> [TokenBucket, bytes]
        self.paused = set()
        self._call = None
        self.bytesRead = 0
        self.pauses = 0

    def charge(self, channel, cells, perCircuit=None):
        """
        Charge a batch of C{cells} cells read on C{channel} (an
        L{meshvpn.interfaces.IChannel}); pause its reading while in debt.

        @param perCircuit: C{{circuit: relay cells}} read in this batch, when
            circuits are limited.
        """
        nbytes = cells * CELL_SIZE
        self.bytesRead += nbytes
        wait = self.bucket.consume(nbytes)
        for circuit, count in (perCircuit or {}).items():
            entry = self._circuits.get(circuit)
            if entry is None:
                entry = self._circuits[circuit] = [TokenBucket(self.reactor, self.circuitRate, self.circuitBurst), 0]
            entry[1] += count * CELL_SIZE
            wait = max(wait, entry[0].consume(count * CELL_SIZE))
        if wait > 0:
            if channel not in self.paused:
                self.paused.add(channel)
                self.pauses += 1
                channel.pauseReading(self)
            if self._call is None or not self._call.active():
                self._call = self.reactor.callLater(wait, self._resume)

    def _resume(self):
        self._call = None
        waits = [-self.bucket.available() / self.bucket.rate] if self.bucket.rate else []
        waits += [-b.available() / b.rate for b, _ in self._circuits.values() if b.rate]
        wait = max(waits, default=0)
        if wait > 0:
            self._call = self.reactor.callLater(wait, self._resume)
            return
        paused, self.paused = self.paused, set()
        for channel in paused:
            channel.resumeReading(self)

    def forget(self, channel):
        self.paused.discard(channel)

    def status(self):
        return {"rate": self.bucket.rate, "burst": self.bucket.burst, "circuit_rate": self.circuitRate,
                "bytes_read": self.bytesRead, "pauses": self.pauses, "links_paused": len(self.paused),
                "circuit_bytes_read": sorted((b for _, b in self._circuits.values()), reverse=True)[:20]}
