"""The circuit switch: every circuit this node carries or originates, keyed by
(link, circuit id), and the bounded queues between links.

Each attached link gets a L{LinkState} holding a dict from circuit id to the
circuit end that lives on that link, so a cell is switched with one dict
lookup, one AES call and one list append.  Cells leaving on a link are
collected in that link's bounded L{_Outbound} queue and written once per
incoming batch.  When a link stops taking cells (its consumer paused us), its
queue grows past a high-water mark and every link that fed it is paused in
turn (Twisted push producers); when the queue drains they resume.  A circuit
that still overfills a queue (its peer ignored the pause) is destroyed with
RESOURCELIMIT, so memory stays bounded whatever peers do.
"""

import secrets

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from meshvpn.errors import LinkError, MeshVPNError
from meshvpn.interfaces import ICellHandler, ICircuitEdge, IStatusSource
from meshvpn.onion import ntor
from meshvpn.onion.cells import (
    INITIATOR_BIT, MAX_RELAY_EARLY, CellError, Command, Create2, Created2,
    DestroyReason, End, Extend2, Extended2, RelayCommand, Sendme, Truncated, encodeCell,
    packRelay, unpackRelay,
)
from meshvpn.link.cellsize import CELL_SIZE
from meshvpn.onion.flow import FlowError, ReceiveWindow, SendWindow
from meshvpn.onion.packets import PacketReader, framePackets, packetCellCount
from meshvpn.onion.relaycrypto import RelayLayer

log = Logger()

_RELAY = bytes([Command.RELAY])
_CMDBYTE = {Command.RELAY: _RELAY, Command.RELAY_EARLY: bytes([Command.RELAY_EARLY])}
_DESTROY = bytes([Command.DESTROY])
_PAD_DESTROY = bytes(CELL_SIZE - 6)


class CircuitDestroyed(MeshVPNError):
    """A circuit was torn down; C{reason} is a L{DestroyReason} number."""

    def __init__(self, reason, why="", hop=None):
        super().__init__(f"circuit destroyed: {DestroyReason.name(reason)}" + (f" ({why})" if why else ""))
        self.reason = reason
        self.why = why
        self.hop = hop  # during a build: the index of the hop that failed (0 = guard), if known


def reasonCode(reason):
    """A DESTROY reason number from a number or a name such as C{"finished"}."""
    if isinstance(reason, int) and 0 <= reason <= 255:
        return reason
    if isinstance(reason, str):
        for code, name in DestroyReason.NAMES.items():
            if name == reason.upper():
                return code
    return DestroyReason.NONE


@attrs.define
class SwitchLimits:
    """Per-peer limits and queue bounds (cells)."""

    maxCircuitsPerPeer: int = 1024
    createRate: float = 50.0        # CREATE2 per second per peer link, sustained
    createBurst: int = 100
    queueHigh: int = 1024           # pause feeding links above this many queued cells
    queueLow: int = 256             # resume them below this
    queueLimit: int = 4096          # hard cap: the circuit that overfills is destroyed


def destroyCell(circId, reason):
    return circId.to_bytes(4, "big") + _DESTROY + bytes([reason]) + _PAD_DESTROY


@implementer(IPushProducer)
class _Outbound:
    """The bounded queue of cells waiting to be written to one link."""

    __slots__ = ("ls", "pending", "paused", "dirty", "pausedSources")

    def __init__(self, ls):
        self.ls = ls
        self.pending = []
        self.paused = False
        self.dirty = False
        self.pausedSources = set()

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        self.flush()

    def stopProducing(self):
        self.paused = True
        self.pending = []

    def flush(self):
        self.dirty = False
        if self.pending and not self.paused and not self.ls.closed:
            cells, self.pending = self.pending, []
            self.ls.link.sendCells(cells)
        if self.pausedSources and len(self.pending) <= self.ls.switch.limits.queueLow:
            sources, self.pausedSources = self.pausedSources, set()
            for src in sources:
                src.resumeReading(self)


