"""A relay's hop of someone's circuit.

A hop has one end on the channel toward the origin (the L{RelayCircuit}
itself) and, once extended, one on the channel toward the next hop
(L{NextHopEnd}).  Cells away from the origin lose this hop's layer and are
either forwarded (one AES call and one append to the next channel's queue)
or, when this hop recognizes them, dispatched here; cells toward the origin
get this hop's layer and are queued on the previous channel.  Every cell
passed on is counted in the switch's C{cells_relayed_forward} and
C{cells_relayed_backward} (what an operator reads as "cells relayed"):
one addition per run, not a call per cell.  EXTEND2,
TRUNCATE and teardown move the hop through the lifecycle of
L{meshvpn.onion.lifecycle.HOP}.
"""

from twisted.logger import Logger
from zope.interface import implementer

from meshvpn.interfaces import ICircuitEnd, IRelayCircuit
from meshvpn.onion.cells import (
    MAX_RELAY_EARLY, CellError, Command, Created2, DestroyReason, Extend2, Extended2, RelayCommand,
    Truncated, packRelay,
)
from meshvpn.onion.dispatch import STREAM, RelayDispatcher
from meshvpn.onion.fragments import MessageAssembler, create2Cells, splitMessage
from meshvpn.onion.lifecycle import HOP, HopEvent, HopState
from meshvpn.onion.relaycrypto import candidates

log = Logger()

_RELAY = bytes([Command.RELAY])
_CMDBYTE = {Command.RELAY: _RELAY, Command.RELAY_EARLY: bytes([Command.RELAY_EARLY])}
_FLOW = RelayCommand.FLOW_CONTROLLED
_CLOSED = HopState.CLOSED

# Stream messages a relay takes, and only as the circuit's last hop.
# PAYMENT (bandwidth tokens, meshvpn.payments.paymsg) goes to the exit's edge, at the last hop only,
# and so do the multipath messages (MP_*).
_STREAM_COMMANDS = (RelayCommand.BEGIN, RelayCommand.END, RelayCommand.RESOLVE, RelayCommand.SENDME,
                    RelayCommand.CONNECTED, RelayCommand.RESOLVED, RelayCommand.XON, RelayCommand.XOFF,
                    RelayCommand.PAYMENT, *sorted(RelayCommand.MULTIPATH))


@implementer(ICircuitEnd)
class NextHopEnd:
    """The end of a relay circuit on its next hop's channel (cells going toward the origin)."""

    __slots__ = ("c",)
    TAKES_RUNS = True

    def __init__(self, circuit):
        self.c = circuit

    def onRelayRun(self, payloads):
        c = self.c
        data = c.layer.encryptBackward(b"".join(payloads))
        head = c.prevPrefix + _RELAY
        if c.prev.sendCells([head + data[k:k + 509] for k in range(0, len(data), 509)]):
            c.counts["cells_relayed_backward"] += len(payloads)
        else:
            c.destroy(DestroyReason.RESOURCELIMIT, "backward queue full")

    def onRelay(self, cmd, payload):
        c = self.c
        if cmd != Command.RELAY:
            raise CellError("RELAY_EARLY travelling toward the origin")
        if c.prev.send(c.prevPrefix + _RELAY + c.layer.encryptBackward(payload)):
            c.counts["cells_relayed_backward"] += 1
        else:
            c.destroy(DestroyReason.RESOURCELIMIT, "backward queue full")

    def onCreated2(self, payload):
        self.c._extended(Created2.decode(payload))

    def onDestroy(self, reason):
        self.c._nextDestroyed(reason)

    def linkClosed(self, channel):
        self.c._nextDestroyed(DestroyReason.CHANNEL_CLOSED)

    def protocolError(self, reason, why):
        self.c.destroy(reason, why)


