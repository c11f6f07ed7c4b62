"""The channel: one link as the onion plane uses it.

A channel holds the circuits that live on its link, keyed by circuit id, so
an incoming cell is switched with one dict lookup; it allocates the ids of
the circuits this end starts on the link; and it queues the cells going out.
The queue is written with one C{sendCells} call per incoming batch or
reactor turn (L{meshvpn.onion.flusher}), never one call per cell, which is
what keeps a TLS link at one write per batch.

The queue is bounded.  When the link stops taking cells (its consumer paused
the channel), the queue grows; past the high-water mark every channel that
fed it is paused in turn (Twisted push producers) and resumed below the
low-water mark.  A send that would overfill the queue (its peer ignored the
pause) is refused, and the circuit that made it is destroyed with
RESOURCELIMIT by its owner, so memory stays bounded whatever peers do.
A queue held while the link was paused leaves light circuits first
(L{meshvpn.onion.lightfirst}): a bulk circuit's backlog does not hold an
interactive circuit's cells behind it.

CREATE2 and CREATED2 bodies longer than one cell (the hybrid handshake)
arrive as a first cell and CREATE2_MORE / CREATED2_MORE continuations; the
channel puts them together (L{meshvpn.onion.fragments.PendingBodies},
bounded per link, per node and in time) and hands on whole bodies only.
"""

import secrets

from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from meshvpn.interfaces import IChannel
from meshvpn.link.cellsize import CELL_SIZE
from meshvpn.onion import ntor
from meshvpn.onion.cells import INITIATOR_BIT, CellError, Command, DestroyReason
from meshvpn.onion.cgo import runEnd
from meshvpn.onion.destroy import destroyCell
from meshvpn.onion.flow import FlowError
from meshvpn.onion.fragments import PendingBodies
from meshvpn.onion.lightfirst import lightFirst

log = Logger()


