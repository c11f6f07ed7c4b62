"""Bytes per neighbour, counted per link and read once per epoch.

A relay's report needs how much it exchanged with each other relay.  The
links already count the cells they carry (C{cellsIn}, C{cellsOut}), so the
meter never touches a cell: it stands between the link manager and the
onion switch as the registered L{ICellHandler}, remembers each link as it
opens, folds a link's counts into its peer's total when it closes, and
reads the open links' counters only when an epoch ends (L{drain}).

Only links whose peer authenticated as a node count (a client's anonymous
link has no peer id and is never reported).  The totals of closed links
are bounded: at most L{TrafficMeter.maxPeers} peers per epoch; beyond
that the smallest are dropped (and counted as such).
"""

from zope.interface import implementer

from meshvpn.interfaces import ICellHandler, IStatusSource, ITrafficMeter


@implementer(ICellHandler, ITrafficMeter, IStatusSource)
class TrafficMeter:
    """
    @param handler: the L{ICellHandler} cells go to (the onion switch).
    @param cellSize: bytes per cell, to turn cell counts into bytes.
    """

    maxPeers = 4096

    def __init__(self, handler, cellSize):
        self.handler = handler
        self.cellSize = cellSize
        self._open = {}  # link -> cells already counted (in + out)
        self._closed = {}  # peer id -> cells on links closed this epoch
        self.dropped = 0

    # ICellHandler
    def linkOpened(self, link):
        if link.peerId is not None:
            self._open[link] = link.cellsIn + link.cellsOut
        self.handler.linkOpened(link)

    def cellsReceived(self, link, cells):
        self.handler.cellsReceived(link, cells)

    def linkClosed(self, link, reason):
        base = self._open.pop(link, None)
        if base is not None:
            self._add(self._closed, link.peerId, link.cellsIn + link.cellsOut - base)
        self.handler.linkClosed(link, reason)

    def _add(self, totals, peer, cells):
        if cells <= 0:
            return
        if peer not in totals and len(totals) >= self.maxPeers:
            smallest = min(totals, key=lambda p: (totals[p], p))
            if totals[smallest] >= cells:
                self.dropped += 1
                return
            del totals[smallest]
            self.dropped += 1
        totals[peer] = totals.get(peer, 0) + cells

    # ITrafficMeter
    def drain(self):
        totals, self._closed = self._closed, {}
        for link, base in list(self._open.items()):
            now = link.cellsIn + link.cellsOut
            self._open[link] = now
            self._add(totals, link.peerId, now - base)
        return {peer: cells * self.cellSize for peer, cells in totals.items()}

    def status(self):
        return {"open_links": len(self._open), "dropped_peers": self.dropped}