@implementer(ICircuitEnd, IRelayCircuit)
class RelayCircuit(RelayDispatcher):
    """
    This relay's hop of someone's circuit: its end on the previous hop's
    channel C{prev} (cells going away from the origin).
    """

    NOT_AT_EDGE = "at a middle hop"
    WHO = "a relay"
    NEXT_END = NextHopEnd
    EDGE_ONLY = frozenset(_STREAM_COMMANDS + (RelayCommand.FLOW_NEGOTIATE, RelayCommand.DHT_SEND))

    def __init__(self, switch, prev, prevId, layer):
        super().__init__(switch.clock)
        self.switch = switch
        self.counts = switch.counters  # cells relayed are added here, once per run
        self.prev = prev
        self.prevId = prevId
        self.prevPrefix = prevId.to_bytes(4, "big")
        self.layer = layer
        self.state = HopState.LAST
        self.next = None  # the next hop's channel, from the EXTEND2 on
        self.nextId = None
        self.nextPrefix = None
        self._nextEnd = None
        self.earlyCount = 0
        self.edgeState = None  # for the edge handler's use (streams)
        self._assembler = None  # a long EXTEND2 arriving in pieces (made on its first FRAGMENT)

    @property
    def closed(self):
        return self.state is _CLOSED

    # -- cells from the previous hop

    def onRelay(self, cmd, payload):
        if cmd == 9:
            self.earlyCount += 1
            if self.earlyCount > MAX_RELAY_EARLY:
                raise CellError(f"more than {MAX_RELAY_EARLY} RELAY_EARLY cells")
        plain = self.layer.decryptForward(payload)
        tag = self.layer.recognizeForward(plain)
        if tag is None:
            nxt = self.next
            if nxt is None:
                raise CellError("relay cell not recognized at the last hop (modified, replayed or reordered)")
            if nxt.send(self.nextPrefix + _CMDBYTE[cmd] + plain):
                self.counts["cells_relayed_forward"] += 1
            else:
                self.destroy(DestroyReason.RESOURCELIMIT, "forward queue full")
            return
        self._dispatch(cmd, plain, tag, self.next is None, 0)

    TAKES_RUNS = True

    def onRelayRun(self, payloads):
        """Consecutive RELAY cells from the previous hop: one AES call for all."""
        layer = self.layer
        data = layer.decryptForward(b"".join(payloads))
        nxt = self.next
        if nxt is not None and not candidates(data):
            # None is for us: all pass on, in one append to the next queue.
            head = self.nextPrefix + _RELAY
            if nxt.sendCells([head + data[k:k + 509] for k in range(0, len(data), 509)]):
                self.counts["cells_relayed_forward"] += len(payloads)
            else:
                self.destroy(DestroyReason.RESOURCELIMIT, "forward queue full")
            return
        if nxt is None:
            # The last hop: every cell is for us (or breaks the protocol).  No
            # RELAY (non-EARLY) message can extend the circuit, so the edge
            # stays the edge for the whole run.
            entries = []
            for k in range(0, len(data), 509):
                plain = data[k:k + 509]
                tag = layer.recognizeForward(plain)
                if tag is None:
                    self._dispatchRun(Command.RELAY, entries, 0)
                    raise CellError("relay cell not recognized at the last hop (modified, replayed or reordered)")
                entries.append((0, plain, tag))
            self._dispatchRun(Command.RELAY, entries, 0)
            return
        # Some may be for us: in order, as onRelay would (the layer is already off).
        passed = 0
        try:
            for k in range(0, len(data), 509):
                if self.state is _CLOSED:
                    return  # a message destroyed the circuit: the rest is for no one
                plain = data[k:k + 509]
                tag = layer.recognizeForward(plain)
                if tag is not None:
                    self._dispatch(Command.RELAY, plain, tag, self.next is None, 0)
                    continue
                nxt = self.next
                if nxt is None:
                    raise CellError("relay cell not recognized at the last hop (modified, replayed or reordered)")
                if not nxt.send(self.nextPrefix + _RELAY + plain):
                    self.destroy(DestroyReason.RESOURCELIMIT, "forward queue full")
                    return
                passed += 1
        finally:
            self.counts["cells_relayed_forward"] += passed

    def onCreated2(self, payload):
        raise CellError("CREATED2 from the previous hop")

    def onDestroy(self, reason):
        self._teardown(reason, toPrev=False, toNext=True)

    def linkClosed(self, channel):
        self._teardown(DestroyReason.CHANNEL_CLOSED, toPrev=False, toNext=True)

    def protocolError(self, reason, why):
        self.destroy(reason, why)

    # -- what the dispatcher delivers: to the switch's edge (streams, packets)

    def _packetsArrived(self, packets):
        self.switch.edge.packetsReceived(self, packets)

    def _streamArrived(self, command, streamId, data):
        self.switch.edge.relayReceived(self, command, streamId, data)

    def _windowOpened(self):
        self.switch.edge.circuitWindowOpened(self)

    def _flowStarted(self):
        # Streams already opened here were opened under the old rules.
        return self.edgeState is not None or super()._flowStarted()

    # -- extending and truncating

    def _onExtend2(self, cellCommand, hdr, hop):
        if cellCommand != Command.RELAY_EARLY:
            raise CellError("EXTEND2 outside a RELAY_EARLY cell")
        body = hdr.data
        if self._assembler is not None:
            body, self._assembler = self._assembler.finish(RelayCommand.EXTEND2, body), None
        ext = Extend2.decode(body)
        if ext.nodeId == self.switch.nodeId or ext.nodeId == self.prev.peerId:
            raise CellError("EXTEND2 back to this relay or to the previous hop")
        self.state = HOP.onPeer(self.state, HopEvent.EXTEND)
        d = self.switch.connectTo(ext)
        d.addCallbacks(self._extendLinked, self._extendFailed, callbackArgs=(ext,))
        d.addErrback(lambda f: log.failure("onion relay circuit: extend", f))

    def _extendLinked(self, link, ext):
        if self.state is not HopState.EXTENDING:
            return  # closed or truncated while the link was being opened
        if link.peerId != ext.nodeId:
            self._extendFailed(None, DestroyReason.OR_IDENTITY)
            return
        channel = self.switch.attachLink(link)
        self.next = channel
        self.nextId = channel.allocateId()
        self.nextPrefix = self.nextId.to_bytes(4, "big")
        self._nextEnd = self.NEXT_END(self)
        channel.addCircuit(self.nextId, self._nextEnd)
        for cell in create2Cells(self.nextId, ext.create.htype, ext.create.hdata):
            channel.send(cell)

    def _extendFailed(self, failure, reason=DestroyReason.CONNECTFAILED):
        if self.state is not HopState.EXTENDING:
            return
        self.state = HOP.onRequest(self.state, HopEvent.EXTEND_FAILED)
        self.sendRelay(RelayCommand.TRUNCATED, 0, Truncated(reason).encode())

    def _extended(self, created):
        self.state = HOP.onPeer(self.state, HopEvent.EXTENDED)
        pieces = splitMessage(Extended2(created).encode(), self.maxData)
        for piece in pieces[:-1]:
            self.sendRelay(RelayCommand.FRAGMENT, 0, piece)
        self.sendRelay(RelayCommand.EXTENDED2, 0, pieces[-1])

    def _onFragment(self, cellCommand, hdr, hop):
        """A piece of a long EXTEND2: taken only while this hop is the last (nothing to extend otherwise)."""
        if self.state is not HopState.LAST:
            raise CellError("FRAGMENT at a hop that is not the circuit's last")
        if self._assembler is None:
            self._assembler = MessageAssembler()
        self._assembler.fragment(hdr.data)

    def _onDhtSend(self, cellCommand, hdr, hop):
        relay = self.switch.datagramRelay
        if relay is None:
            raise CellError("relay DHT_SEND is not carried by this relay")
        relay.received(self, hdr.data)

    def _onTruncate(self, cellCommand, hdr, hop):
        self._dropNext(DestroyReason.REQUESTED, send=True)
        self.state = HOP.onPeer(self.state, HopEvent.TRUNCATE)
        self.sendRelay(RelayCommand.TRUNCATED, 0, Truncated(DestroyReason.REQUESTED).encode())

    def _dropNext(self, reason, send):
        channel = self.next
        if channel is None:
            return
        if send:
            channel.sendDestroy(self.nextId, reason)
        channel.removeCircuit(self.nextId, self._nextEnd)
        self.next = self.nextId = self.nextPrefix = self._nextEnd = None

    def _nextDestroyed(self, reason):
        self._dropNext(reason, send=False)
        self._teardown(reason, toPrev=True, toNext=False)

    # -- sending toward the origin (edge side)

    def sendRelay(self, command, streamId, data):
        """
        Originate one relay cell toward the origin.

        @return: C{False} if a flow-controlled cell did not fit the window
            or the circuit is closed (nothing was sent), else C{True}.
        """
        if self.state is _CLOSED:
            return False
        flow = command in _FLOW
        if flow and self.packWindow.window <= 0:
            return False
        ct, tag = self.layer.originateBackward(packRelay(command, streamId, data))
        if flow:
            self.packWindow.onSent(tag)
        if self.prev.send(self.prevPrefix + _RELAY + ct):
            return True
        self.destroy(DestroyReason.RESOURCELIMIT, "backward queue full")
        return False

    def _sendRun(self, plains):
        """
        Originate flow-controlled cells (their plain payloads, tags zero)
        toward the origin with one AES call and one append to the queue;
        the caller checked L{circuitRoom}.
        """
        if self.state is _CLOSED:
            return False
        cells, tags = self.layer.originateBackwardCells(plains, self.prevPrefix + _RELAY)
        onSent = self.packWindow.onSent
        for tag in tags:
            onSent(tag)
        if self.prev.sendCells(cells):
            return True
        self.destroy(DestroyReason.RESOURCELIMIT, "backward queue full")
        return False

    def circuitRoom(self):
        """Flow-controlled cells the circuit window takes now."""
        return 0 if self.state is _CLOSED else self.packWindow.window

    def sendPackets(self, packets):
        """
        Send IP packets to the origin in packet mode.  Packets that do not fit
        the circuit window are dropped, as a full router queue drops them.

        @return: the number of packets sent.
        """
        if self.state is _CLOSED:
            return 0
        return self._sendPacketsInWindow(packets)

    # -- teardown

    def destroy(self, reason, why=""):
        """Tear the circuit down in both directions with C{reason}."""
        self._teardown(reason, toPrev=True, toNext=True, why=why)

    def _teardown(self, reason, toPrev, toNext, why=""):
        if self.state is _CLOSED:
            return
        self.state = HOP.onRequest(self.state, HopEvent.CLOSE)
        sw = self.switch
        sw.counters["circuits_destroyed"] += 1
        self._dropNext(reason, send=toNext)
        prev = self.prev
        if prev.removeCircuit(self.prevId, self):
            prev.peerCircuits -= 1
        if toPrev:
            prev.sendDestroy(self.prevId, reason)
        if why:
            log.debug("onion relay circuit destroyed ({reason}): {why}", reason=DestroyReason.name(reason), why=why)
        sw.edge.circuitClosed(self, reason)
        if sw.datagramRelay is not None:
            sw.datagramRelay.circuitClosed(self)

    # The dispatcher's table (after the handlers it names).
    ACCEPTS = {**dict.fromkeys(_STREAM_COMMANDS, STREAM),
               RelayCommand.EXTEND2: _onExtend2, RelayCommand.TRUNCATE: _onTruncate,
               RelayCommand.FRAGMENT: _onFragment, RelayCommand.DHT_SEND: _onDhtSend,
               RelayCommand.FLOW_NEGOTIATE: RelayDispatcher._onFlowNegotiate}
