"""A relay's hop of a circuit whose hop uses CGO relay crypto (L{meshvpn.onion.cgo}).

What differs from L{meshvpn.onion.relaycircuit.RelayCircuit} is only the
way away from the origin: CGO's layer and its recognition are one step
that takes the cell command (part of the tweak), and every cell is chained
to the one before, so a run of cells goes through the layer one cell at a
time (the old scheme's one AES call per run does not exist here) and still
leaves in one append to the next hop's queue.  Toward the origin the
relay circuit's own paths run unchanged on L{meshvpn.onion.cgohops.CgoRelayHop},
as does the dispatch of what is recognized (the common relay payload
layout, 488 data bytes per message).
"""

from zope.interface import implementer

from meshvpn.interfaces import ICellRunEnd
from meshvpn.onion.cells import CGO_RELAY_DATA_LEN, MAX_RELAY_EARLY, CellError, Command, DestroyReason
from meshvpn.onion.cgohops import fromCell
from meshvpn.onion.lifecycle import HopState
from meshvpn.onion.relaycircuit import NextHopEnd, RelayCircuit

_RELAY = bytes([Command.RELAY])
_CMDBYTE = {Command.RELAY: _RELAY, Command.RELAY_EARLY: bytes([Command.RELAY_EARLY])}
_CLOSED = HopState.CLOSED


@implementer(ICellRunEnd)
class CgoNextHopEnd(NextHopEnd):
    """The CGO hop's end on its next hop's channel: cells toward the origin, a cell at a time through the layer."""

    __slots__ = ()

    TAKES_CELLS = True

    def onRelayRun(self, payloads):
        c = self.c
        if c.prev.sendCells(c.layer.backwardRun(payloads, c.prevPrefix + _RELAY)):
            c.counts["cells_relayed_backward"] += len(payloads)
        else:
            c.destroy(DestroyReason.RESOURCELIMIT, "backward queue full")

    def onRelayCells(self, cells, start, stop):
        """L{onRelayRun} on the link's cells themselves (one C call: layer and the next link's header)."""
        c = self.c
        if c.prev.sendCells(c.layer.passCells(cells, start, stop, c.prevPrefix + _RELAY)):
            c.counts["cells_relayed_backward"] += stop - start
        else:
            c.destroy(DestroyReason.RESOURCELIMIT, "backward queue full")


@implementer(ICellRunEnd)
class CgoRelayCircuit(RelayCircuit):
    """This relay's CGO hop of someone's circuit (C{layer}: a L{meshvpn.onion.cgohops.CgoRelayHop})."""

    maxData = CGO_RELAY_DATA_LEN
    NEXT_END = CgoNextHopEnd

    def onRelay(self, cmd, payload):
        if cmd == Command.RELAY_EARLY:
            self.earlyCount += 1
            if self.earlyCount > MAX_RELAY_EARLY:
                raise CellError(f"more than {MAX_RELAY_EARLY} RELAY_EARLY cells")
        cmdByte = _CMDBYTE[cmd]
        out, tag = self.layer.forward(cmdByte, payload)
        if tag is not None:
            self._dispatch(cmd, out, tag, self.next is None, 0)
            return
        nxt = self.next
        if nxt is None:
            raise CellError("relay cell not recognized at the last hop (modified, replayed or reordered)")
        if nxt.send(self.nextPrefix + cmdByte + out):
            self.counts["cells_relayed_forward"] += 1
        else:
            self.destroy(DestroyReason.RESOURCELIMIT, "forward queue full")

    TAKES_CELLS = True

    def onRelayCells(self, cells, start, stop):
        """
        L{onRelayRun} on the link's cells themselves: at a middle hop, one C
        call takes the layer off every cell up to the first for this hop (if
        any) and gives the others the next link's header; the last hop, and
        a run whose message truncated the circuit, go the payload way.
        """
        if self.next is None:
            self.onRelayRun([cell[5:] for cell in cells[start:stop]])
            return
        k = start
        while k < stop:
            if self.state is _CLOSED:
                return  # a message destroyed the circuit: the rest is for no one
            if self.next is None:  # truncated by a message of this run
                self._forwardEach([cell[5:] for cell in cells[k:stop]])
                return
            k, out, mine = self.layer.forwardCells(cells, k, stop, self.nextPrefix + _RELAY)
            plain = None if mine is None else fromCell(mine[0])  # a bad one: the cells before it stay too
            if out and not self._passOn(out):
                return
            if mine is not None:
                self._dispatch(Command.RELAY, plain, mine[1], self.next is None, 0)

    def onRelayRun(self, payloads):
        """Consecutive RELAY cells from the previous hop: through the layer in order, passed on in one append."""
        forward = self.layer.forward
        if self.next is None:
            # The last hop: every cell is for us (or breaks the protocol); no
            # RELAY (non-EARLY) message extends the circuit, so it stays the edge.
            entries = []
            for payload in payloads:
                plain, tag = forward(_RELAY, payload)
                if tag is None:
                    self._dispatchRun(Command.RELAY, entries, 0)
                    raise CellError("relay cell not recognized at the last hop (modified, replayed or reordered)")
                entries.append((0, plain, tag))
            self._dispatchRun(Command.RELAY, entries, 0)
            return
        self._forwardEach(payloads)

    def _forwardEach(self, payloads):
        """A middle hop's run, cell by cell (the reference L{onRelayCells} matches)."""
        forward = self.layer.forward
        out = []
        for payload in payloads:
            if self.state is _CLOSED:
                return  # a message destroyed the circuit: the rest is for no one
            cell, tag = forward(_RELAY, payload)
            if tag is None:
                if self.next is None:  # truncated by a message of this run
                    raise CellError("relay cell not recognized at the last hop (modified, replayed or reordered)")
                out.append(self.nextPrefix + _RELAY + cell)
                continue
            # One for us (rare in a run: the origin speaks to a middle only to extend or truncate):
            # what came before it leaves first, in order.
            if out:
                if not self._passOn(out):
                    return
                out = []
            self._dispatch(Command.RELAY, cell, tag, self.next is None, 0)
        if out:
            self._passOn(out)

    def sendDataRun(self, streamId, chunks):
        """
        The dispatcher's L{sendDataRun} (the exit's downloads) with the
        payloads packed in C with the sealing, not a Python concatenation per cell.
        """
        if self.state is _CLOSED:
            return False
        cells, tags = self.layer.originateDataCells(streamId, chunks, self.prevPrefix + _RELAY)
        onSent = self.packWindow.onSent
        for tag in tags:
            onSent(tag)
        if self.prev.sendCells(cells):
            return True
        self.destroy(DestroyReason.RESOURCELIMIT, "backward queue full")
        return False

    def _passOn(self, cells):
        if self.next.sendCells(cells):
            self.counts["cells_relayed_forward"] += len(cells)
            return True
        self.destroy(DestroyReason.RESOURCELIMIT, "forward queue full")
        return False
