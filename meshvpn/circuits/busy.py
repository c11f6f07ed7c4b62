"""Which of an isolation key's circuits carries a bulk transfer right now.

A new stream put on a circuit that a download keeps full waits behind that
download's cells in flight: every queue on the path (the exit's circuit
window, the relays' link buffers, the client's own read of its guard link)
holds them first (with 5 ms of delay per hop, a small fetch's first byte
took 140 ms there against 125 ms on a circuit of its own, 101 ms
unloaded).  So the circuit manager gives a new stream a quiet circuit of
the same isolation key when the one it would get is busy.

"Busy" is read from the stream layer's byte counters (stream data both
ways, all streams ever), sampled when a circuit is asked for: the rate
between the previous sample and this one.  No per-cell clock read and no
timer: a circuit nobody asks about costs nothing.  A sample taken long
after the previous one averages over the gap, so a transfer that started
just before a request after a long idle spell reads low and the stream
goes where it would have gone before (the old behaviour, never a worse
one); the next request, a moment later, sees the real rate.
"""

BULK_BYTES_PER_S = 256 * 1024  # a circuit moving more than this is carrying a bulk transfer
MIN_SPAN_S = 0.2  # a shorter interval keeps the last rate: a relay stalled for tens of ms on a busy CPU is no end of a transfer
MAX_CIRCUITS_PER_KEY = 2  # an isolation key takes a spare for quiet streams only while it has fewer circuits


def movedBytes(circuit):
    """
    Stream bytes C{circuit} has carried both ways: 0 without a stream layer,
    or with one that keeps no counters (it reads as quiet, the old choice).
    """
    handler = getattr(circuit, "streamHandler", None)
    if handler is None:
        return 0
    return getattr(handler, "bytesSent", 0) + getattr(handler, "bytesReceived", 0)


class BusyCircuits:
    """
    Byte rates of circuits, sampled on demand.

    @param clock: an C{IReactorTime}.
    @param threshold: bytes per second above which a circuit is busy.
    """

    def __init__(self, clock, threshold=BULK_BYTES_PER_S):
        self.clock = clock
        self.threshold = threshold
        self._samples = {}  # circuit -> (time, bytes moved, rate); dropped with the circuit

    def rate(self, circuit):
        """Bytes per second C{circuit} moved since it was last sampled (0 on first sight)."""
        now = self.clock.seconds()
        moved = movedBytes(circuit)
        last = self._samples.get(circuit)
        if last is None:
            self._samples[circuit] = (now, moved, 0.0)
            return 0.0
        then, before, rate = last
        if now - then >= MIN_SPAN_S:
            rate = max(0, moved - before) / (now - then)
            self._samples[circuit] = (now, moved, rate)
        return rate

    def busy(self, circuit):
        return self.rate(circuit) > self.threshold

    def forget(self, circuit):
        self._samples.pop(circuit, None)

    def choose(self, pairs):
        """
        The first of C{pairs} (circuit, path) that is quiet, else the least busy.

        @return: (pair, busy): C{busy} is C{True} when every one is busy.
        """
        rates = [(self.rate(pair[0]), i) for i, pair in enumerate(pairs)]
        for rate, i in rates:
            if rate <= self.threshold:
                return pairs[i], False
        return pairs[min(rates)[1]], True