@implementer(IChannel, IPushProducer)
class Channel:
    """
    The circuits on one link and the cells waiting to go out on it.

    @param switch: the node's L{meshvpn.onion.switch.CircuitSwitch}: it
        answers CREATE2 (C{createReceived}), hears of the link's end
        (C{channelClosed}), and holds the limits, counters, clock, flusher
        and read limiter the channel uses.
    @param link: the L{meshvpn.interfaces.ILink}.

    As an C{IPushProducer} the channel is registered with its link: the link
    pauses it when its peer does not take cells fast enough.
    """

    __slots__ = ("link", "peerId", "circuits", "closed", "peerCircuits", "createBucket", "_switch", "_flusher",
                 "_counters", "_myBit", "_queue", "_scheduled", "_paused", "_high", "_low", "_limit",
                 "_heldSources", "_pausers", "_bodies", "__weakref__")

    def __init__(self, switch, link):
        self.link = link
        self.peerId = link.peerId
        self.circuits = {}
        self.closed = False
        self.peerCircuits = 0  # circuits the peer created on this link (the per-peer limit)
        limits = switch.limits
        # Shared by every link from the peer's address: a new link brings no new burst.
        self.createBucket = switch.createBucket(link)
        self._switch = switch
        self._flusher = switch.flusher
        self._counters = switch.counters
        self._bodies = PendingBodies(switch.clock, switch.halfOpen, self._bodyExpired,
                                     limits.halfOpenPerLink, limits.halfOpenMaxAge)
        # Each end allocates ids with its own value of the top bit, so the two
        # ends never pick the same id: the end that dialled the link sets it
        # (Tor's rule).  A link that cannot say falls back to comparing ids.
        initiator = link.isInitiator
        if initiator is None:
            initiator = switch.nodeId > (link.peerId or b"")
        self._myBit = INITIATOR_BIT if initiator else 0
        self._queue = []
        self._scheduled = False
        self._paused = False
        self._high = limits.queueHigh
        self._low = limits.queueLow
        self._limit = limits.queueLimit
        self._heldSources = set()  # channels paused because this queue is over the high-water mark
        self._pausers = set()  # what paused reading this link: output channels, the read limiter

    # -- the circuit map

    def allocateId(self):
        while True:
            circId = (secrets.randbits(31) or 1) | self._myBit
            if circId not in self.circuits:
                return circId

    def addCircuit(self, circId, end):
        # A link that carries circuits is never closed for idleness.
        if not self.circuits:
            self.link.acquire()
        self.circuits[circId] = end

    def removeCircuit(self, circId, end):
        if self.circuits.get(circId) is end:
            del self.circuits[circId]
            if self._bodies:
                self._bodies.forget(circId)
            if not self.circuits and not self.closed:
                self.link.release()
            return True
        return False

    # -- sending

    def send(self, cell):
        if len(self._queue) >= self._high and not self._makeRoom(1):
            return False
        self._queue.append(cell)
        if not self._scheduled:
            self._scheduled = True
            self._flusher.schedule(self)
        return True

    def sendCells(self, cells):
        if len(self._queue) + len(cells) > self._high and not self._makeRoom(len(cells)):
            return False
        self._queue.extend(cells)
        if not self._scheduled:
            self._scheduled = True
            self._flusher.schedule(self)
        return True

    def sendDestroy(self, circId, reason):
        if self.closed:
            return
        # Never refused: a DESTROY frees the peer's resources, so it must get out.
        self._queue.append(destroyCell(circId, reason))
        if not self._scheduled:
            self._scheduled = True
            self._flusher.schedule(self)

    def _makeRoom(self, count):
        """
        The queue is at its high-water mark: write it now if the link takes
        cells (a turn that makes this many cells is written in several
        batches), else take C{count} more only below the hard limit.
        """
        if self.closed:
            self._queue = []  # nothing will be written; drop instead of growing
            return True
        if not self._paused:
            self._write()
            return True
        if len(self._queue) + count <= self._limit:
            return True
        self._counters["queue_overflows"] += 1
        return False

    def _write(self):
        cells, self._queue = self._queue, []
        self.link.sendCells(cells)

    def queued(self):
        return len(self._queue)

    def flushBatch(self, source, writeEarly):
        """
        The end of an incoming batch from C{source}: write now if the queue
        holds C{writeEarly} cells or more (then pausing C{source} if still
        over the high-water mark), else wait for the end of the turn.

        @return: C{True} if done (written or nothing to write), C{False} if
            the cells wait for the end of the turn.
        """
        if len(self._queue) < writeEarly and not self.closed:
            return False
        self.flush(source)
        return True

    def flush(self, source=None):
        self._scheduled = False
        if self._queue and not self._paused and not self.closed:
            self._write()
        queued = len(self._queue)
        if source is not None and queued > self._high and source not in self._heldSources:
            self._heldSources.add(source)
            source.pauseReading(self)
        elif self._heldSources and queued <= self._low:
            held, self._heldSources = self._heldSources, set()
            for channel in held:
                channel.resumeReading(self)

    # IPushProducer: the link pauses us when its peer is slow to take cells

    def pauseProducing(self):
        self._paused = True

    def resumeProducing(self):
        self._paused = False
        if len(self._queue) > 1:
            # held while the link was paused: light circuits leave first
            self._queue = lightFirst(self._queue)
        self.flush()

    def stopProducing(self):
        self._paused = True
        self._queue = []

    # -- receiving

    def pauseReading(self, by):
        if not self._pausers and IPushProducer.providedBy(self.link):
            self.link.pauseProducing()
        self._pausers.add(by)
        self._counters["link_pauses"] += 1

    def resumeReading(self, by):
        self._pausers.discard(by)
        if not self._pausers and not self.closed and IPushProducer.providedBy(self.link):
            self.link.resumeProducing()

    def receive(self, cells):
        circuits = self.circuits
        limiter = self._switch.readLimiter
        perCircuit = {} if limiter is not None and limiter.circuitRate else None
        i, n = 0, len(cells)
        while i < n:
            cell = cells[i]
            i += 1
            try:
                if len(cell) != CELL_SIZE:
                    raise CellError(f"cell is {len(cell)} bytes, expected {CELL_SIZE}")
                cmd = cell[4]
                if cmd == 3 or cmd == 9:  # RELAY, RELAY_EARLY: the hot path
                    end = circuits.get(int.from_bytes(cell[:4], "big"))
                    if end is None:
                        self._counters["cells_unknown_circuit"] += 1
                        continue
                    if cmd == 3 and end.TAKES_RUNS and i < n:
                        # A run of RELAY cells of one circuit goes to its end at
                        # once (one AES call per layer, not per cell); an end
                        # that takes the link's cells themselves is spared a
                        # slice per cell (the CGO hops: one C call per run).
                        j = runEnd(cells, i - 1)
                        if j > i:
                            start, i = i - 1, j
                            if perCircuit is not None:
                                perCircuit[end] = perCircuit.get(end, 0) + j - start
                            if getattr(end, "TAKES_CELLS", False):
                                end.onRelayCells(cells, start, j)
                            else:
                                end.onRelayRun([c[5:] for c in cells[start:j]])
                            continue
                    if perCircuit is not None:
                        perCircuit[end] = perCircuit.get(end, 0) + 1
                    end.onRelay(cmd, cell[5:])
                else:
                    self._control(cmd, int.from_bytes(cell[:4], "big"), cell)
            except (CellError, FlowError, ntor.HandshakeError) as e:
                self._protocolError(cell, str(e), getattr(e, "reason", DestroyReason.PROTOCOL))
            except Exception:
                log.failure("onion channel: internal error handling a cell")
                self._protocolError(cell, "internal error", DestroyReason.INTERNAL)
        if limiter is not None:
            limiter.charge(self, len(cells), perCircuit)
        self._flusher.flush(self)

    def _control(self, cmd, circId, cell):
        if cmd == Command.CREATE2:
            if circId == 0 or (circId & INITIATOR_BIT) == self._myBit:
                raise CellError("CREATE2 with a circuit id from our half of the id space")
            if circId in self.circuits:
                raise CellError("CREATE2 for a circuit id already in use")
            body = self._bodies.first(circId, cmd, cell[5:])
            if body is not None:
                self._switch.createReceived(self, circId, body)
        elif cmd == Command.CREATE2_MORE:
            body = self._bodies.more(circId, Command.CREATE2, cell[5:])
            if body is not None:
                if circId in self.circuits:
                    raise CellError("CREATE2 for a circuit id already in use")
                self._switch.createReceived(self, circId, body)
        elif cmd == Command.PADDING:
            pass
        elif circId == 0:
            raise CellError(f"command {cmd} on circuit id 0")
        elif cmd == Command.DESTROY:
            self._bodies.forget(circId)
            end = self.circuits.get(circId)
            if end is not None:
                end.onDestroy(cell[5])
        elif cmd == Command.CREATED2 or cmd == Command.CREATED2_MORE:
            end = self.circuits.get(circId)
            if end is None:
                raise CellError(f"{Command.NAMES[cmd]} for a circuit we did not create")
            if cmd == Command.CREATED2:
                body = self._bodies.first(circId, cmd, cell[5:])
            else:
                body = self._bodies.more(circId, Command.CREATED2, cell[5:])
            if body is not None:
                end.onCreated2(body)
        else:
            raise CellError(f"unknown cell command {cmd}")

    def _protocolError(self, cell, why, reason=DestroyReason.PROTOCOL):
        """Close only the circuit the bad cell named; never the link or the node."""
        self._counters["protocol_errors"] += 1
        if len(cell) < 5:
            return
        circId = int.from_bytes(cell[:4], "big")
        if circId == 0:
            return
        end = self.circuits.get(circId)
        if end is not None:
            end.protocolError(reason, why)
        elif cell[4] != Command.DESTROY:
            self.sendDestroy(circId, reason)

    def _bodyExpired(self, circId, command):
        """A CREATE2 or CREATED2 body was not finished in time: the circuit it was for goes."""
        self._counters["handshakes_expired"] += 1
        end = self.circuits.get(circId)
        if end is not None:
            end.protocolError(DestroyReason.TIMEOUT, f"{Command.NAMES[command]} not finished in time")
        elif not self.closed:
            self.sendDestroy(circId, DestroyReason.TIMEOUT)

    def linkClosed(self, reason):
        if self.closed:
            return
        self.closed = True
        self._bodies.clear()
        self._switch.channelClosed(self)
        for end in list(self.circuits.values()):
            end.linkClosed(self)
        self.circuits.clear()
        self._queue = []
        if IConsumer.providedBy(self.link):
            self.link.unregisterProducer()
        held, self._heldSources = self._heldSources, set()
        for channel in held:
            channel.resumeReading(self)