class LinkState:
    """Everything the switch knows about one attached link."""

    def __init__(self, switch, link):
        self.switch = switch
        self.link = link
        self.peerId = link.peerId
        self.table = {}
        # Each end allocates ids with its own value of the top bit, so the two
        # ends never pick the same id: the end that dialled the link sets it
        # (Tor's rule).  A link that cannot say falls back to comparing ids.
        initiator = getattr(link, "isInitiator", None)
        if initiator is None:
            initiator = switch.nodeId > (link.peerId or b"")
        self.myBit = INITIATOR_BIT if initiator else 0
        self.out = _Outbound(self)
        self.closed = False
        self.peerCircuits = 0
        self.tokens = float(switch.limits.createBurst)
        self.tokenTime = switch.clock.seconds()
        self._pausers = set()

    def addEnd(self, circId, end):
        """Register a circuit end; a link with circuits is never closed for idleness."""
        if not self.table and hasattr(self.link, "acquire"):
            self.link.acquire()
        self.table[circId] = end

    def removeEnd(self, circId, end):
        if self.table.get(circId) is end:
            del self.table[circId]
            if not self.table and hasattr(self.link, "release") and not self.closed:
                self.link.release()
            return True
        return False

    def allocateId(self):
        while True:
            circId = (secrets.randbits(31) or 1) | self.myBit
            if circId not in self.table:
                return circId

    def takeCreateToken(self):
        now = self.switch.clock.seconds()
        lim = self.switch.limits
        self.tokens = min(float(lim.createBurst), self.tokens + (now - self.tokenTime) * lim.createRate)
        self.tokenTime = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True

    def pauseReading(self, by):
        if not self._pausers and IPushProducer.providedBy(self.link):
            self.link.pauseProducing()
        self._pausers.add(by)
        self.switch.counters["link_pauses"] += 1

    def resumeReading(self, by):
        self._pausers.discard(by)
        if not self._pausers and not self.closed and IPushProducer.providedBy(self.link):
            self.link.resumeProducing()

    def receive(self, cells):
        """The link's cell receiver: switch one batch, then write each output once."""
        sw = self.switch
        table = self.table
        limiter = sw.readLimiter
        perCircuit = {} if limiter is not None and limiter.circuitRate else None
        sw._depth += 1
        try:
            for cell in cells:
                try:
                    if len(cell) != CELL_SIZE:
                        raise CellError(f"cell is {len(cell)} bytes, expected {CELL_SIZE}")
                    cmd = cell[4]
                    if cmd == 3 or cmd == 9:
                        entry = table.get(int.from_bytes(cell[:4], "big"))
                        if entry is None:
                            sw.counters["cells_unknown_circuit"] += 1
                        else:
                            if perCircuit is not None:
                                perCircuit[entry] = perCircuit.get(entry, 0) + 1
                            entry.onRelay(cmd, cell[5:])
                        continue
                    circId = int.from_bytes(cell[:4], "big")
                    if cmd == Command.CREATE2:
                        sw._onCreate2(self, circId, cell[5:])
                    elif cmd == Command.PADDING:
                        pass
                    elif circId == 0:
                        raise CellError(f"command {cmd} on circuit id 0")
                    elif cmd == Command.DESTROY:
                        entry = table.get(circId)
                        if entry is not None:
                            entry.onDestroy(cell[5])
                    elif cmd == Command.CREATED2:
                        entry = table.get(circId)
                        if entry is None:
                            raise CellError("CREATED2 for a circuit we did not create")
                        entry.onCreated2(cell[5:])
                    else:
                        raise CellError(f"unknown cell command {cmd}")
                except (CellError, FlowError, ntor.HandshakeError) as e:
                    sw._protocolError(self, cell, str(e))
                except Exception:
                    log.failure("onion switch: internal error handling a cell")
                    sw._protocolError(self, cell, "internal error", DestroyReason.INTERNAL)
        finally:
            sw._depth -= 1
        if limiter is not None:
            limiter.charge(self, len(cells), perCircuit)
        sw._flush(self)

    def linkClosed(self, reason):
        if self.closed:
            return
        self.closed = True
        self.switch._links.pop(self.link, None)
        if self.switch.readLimiter is not None:
            self.switch.readLimiter.forget(self)
        for entry in list(self.table.values()):
            entry.linkClosed(self)
        self.table.clear()
        self.out.pending = []
        if IConsumer.providedBy(self.link):
            self.link.unregisterProducer()
        for src in list(self.out.pausedSources):
            src.resumeReading(self.out)
        self.out.pausedSources.clear()
        self.switch._flush(None)


