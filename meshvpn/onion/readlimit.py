"""A relay's node-wide bandwidth limit on the cells it reads, with backpressure.

As Tor's global read bucket does: every batch of cells read from a link is
charged to one token bucket; a link whose batch puts the bucket in debt is
paused (its TCP window then closes, so the sender slows down) until the
debt is paid.  Nothing is dropped.  Per-circuit limits and accounting are at
the exit, where streams are (meshvpn/ratelimit.py); a middle relay cannot
throttle one circuit without holding a queue per circuit.
"""

from meshvpn.onion.cellsize import CELL_SIZE
from meshvpn.ratelimit import TokenBucket


class LinkReadLimiter:
    def __init__(self, reactor, rate, burst=None):
        self.reactor = reactor
        self.bucket = TokenBucket(reactor, rate, burst)
        self.paused = set()
        self._call = None
        self.bytesRead = 0
        self.pauses = 0

    def charge(self, linkState, cells):
        nbytes = cells * CELL_SIZE
        self.bytesRead += nbytes
        wait = self.bucket.consume(nbytes)
        if wait > 0:
            if linkState not in self.paused:
                self.paused.add(linkState)
                self.pauses += 1
                linkState.pauseReading(self)
            if self._call is None or not self._call.active():
                self._call = self.reactor.callLater(wait, self._resume)

    def _resume(self):
        self._call = None
        debt = -self.bucket.available()
        if debt > 0:
            self._call = self.reactor.callLater(debt / self.bucket.rate, self._resume)
            return
        paused, self.paused = self.paused, set()
        for ls in paused:
            ls.resumeReading(self)

    def forget(self, linkState):
        self.paused.discard(linkState)

    def status(self):
        return {"rate": self.bucket.rate, "burst": self.bucket.burst, "bytes_read": self.bytesRead,
                "pauses": self.pauses, "links_paused": len(self.paused)}
