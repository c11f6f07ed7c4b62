"""When queued cells leave: once per reactor turn, or when a batch made many.

Cells bound for a link wait in that link's L{meshvpn.onion.channel.Channel}
queue and are written by one call scheduled for the end of the reactor
turn, whatever number of incoming batches, application writes (stream
writes, TUN packets, an exit's reads from its TCP connections) and
channels the turn touched: each channel makes one C{sendCells} call (one
TLS write, one system call) per turn, not one per cell or per batch.  A
link read in one turn often arrives as several batches (one per TLS
record run); writing once for all of them halves the writes of a relay.

When a link's TCP read is over (C{readDone}, from
L{meshvpn.link.tlsturn}), what it made leaves at once rather than at the
end of the turn: the read's batches are still joined, and a cell crossing a
relay does not wait behind another link's read (under a bulk transfer,
a quarter megabyte of other cells) before it is sent.

At the end of each incoming batch, a channel that holds at least
C{WRITE_EARLY} cells writes at once (little is gained by waiting, and the
next hop starts sooner), and one whose queue is still above the high-water
mark after writing (its link is not taking cells) pauses the link the
batch came from.
"""

WRITE_EARLY = 256  # cells (128 KB): at the end of a batch, a queue this long is written at once


class ChannelFlusher:
    """
    The channels of one node that have cells waiting, and when they write.

    @param clock: an C{IReactorTime}; the end-of-turn write is a
        C{callLater(0)}, at most one pending at a time.
    """

    __slots__ = ("_clock", "_dirty", "_call")

    def __init__(self, clock):
        self._clock = clock
        self._dirty = []
        self._call = None

    def schedule(self, channel):
        """C{channel} has cells waiting: it writes at the end of this turn (or of this batch, if many)."""
        self._dirty.append(channel)
        if self._call is None:
            self._call = self._clock.callLater(0, self._endOfTurn)

    def _endOfTurn(self):
        self._call = None
        dirty, self._dirty = self._dirty, []
        for channel in dirty:
            channel.flush(None)

    def readDone(self):
        """
        A link's read is over: every channel with cells waiting writes now,
        in this turn (their link sends at once: L{meshvpn.link.tlsturn}),
        not at the end of it, where a bulk transfer's next read may come
        first.
        """
        if self._dirty:
            if self._call is not None:
                self._call.cancel()
            self._endOfTurn()

    def flush(self, source):
        """
        An incoming batch from C{source} is done: channels holding many
        cells write now, the rest at the end of the turn.  Each channel
        still over its high-water mark pauses C{source}.
        """
        dirty, self._dirty = self._dirty, []
        for channel in dirty:
            if not channel.flushBatch(source, WRITE_EARLY):
                self._dirty.append(channel)
