"""Relay messages at the end they were meant for: one dispatcher for the
origin and for a relay's hop.

Once a hop's layer is off and its tag checks, what happens to a relay
message is the same at both ends of a circuit: DATA and PACKET count
against the receive window (an authenticated SENDME goes back every 100
cells), a circuit SENDME reopens the send window, PACKET bodies are
reassembled into IP packets, stream messages go to the stream layer, DROP
is padding.  The ends differ only in which control and stream messages they
accept, from where, and where delivered packets and stream messages go.
The packing side of packet mode (fitting packets into the send window) is
here too, so both ends send packets the same way, and so is the per-circuit
negotiation of congestion control and stream XON/XOFF (FLOW_NEGOTIATE from
the origin, FLOW_NEGOTIATED from the last hop; L{meshvpn.onion.flow}).

L{RelayDispatcher} is a base class of both circuit ends rather than an
object they hold: it keeps the per-cell path at one method call and the
circuits free of reference cycles, so a torn-down circuit is freed at once.
"""

from meshvpn.onion.cells import RELAY_DATA_LEN as _MAX_DATA
import struct

from meshvpn.onion.cells import CellError, FlowNegotiate, RelayCommand, Sendme, packRelay, unpackRelay
from meshvpn.onion.flow import FLOW_ALL, FLOW_CC, FLOW_GSO, FLOW_XON, ReceiveWindow, SendWindow, VegasWindow
from meshvpn.onion.packets import MAX_PACKET, OffloadPacket, PacketReader, packetRecords, recordSize

_DATA = RelayCommand.DATA
_PACKET = RelayCommand.PACKET
_SENDME = RelayCommand.SENDME
_DROP = RelayCommand.DROP
_MP_DATA = RelayCommand.MP_DATA
_NAMES = RelayCommand.NAMES
PACKET_BACKLOG = 256 * 1024  # bytes of IP packets that may wait for the circuit window, per circuit end
_HEAD_PAD = bytes(10)  # tag and recognized, zero until the crypto layer fills in the tag
_DATA_HEADER = struct.Struct(">BHH")
_NEGOTIATE = RelayCommand.FLOW_NEGOTIATE
_NEGOTIATED = RelayCommand.FLOW_NEGOTIATED