class _NextEnd:
    """The end of a relay circuit on its next-hop link (cells going toward the origin)."""

    __slots__ = ("c",)

    def __init__(self, circuit):
        self.c = circuit

    def onRelay(self, cmd, payload):
        c = self.c
        if cmd != Command.RELAY:
            raise CellError("RELAY_EARLY travelling toward the origin")
        if not c.switch._enqueue(c.prev, c.prevPrefix + _RELAY + c.layer.encryptBackward(payload)):
            c.destroy(DestroyReason.RESOURCELIMIT, "backward queue full")

    def onCreated2(self, payload):
        self.c._extended(Created2.decode(payload))

    def onDestroy(self, reason):
        self.c._nextDestroyed(reason)

    def linkClosed(self, ls):
        self.c._nextDestroyed(DestroyReason.CHANNEL_CLOSED, linkGone=True)

    def protocolError(self, reason, why):
        self.c.destroy(reason, why)


class RelayCircuit:
    """
    This relay's hop of someone's circuit.  Its entry in the previous link's
    table is the circuit itself (cells going away from the origin).
    """

    def __init__(self, switch, prev, prevId, layer):
        self.switch = switch
        self.prev = prev
        self.prevId = prevId
        self.prevPrefix = prevId.to_bytes(4, "big")
        self.layer = layer
        self.next = None
        self.nextId = None
        self.nextPrefix = None
        self.earlyCount = 0
        self.extending = False
        self.closed = False
        self.packWindow = SendWindow()
        self.deliverWindow = ReceiveWindow()
        self.packetReader = PacketReader()
        self.edgeState = None  # for the edge handler's use (streams)

    # -- cells from the previous hop

    def onRelay(self, cmd, payload):
        if cmd == 9:
            self.earlyCount += 1
            if self.earlyCount > MAX_RELAY_EARLY:
                raise CellError(f"more than {MAX_RELAY_EARLY} RELAY_EARLY cells")
        plain = self.layer.decryptForward(payload)
        tag = self.layer.recognizeForward(plain)
        if tag is None:
            if self.next is None:
                raise CellError("relay cell not recognized at the last hop (modified, replayed or reordered)")
            if not self.switch._enqueue(self.next, self.nextPrefix + _CMDBYTE[cmd] + plain):
                self.destroy(DestroyReason.RESOURCELIMIT, "forward queue full")
            return
        self._recognized(cmd, plain, tag)

    def _recognized(self, cmd, plain, tag):
        hdr = unpackRelay(plain)
        c = hdr.command
        edge = self.switch.edge
        if c == RelayCommand.PACKET or c == RelayCommand.DATA:
            if self.next is not None:
                raise CellError(f"relay {RelayCommand.NAMES[c]} at a middle hop")
            ack = self.deliverWindow.onReceived(tag)
            if ack is not None:
                self.sendRelay(RelayCommand.SENDME, 0, Sendme(ack).encode())
            if c == RelayCommand.PACKET:
                packets = self.packetReader.feed(hdr.data)
                if packets:
                    edge.packetsReceived(self, packets)
            else:
                edge.relayReceived(self, c, hdr.streamId, hdr.data)
        elif c == RelayCommand.SENDME and hdr.streamId == 0:
            self.packWindow.onSendme(Sendme.decode(hdr.data).tag)
            opened = getattr(edge, "circuitWindowOpened", None)
            if opened is not None:
                opened(self)
        elif c == RelayCommand.EXTEND2:
            if cmd != Command.RELAY_EARLY:
                raise CellError("EXTEND2 outside a RELAY_EARLY cell")
            self._extend(Extend2.decode(hdr.data))
        elif c == RelayCommand.TRUNCATE:
            self._truncate()
        elif c == RelayCommand.DROP:
            pass
        elif c in (RelayCommand.BEGIN, RelayCommand.END, RelayCommand.RESOLVE, RelayCommand.SENDME,
                   RelayCommand.CONNECTED, RelayCommand.RESOLVED, RelayCommand.PAYMENT):
            if self.next is not None:
                raise CellError(f"relay {RelayCommand.NAMES[c]} at a middle hop")
            edge.relayReceived(self, c, hdr.streamId, hdr.data)
        else:
            raise CellError(f"relay {RelayCommand.NAMES[c]} is not accepted by a relay")

    def onCreated2(self, payload):
        raise CellError("CREATED2 from the previous hop")

    def onDestroy(self, reason):
        self._teardown(reason, toPrev=False, toNext=True)

    def linkClosed(self, ls):
        self._teardown(DestroyReason.CHANNEL_CLOSED, toPrev=False, toNext=True)

    def protocolError(self, reason, why):
        self.destroy(reason, why)

    # -- extending

    def _extend(self, ext):
        if self.next is not None or self.extending:
            raise CellError("EXTEND2 on a circuit that already has a next hop")
        if ext.nodeId == self.switch.nodeId or ext.nodeId == self.prev.peerId:
            raise CellError("EXTEND2 back to this relay or to the previous hop")
        self.extending = True
        d = self.switch._linkTo(ext)
        d.addCallbacks(self._extendLinked, self._extendFailed, callbackArgs=(ext,))
        d.addErrback(lambda f: log.failure("onion switch: extend", f))

    def _extendLinked(self, link, ext):
        if self.closed:
            return
        if link.peerId != ext.nodeId:
            self._extendFailed(None, DestroyReason.OR_IDENTITY)
            return
        sw = self.switch
        ls = sw.attachLink(link)
        self.next = ls
        self.nextId = ls.allocateId()
        self.nextPrefix = self.nextId.to_bytes(4, "big")
        ls.addEnd(self.nextId, _NextEnd(self))
        sw._enqueue(ls, encodeCell(self.nextId, Command.CREATE2, ext.create.encode()))
        sw._flush(None)

    def _extendFailed(self, failure, reason=DestroyReason.CONNECTFAILED):
        if self.closed:
            return
        self.extending = False
        self.sendRelay(RelayCommand.TRUNCATED, 0, Truncated(reason).encode())

    def _extended(self, created):
        if not self.extending:
            raise CellError("CREATED2 without an EXTEND2 pending")
        self.extending = False
        self.sendRelay(RelayCommand.EXTENDED2, 0, Extended2(created).encode())

    def _truncate(self):
        self._dropNext(DestroyReason.REQUESTED, send=True)
        self.extending = False
        self.sendRelay(RelayCommand.TRUNCATED, 0, Truncated(DestroyReason.REQUESTED).encode())

    def _dropNext(self, reason, send):
        ls = self.next
        if ls is None:
            return
        if send and not ls.closed:
            self.switch._enqueue(ls, destroyCell(self.nextId, reason), force=True)
        end = ls.table.get(self.nextId)
        if isinstance(end, _NextEnd) and end.c is self:
            ls.removeEnd(self.nextId, end)
        self.next = self.nextId = self.nextPrefix = None

    def _nextDestroyed(self, reason, linkGone=False):
        self._dropNext(reason, send=False)
        self._teardown(reason, toPrev=True, toNext=False)

    # -- sending toward the origin (edge side)

    def sendRelay(self, command, streamId, data):
        """
        Originate one relay cell toward the origin.

        @return: C{False} if a flow-controlled cell did not fit the window
            or the circuit is closed (nothing was sent), else C{True}.
        """
        if self.closed:
            return False
        flow = command in RelayCommand.FLOW_CONTROLLED
        if flow and self.packWindow.window <= 0:
            return False
        ct, tag = self.layer.originateBackward(packRelay(command, streamId, data))
        if flow:
            self.packWindow.onSent(tag)
        sw = self.switch
        if not sw._enqueue(self.prev, self.prevPrefix + _RELAY + ct):
            self.destroy(DestroyReason.RESOURCELIMIT, "backward queue full")
            return False
        if not sw._depth:
            sw._flush(None)
        return True

    def circuitRoom(self):
        """Flow-controlled cells the circuit window takes now."""
        return 0 if self.closed else self.packWindow.window

    def sendPackets(self, packets):
        """
        Send IP packets to the origin in packet mode.  Packets that do not fit
        the circuit window are dropped, as a full router queue drops them.

        @return: the number of packets sent.
        """
        if self.closed:
            return 0
        room = self.packWindow.window
        while packets and packetCellCount(packets) > room:
            packets = packets[:-1]
        for body in framePackets(packets):
            self.sendRelay(RelayCommand.PACKET, 0, body)
        return len(packets)

    # -- teardown

    def destroy(self, reason, why=""):
        """Tear the circuit down in both directions with C{reason}."""
        self._teardown(reason, toPrev=True, toNext=True, why=why)

    def _teardown(self, reason, toPrev, toNext, why=""):
        if self.closed:
            return
        self.closed = True
        sw = self.switch
        sw.counters["circuits_destroyed"] += 1
        self._dropNext(reason, send=toNext)
        prev = self.prev
        if prev.removeEnd(self.prevId, self):
            prev.peerCircuits -= 1
        if toPrev and not prev.closed:
            sw._enqueue(prev, destroyCell(self.prevId, reason), force=True)
        if why:
            log.debug("onion switch: circuit destroyed ({reason}): {why}", reason=DestroyReason.name(reason), why=why)
        sw.edge.circuitClosed(self, reason)
        if not sw._depth:
            sw._flush(None)


