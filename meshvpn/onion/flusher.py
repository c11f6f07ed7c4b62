"""When queued cells leave: once per incoming batch, or once per reactor turn.

Cells bound for a link wait in that link's L{meshvpn.onion.channel.Channel}
queue.  Cells switched while a batch read from some link is handled are
written when the batch is done; cells that applications originate (stream
writes, TUN packets, an exit's reads from its TCP connections) are written
by one call scheduled for the end of the reactor turn, whatever number of
writes and channels the turn touched.  Either way each channel makes one
C{sendCells} call (one TLS write) per batch or turn, not one per cell.
After writing, a channel whose queue is still above the high-water mark
(its link is not taking cells) pauses the link the batch came from.
"""


class ChannelFlusher:
    """
    The channels of one node that have cells waiting, and when they write.

    @param clock: an C{IReactorTime}; the end-of-turn write is a
        C{callLater(0)}, at most one pending at a time.
    """

    __slots__ = ("_clock", "_dirty", "_call", "batches")

    def __init__(self, clock):
        self._clock = clock
        self._dirty = []
        self._call = None
        self.batches = 0  # incoming batches being handled (they flush when done)

    def schedule(self, channel):
        """C{channel} has cells waiting: it writes at the end of this batch or turn."""
        self._dirty.append(channel)
        if not self.batches and self._call is None:
            self._call = self._clock.callLater(0, self._endOfTurn)

    def _endOfTurn(self):
        self._call = None
        self.flush(None)

    def flush(self, source):
        """
        Write every waiting channel.

        @param source: the channel whose incoming batch made these cells, or
            C{None}; each channel still over its high-water mark pauses it.
        """
        dirty, self._dirty = self._dirty, []
        for channel in dirty:
            channel.flush(source)
