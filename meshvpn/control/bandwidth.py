"""Bytes per second through the node's links, sampled once a second for the last ten minutes.

Everything a node carries for circuits crosses a link as cells, so the
links' cell counters (read and written, per link) are the node's traffic:
up is what it wrote, down what it read, in bytes (cells x C{CELL_SIZE}).
A link forgets its counts when it closes, so the sampler keeps each link it
has seen until the tick after it is gone and counts its last cells then:
the node-wide totals only ever grow (they feed the metrics' counters).
"""

import collections

from meshvpn.link.cellsize import CELL_SIZE

WINDOW = 600  # seconds of per-second samples kept (the dashboard's ten minutes)


class BandwidthSampler:
    """
    @param links: an L{ILinkManager} (C{links()}: live links with
        C{cellsIn}/C{cellsOut}), or C{None} for a node without links.
    """

    def __init__(self, clock, links, window=WINDOW):
        self.clock = clock
        self.links = links
        self.samples = collections.deque(maxlen=window)  # (time, bytes up, bytes down)
        self.cellsIn = 0
        self.cellsOut = 0
        self._seen = {}  # link -> (cellsIn, cellsOut) at the last tick
        self._lastTime = None
        self._sampled = (0, 0)  # totals at the last sample

    def _count(self):
        """Add every link's new cells to the totals."""
        live = list(self.links.links()) if self.links is not None else []
        for link in set(live) | set(self._seen):
            cin, cout = getattr(link, "cellsIn", 0), getattr(link, "cellsOut", 0)
            lastIn, lastOut = self._seen.get(link, (0, 0))
            self.cellsIn += max(0, cin - lastIn)
            self.cellsOut += max(0, cout - lastOut)
            self._seen[link] = (cin, cout)
        for link in set(self._seen) - set(live):
            del self._seen[link]  # its last cells are counted; it will count no more

    def sample(self):
        """One tick: @return: the sample C{{"t", "up", "down"}} in bytes per second."""
        now = self.clock.seconds()
        self._count()
        cin, cout = self.cellsIn - self._sampled[0], self.cellsOut - self._sampled[1]
        self._sampled = (self.cellsIn, self.cellsOut)
        elapsed = now - self._lastTime if self._lastTime is not None else 1.0
        self._lastTime = now
        elapsed = elapsed if elapsed > 0 else 1.0
        up, down = round(cout * CELL_SIZE / elapsed), round(cin * CELL_SIZE / elapsed)
        self.samples.append((now, up, down))
        return {"t": now, "up": up, "down": down}

    def totals(self):
        """Bytes and cells through links since start, each way (monotonic)."""
        self._count()
        return {"cells_in": self.cellsIn, "cells_out": self.cellsOut,
                "bytes_in": self.cellsIn * CELL_SIZE, "bytes_out": self.cellsOut * CELL_SIZE}

    def recent(self, seconds=WINDOW):
        return [{"t": t, "up": up, "down": down} for t, up, down in list(self.samples)[-seconds:]]