@implementer(ICircuitEdge)
class NullEdge:
    """
    The edge of a relay that is no exit: refuses streams, drops packets.
    Exits plug their own L{meshvpn.interfaces.ICircuitEdge} into the switch.
    """

    def relayReceived(self, circuit, command, streamId, data):
        if command in (RelayCommand.BEGIN, RelayCommand.RESOLVE):
            circuit.sendRelay(RelayCommand.END, streamId, End(4).encode())  # EXITPOLICY

    def packetsReceived(self, circuit, packets):
        pass

    def circuitClosed(self, circuit, reason):
        pass


@implementer(ICellHandler, IStatusSource)
class CircuitSwitch:
    """
    All circuits of one node: relay hops it carries and circuits it originates.

    @param nodeId: this node's 32-byte id (ntor's ID, and the circuit id bit).
    @param keyRing: an L{OnionKeyRing}, or C{None} for a node that relays nothing.
    @param connector: C{callable(Extend2) -> Deferred[ILink]} opening a link to
        an EXTEND2 target (the link manager); links already attached to that
        peer are reused first.
    @param edge: the L{meshvpn.interfaces.ICircuitEdge} for cells that end here.
    """

    def __init__(self, clock, nodeId, keyRing=None, connector=None, edge=None, limits=None):
        self.clock = clock
        self.nodeId = nodeId
        self.keyRing = keyRing
        self.connector = connector
        self.edge = edge or NullEdge()
        self.limits = limits or SwitchLimits()
        self._links = {}
        self._dirty = []
        self._depth = 0
        self.readLimiter = None  # a LinkReadLimiter when the relay has a bandwidth limit
        self.counters = {
            "circuits_created": 0, "circuits_destroyed": 0, "create_refused": 0,
            "cells_unknown_circuit": 0, "protocol_errors": 0, "link_pauses": 0,
            "queue_overflows": 0,
        }

    # -- links

    def attachLink(self, link):
        """Start switching cells of C{link} (idempotent); @return: its L{LinkState}."""
        ls = self._links.get(link)
        if ls is not None:
            return ls
        ls = LinkState(self, link)
        self._links[link] = ls
        link.setCellReceiver(ls.receive)
        if IConsumer.providedBy(link):
            link.registerProducer(ls.out, True)
        link.whenClosed().addBoth(ls.linkClosed)
        return ls

    # ICellHandler: register the switch with linkManager.setCellHandler(switch).

    def linkOpened(self, link):
        self.attachLink(link)

    def cellsReceived(self, link, cells):
        ls = self._links.get(link) or self.attachLink(link)
        ls.receive(cells)

    def linkClosed(self, link, reason):
        ls = self._links.get(link)
        if ls is not None:
            ls.linkClosed(reason)

    def linkToPeer(self, peerId):
        for ls in self._links.values():
            if ls.peerId == peerId and not ls.closed:
                return ls.link
        return None

    def _linkTo(self, ext):
        existing = self.linkToPeer(ext.nodeId)
        if existing is not None:
            return defer.succeed(existing)
        if self.connector is None:
            return defer.fail(LinkError("no link to the EXTEND2 target and no connector"))
        return defer.maybeDeferred(self.connector, ext)

    # -- queues

    def _enqueue(self, ls, cell, force=False):
        out = ls.out
        if len(out.pending) >= self.limits.queueLimit and not force:
            self.counters["queue_overflows"] += 1
            return False
        out.pending.append(cell)
        if not out.dirty:
            out.dirty = True
            self._dirty.append(out)
        return True

    def _flush(self, source):
        dirty, self._dirty = self._dirty, []
        high = self.limits.queueHigh
        for out in dirty:
            out.flush()
            if source is not None and len(out.pending) > high and source not in out.pausedSources:
                out.pausedSources.add(source)
                source.pauseReading(out)

    # -- relay side

    def _onCreate2(self, ls, circId, payload):
        if circId == 0 or (circId & INITIATOR_BIT) == ls.myBit:
            raise CellError("CREATE2 with a circuit id from our half of the id space")
        if circId in ls.table:
            raise CellError("CREATE2 for a circuit id already in use")
        refuse = None
        if self.keyRing is None:
            refuse = "this node relays no circuits"
        elif ls.peerCircuits >= self.limits.maxCircuitsPerPeer:
            refuse = "too many circuits from this peer"
        elif not ls.takeCreateToken():
            refuse = "CREATE2 rate limit"
        if refuse:
            self.counters["create_refused"] += 1
            self._enqueue(ls, destroyCell(circId, DestroyReason.RESOURCELIMIT), force=True)
            return
        create = Create2.decode(payload)
        keySeed, reply = ntor.serverRespond(create.hdata, self.nodeId, self.keyRing.findKey)
        circuit = RelayCircuit(self, ls, circId, RelayLayer(keySeed))
        ls.addEnd(circId, circuit)
        ls.peerCircuits += 1
        self.counters["circuits_created"] += 1
        self._enqueue(ls, encodeCell(circId, Command.CREATED2, Created2(reply).encode()))

    def _protocolError(self, ls, cell, why, reason=DestroyReason.PROTOCOL):
        """Close only the circuit the bad cell named; never the link or the node."""
        self.counters["protocol_errors"] += 1
        if len(cell) < 5:
            return
        circId = int.from_bytes(cell[:4], "big")
        if circId == 0:
            return
        entry = ls.table.get(circId)
        if entry is not None:
            entry.protocolError(reason, why)
        elif cell[4] != Command.DESTROY:
            self._enqueue(ls, destroyCell(circId, reason), force=True)

    # -- status

    def circuitCount(self):
        return sum(len(ls.table) for ls in self._links.values())

    def status(self):
        return {"links": len(self._links), "circuit_ends": self.circuitCount(), **self.counters}