def _fitting(packets, room, size):
    """How many of C{packets}, from the front, fit C{room} cells of C{size} data bytes framed together."""
    total = 0
    for i, p in enumerate(packets):
        total += recordSize(p)
        if -(-total // size) > room:
            return i
    return len(packets)


# The value in an end's table for messages that belong to the stream layer.
STREAM = None
_REFUSED = object()


class RelayDispatcher:
    """
    The relay messages of one circuit end, in and out: circuit windows,
    packet framing, and the dispatch of what arrives.

    A subclass says what it accepts and where deliveries go:

      - C{ACCEPTS}: C{{relay command: function or STREAM}}, the messages it
        takes besides DATA, PACKET, circuit SENDME and DROP; a function is
        called as C{function(self, cellCommand, header, hop)}.
      - C{EDGE_ONLY}: commands of C{ACCEPTS} taken only at the circuit's edge
        (from the last hop at the origin; at the last hop at a relay), as
        DATA, PACKET and circuit SENDMEs always are.
      - C{NOT_AT_EDGE}, C{WHO}: how errors name the wrong place and this end.
      - C{maxData}: data bytes per relay message to or from the circuit's
        edge (494; 488 when that hop uses CGO, L{meshvpn.onion.cgohops}).
      - C{sendRelay(command, streamId, data) -> bool}, C{_packetsArrived(packets)},
        C{_streamArrived(command, streamId, data)} and C{_windowOpened()}.
    """

    ACCEPTS = {}
    EDGE_ONLY = frozenset()
    NOT_AT_EDGE = "away from the circuit's edge"
    WHO = "this end"
    maxData = _MAX_DATA

    def __init__(self, clock):
        self.packWindow = SendWindow()
        self.deliverWindow = ReceiveWindow()
        self.packetReader = PacketReader()
        self.packetsDropped = 0
        self._backlog = []  # packets waiting for the window (packet mode)
        self._backlogBytes = 0
        self._tail = b""  # the framed rest of a packet whose start filled the window
        self.flowClock = clock
        self.flowFlags = 0  # what the circuit negotiated (meshvpn.onion.flow FLOW_*)
        self._flowState = None  # None, "proposed" (origin), "agreed"

    # -- negotiation of congestion control and XON/XOFF

    def negotiateFlow(self, flags=FLOW_ALL):
        """
        At the origin, once the circuit is built and before anything else is
        sent on it: propose C{flags} to the last hop.  The last hop takes
        them all or destroys the circuit, so they are in force here at once
        (FLOW_NEGOTIATED only confirms); the last hop applies them on
        receipt, before any stream or packet, in order.
        """
        if self._flowState is not None or self.packWindow.sent:
            raise CellError("flow control is negotiated once, before any data")
        self._useFlow(flags)
        self._flowState = "proposed"
        self.sendRelay(_NEGOTIATE, 0, FlowNegotiate(flags).encode())

    def _useFlow(self, flags):
        self.flowFlags = flags
        self.packetReader.offload = bool(flags & FLOW_GSO)
        if flags & FLOW_CC:
            self.packWindow = VegasWindow(self.flowClock)

    def _onFlowNegotiate(self, cellCommand, hdr, hop):
        flags = FlowNegotiate.decode(hdr.data).flags
        if self._flowState is not None:
            raise CellError("a second FLOW_NEGOTIATE")
        if self._flowStarted():
            raise CellError("FLOW_NEGOTIATE after data or streams")
        self._useFlow(flags)
        self._flowState = "agreed"
        self.sendRelay(_NEGOTIATED, 0, FlowNegotiate(flags).encode())

    def _onFlowNegotiated(self, cellCommand, hdr, hop):
        flags = FlowNegotiate.decode(hdr.data).flags
        if self._flowState != "proposed" or flags != self.flowFlags:
            raise CellError("FLOW_NEGOTIATED that does not answer our proposal")
        self._flowState = "agreed"

    def _flowStarted(self):
        return bool(self.packWindow.sent or self.deliverWindow.received)

    def _dispatch(self, cellCommand, plain, tag, atEdge, hop):
        """
        Act on one recognized relay message.

        @param plain: the relay payload with every layer removed.
        @param tag: its tag (what a SENDME acknowledges).
        @param atEdge: it came from (origin) or reached (relay) the last hop.
        @param hop: at the origin, the index of the hop that sent it.
        @raise CellError: or L{meshvpn.onion.flow.FlowError}: the message
            breaks the protocol; the channel destroys the circuit.
        """
        c = plain[10]
        if c == _DATA:
            # The hot path, parsed in place (no header object): the checks
            # are unpackRelay's for DATA.
            sid = (plain[11] << 8) | plain[12]
            n = (plain[13] << 8) | plain[14]
            if n > _MAX_DATA or sid == 0 or not atEdge:
                unpackRelay(plain)  # raises the precise error for the first two
                raise CellError(f"relay DATA {self.NOT_AT_EDGE}")
            ack = self.deliverWindow.onReceived(tag)
            if ack is not None:
                self.sendRelay(_SENDME, 0, Sendme(ack).encode())
            self._streamArrived(_DATA, sid, plain[15:15 + n])
            return
        hdr = unpackRelay(plain)
        if c == _PACKET:
            if not atEdge:
                raise CellError(f"relay {_NAMES[c]} {self.NOT_AT_EDGE}")
            ack = self.deliverWindow.onReceived(tag)
            if ack is not None:
                self.sendRelay(_SENDME, 0, Sendme(ack).encode())
            packets = self.packetReader.feed(hdr.data)
            if packets:
                self._packetsArrived(packets)
        elif c == _SENDME and hdr.streamId == 0:
            if not atEdge:
                raise CellError(f"circuit SENDME {self.NOT_AT_EDGE}")
            self.packWindow.onSendme(Sendme.decode(hdr.data).tag)
            if self._backlog or self._tail:
                self._drainPackets()
            self._windowOpened()
        elif c == _DROP:
            pass
        else:
            handler = self.ACCEPTS.get(c, _REFUSED)
            if handler is _REFUSED:
                raise CellError(f"relay {_NAMES[c]} is not accepted by {self.WHO}")
            if not atEdge and c in self.EDGE_ONLY:
                raise CellError(f"relay {_NAMES[c]} {self.NOT_AT_EDGE}")
            if handler is STREAM:
                if c == _MP_DATA:
                    # Multipath data counts against the circuit window like DATA:
                    # each leg's congestion controller sees its own cells.
                    ack = self.deliverWindow.onReceived(tag)
                    if ack is not None:
                        self.sendRelay(_SENDME, 0, Sendme(ack).encode())
                self._streamArrived(c, hdr.streamId, hdr.data)
            else:
                handler(self, cellCommand, hdr, hop)

    def _dataCells(self, streamId, chunks):
        """
        The plain relay payloads of DATA cells carrying C{chunks} (each at
        most C{maxData} bytes) for C{streamId}, with a zero tag; the window is
        charged by the caller.
        """
        size = self.maxData
        full = _HEAD_PAD + _DATA_HEADER.pack(_DATA, streamId, size)
        tail = bytes(_MAX_DATA - size)  # a CGO hop's body ends before the old layout's padding
        out = []
        for chunk in chunks:
            n = len(chunk)
            if n == size:
                out.append(full + chunk + tail if tail else full + chunk)
            else:
                out.append(packRelay(_DATA, streamId, chunk))
        return out

    def _dispatchRun(self, cellCommand, entries, last):
        """
        Act on recognized messages in order: C{entries} are C{(hop, plain,
        tag)}.  The packets a run of PACKET cells completes are delivered
        together (one TUN batch), and on a circuit with XON/XOFF consecutive
        DATA cells of one stream reach the stream layer as one message (one
        delivery, one write to the application instead of one per cell);
        stream windows, which count cells, are not in use there.

        @param last: the hop index of the circuit's edge.
        """
        xon = self.flowFlags & FLOW_XON
        parts, sid, bodies = [], 0, []
        onReceived = self.deliverWindow.onReceived
        for hop, plain, tag in entries:
            c = plain[10]
            if c == _PACKET and hop == last:
                # A run of PACKET cells is parsed in place (the checks are
                # unpackRelay's for PACKET) and reassembled as one byte
                # stream: one pass over the run, its packets one TUN batch.
                n = (plain[13] << 8) | plain[14]
                if n > _MAX_DATA or plain[11] or plain[12]:
                    unpackRelay(plain)  # raises the precise error
                if parts:
                    self._streamArrived(_DATA, sid, b"".join(parts))
                    parts = []
                ack = onReceived(tag)
                if ack is not None:
                    self.sendRelay(_SENDME, 0, Sendme(ack).encode())
                bodies.append(plain[15:15 + n])
                continue
            if bodies:
                self._deliverPacketBodies(bodies)
                bodies = []
            if not xon:
                self._dispatch(cellCommand, plain, tag, hop == last, hop)
                continue
            if c == _DATA and hop == last:
                s = (plain[11] << 8) | plain[12]
                n = (plain[13] << 8) | plain[14]
                if n <= _MAX_DATA and s != 0:
                    ack = onReceived(tag)
                    if ack is not None:
                        self.sendRelay(_SENDME, 0, Sendme(ack).encode())
                    if s != sid and parts:
                        self._streamArrived(_DATA, sid, b"".join(parts))
                        parts = []
                    sid = s
                    parts.append(plain[15:15 + n])
                    continue
            if parts:
                self._streamArrived(_DATA, sid, b"".join(parts))
                parts = []
            self._dispatch(cellCommand, plain, tag, hop == last, hop)
        if parts:
            self._streamArrived(_DATA, sid, b"".join(parts))
        if bodies:
            self._deliverPacketBodies(bodies)

    def _deliverPacketBodies(self, bodies):
        packets = self.packetReader.feed(b"".join(bodies) if len(bodies) > 1 else bodies[0])
        if packets:
            self._packetsArrived(packets)

    def _sendPacketsInWindow(self, packets):
        """
        Send IP packets in as few PACKET cells as possible.  Those that do
        not fit the send window wait in a bounded backlog (a router's
        buffer: TCP inside does badly behind a buffer of zero, its bursts
        would be cut) and leave as SENDMEs open the window; past
        C{PACKET_BACKLOG} bytes they are dropped (counted in
        C{packetsDropped}), as a full router queue drops them, and TCP
        inside recovers.

        The window is always filled to its last cell, the next packet cut
        across it if need be (records are a byte stream, the reader joins
        them): a packet needing more cells than are left must not wait for
        the window to open, because a SENDME comes only every C{increment}
        cells received, and with a congestion window near its minimum the
        cells still unacknowledged may be fewer -- no SENDME would ever come.

        @return: the number of packets sent or queued.
        """
        if not self.flowFlags & FLOW_GSO:
            kept = [p for p in packets if type(p) is not OffloadPacket]
            if len(kept) != len(packets):
                # The edge segments them for such a circuit (meshvpn.tun.offload); never framed as plain.
                self.packetsDropped += len(packets) - len(kept)
                packets = kept
        if self._backlog or self._tail:
            # Packets keep their order: new ones wait behind the backlog.
            return self._queuePackets(packets)
        fit = _fitting(packets, self.packWindow.window, self.maxData)
        if fit:
            self._sendPacketCells(packets[:fit])
        if fit < len(packets):
            queued = self._queuePackets(packets[fit:])
            self._drainPackets()
            return fit + queued
        return fit

    def _sendPacketCells(self, packets):
        self._sendPacketStream(packetRecords(packets))

    def _sendPacketStream(self, stream):
        size = self.maxData
        n = len(stream)
        if n <= size:
            if stream:
                self.sendRelay(_PACKET, 0, stream)
            return
        # Full cells share one prepared header (packRelay's bytes, without
        # its per-cell packing); only the last, short one is packed.
        whole = n - n % size
        full = _HEAD_PAD + _DATA_HEADER.pack(_PACKET, 0, size)
        tail = bytes(_MAX_DATA - size)
        plains = [b"".join((full, stream[i:i + size], tail)) for i in range(0, whole, size)]
        if whole < n:
            plains.append(packRelay(_PACKET, 0, stream[whole:]))
        self._sendRun(plains)

    def _queuePackets(self, packets):
        backlog = self._backlog
        queued = 0
        for p in packets:
            if self._backlogBytes + len(p) > PACKET_BACKLOG:
                self.packetsDropped += len(packets) - queued
                break
            queued += 1
            if not 0 < len(p) <= MAX_PACKET:
                self.packetsDropped += 1  # cannot be framed (what packetRecords refuses)
                continue
            backlog.append(p)
            self._backlogBytes += len(p)
        return queued

    def _drainPackets(self):
        """
        The window has room: send the rest of a cut packet, then whole
        packets from the backlog, then the start of the next one in the
        window's last cells.
        """
        room = self.packWindow.window
        if room <= 0:
            return
        space = room * self.maxData
        tail = self._tail
        if len(tail) >= space:
            self._tail = tail[space:]
            self._sendPacketStream(tail[:space])
            return
        backlog = self._backlog
        used, n = len(tail), 0
        for p in backlog:
            size = recordSize(p)
            if used + size > space:
                break
            used += size
            n += 1
        parts = [tail, packetRecords(backlog[:n])]
        self._backlogBytes -= sum(len(p) for p in backlog[:n])
        del backlog[:n]
        if backlog and used < space:
            p = backlog.pop(0)
            self._backlogBytes -= len(p)
            record = packetRecords((p,))
            parts.append(record[:space - used])
            self._tail = record[space - used:]
        else:
            self._tail = b""
        self._sendPacketStream(b"".join(parts))

    def sendDataRun(self, streamId, chunks):
        """
        DATA cells for C{streamId}, one per chunk (each at most C{maxData} bytes):
        a tag per cell, one AES call per layer, one append to the queue.
        The caller checked C{circuitRoom()}.

        @return: C{False} if nothing was sent (closed, or the queue was full).
        """
        return self._sendRun(self._dataCells(streamId, chunks))
