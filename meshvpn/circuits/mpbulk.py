"""When a stream becomes a bulk transfer worth a second leg.

Linking a second circuit costs a circuit build and a round trip, and the
reorder buffer adds the slower leg's delay to every byte that waits for it:
a loss for interactive streams, a gain only once a transfer is long enough
to use both paths.  So a stream starts single-path and is offered a second
leg once it has moved L{BULK_BYTES} in either direction, or at once when the
application asked for it (a flag), never when it asked not to.
"""

BULK_BYTES = 1 << 20


class BulkDetector:
    """
    @param threshold: bytes moved after which the stream counts as bulk.
    @param want: C{True} (always multipath), C{False} (never), C{None} (by volume).
    """

    def __init__(self, threshold=BULK_BYTES, want=None):
        self.threshold = threshold
        self.want = want
        self.moved = 0
        self._fired = False

    def moving(self, nbytes):
        """
        Count C{nbytes} more moved.

        @return: C{True} exactly once: the moment the stream should get its second leg.
        """
        self.moved += nbytes
        if self._fired or self.want is False:
            return False
        if self.want or self.moved >= self.threshold:
            self._fired = True
            return True
        return False
