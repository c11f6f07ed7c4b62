"""Origin-side circuits: build a path hop by hop (CREATE2, then EXTEND2 in
RELAY_EARLY cells), wrap every outgoing cell in one layer per hop, unwrap and
authenticate every incoming one, and carry packets (packet mode) or, through
a pluggable stream handler, streams.
"""

import attrs
from twisted.internet import defer
from zope.interface import implementer

from meshvpn.errors import LinkError, MeshVPNError
from meshvpn.interfaces import ICircuit
from meshvpn.onion import ntor
from meshvpn.onion.cells import (
    HTYPE_NTOR, MAX_RELAY_EARLY, CellError, Command, Create2, Created2, DestroyReason, Extend2,
    Extended2, RelayCommand, Sendme, Truncated, encodeCell, packRelay, unpackRelay,
)
from meshvpn.onion.flow import ReceiveWindow, SendWindow
from meshvpn.onion.packets import PacketReader, framePackets, packetCellCount
from meshvpn.onion.relaycrypto import OriginCrypto
from meshvpn.onion.switch import CircuitDestroyed, destroyCell, reasonCode

_CMD = {False: bytes([Command.RELAY]), True: bytes([Command.RELAY_EARLY])}
DEFAULT_BUILD_TIMEOUT = 10.0


@attrs.frozen
class HopSpec:
    """What the origin needs to reach and authenticate one hop (from its descriptor)."""

    nodeId: bytes
    onionKey: bytes
    addresses: tuple = ()
    transports: tuple = ()


@implementer(ICircuit)
class OriginCircuit:
    """
    A circuit this node originates over C{guardLink}, through C{path}
    (L{HopSpec}s, guard first).  Call L{build}.

    @ivar streamHandler: the stream layer's hook, shaped like
        L{meshvpn.streams.mux.StreamMux}: C{relayReceived(command,
        streamId, data)} gets every stream cell (BEGIN..RESOLVED, stream
        SENDMEs); optional C{circuitWindowOpened()} is called when a circuit
        SENDME reopens the window, C{circuitClosed()} when the circuit
        dies, and C{openStream(host, port, protocol)} serves L{openStream}
        (L{meshvpn.streams.edge.attachStreams} installs a StreamMux).
        It sends with L{sendRelay} and asks L{circuitRoom} before DATA.
        Without one, L{openStream} fails and stream cells are dropped.
    """

    def __init__(self, switch, guardLink, path, buildTimeout=DEFAULT_BUILD_TIMEOUT):
        if not path:
            raise ValueError("a circuit needs at least one hop")
        if guardLink.peerId != path[0].nodeId:
            raise LinkError("the guard link's peer is not the path's first hop")
        self.path = list(path)
        self.switch = switch
        self.ls = switch.attachLink(guardLink)
        self.circId = self.ls.allocateId()
        self.prefix = self.circId.to_bytes(4, "big")
        self.crypto = OriginCrypto()
        self.buildTimeout = buildTimeout
        self.packWindow = SendWindow()
        self.deliverWindow = ReceiveWindow()
        self.packetReader = PacketReader()
        self.streamHandler = None
        self.closed = False
        self.closeReason = None
        self.earlySent = 0
        self.packetsDropped = 0
        self._packetReceiver = None
        self._waiter = None
        self._closeWaiters = []

    # -- building

    def build(self):
        """
        @return: a Deferred firing with this circuit once every hop is added;
            fails with L{CircuitDestroyed} (the circuit is then closed).
        """
        return defer.Deferred.fromCoroutine(self._build())

    async def _build(self):
        clock = self.switch.clock
        timer = clock.callLater(self.buildTimeout, self._destroy, DestroyReason.TIMEOUT, "build timed out", True)
        try:
            first = self.path[0]
            state, onionskin = ntor.clientCreate(first.nodeId, first.onionKey)
            self.ls.addEnd(self.circId, self)
            d = self._expect()
            self._send(encodeCell(self.circId, Command.CREATE2, Create2(HTYPE_NTOR, onionskin).encode()))
            self.crypto.addHop(self._finish(state, await self._hopFailure(d, 0), 0))
            for hop in self.path[1:]:
                await self._extendTo(hop)
        finally:
            if timer.active():
                timer.cancel()
        return self

    async def _extendTo(self, hop):
        state, onionskin = ntor.clientCreate(hop.nodeId, hop.onionKey)
        ext = Extend2(hop.nodeId, tuple(hop.addresses), tuple(hop.transports), Create2(HTYPE_NTOR, onionskin))
        d = self._expect()
        self.sendRelay(RelayCommand.EXTEND2, 0, ext.encode(), hop=len(self.crypto.hops) - 1, early=True)
        index = len(self.crypto.hops)
        self.crypto.addHop(self._finish(state, await self._hopFailure(d, index), index))

    def extend(self, hop):
        """Add C{hop} at the end of an open circuit. @return: a Deferred firing with C{None}."""
        self.path.append(hop)
        return defer.Deferred.fromCoroutine(self._extendTo(hop))

    def truncate(self, keep):
        """
        Ask hop C{keep - 1} to drop everything after it.

        @return: a Deferred firing with the TRUNCATED reason.
        """
        d = self._expect()
        self.sendRelay(RelayCommand.TRUNCATE, 0, b"", hop=keep - 1)
        return d

    @staticmethod
    def _hopFailure(d, index):
        """Name hop C{index} in a failure of its handshake (for retries elsewhere)."""

        def name(f):
            f.trap(CircuitDestroyed)
            if f.value.hop is None:
                f.value.hop = index
            return f

        return d.addErrback(name)

    def _finish(self, state, reply, index):
        try:
            return ntor.clientFinish(state, reply)
        except ntor.HandshakeError as e:
            self._destroy(DestroyReason.PROTOCOL, str(e), True)
            raise CircuitDestroyed(DestroyReason.PROTOCOL, str(e), hop=index) from None

    def _expect(self):
        if self.closed:
            raise self.closeReason
        if self._waiter is not None:
            raise MeshVPNError("a circuit handshake is already in progress")
        self._waiter = defer.Deferred()
        return self._waiter

    def _answer(self, value):
        w, self._waiter = self._waiter, None
        if w is None:
            raise CellError("handshake reply nobody asked for")
        w.callback(value)

    # -- sending

    def _send(self, cell):
        sw = self.switch
        if not sw._enqueue(self.ls, cell):
            self._destroy(DestroyReason.RESOURCELIMIT, "guard link queue full", True)
            return False
        if not sw._depth:
            sw._flush(None)
        return True

    def sendRelay(self, command, streamId, data, hop=-1, early=False):
        """
        Send one relay cell to hop C{hop} (default: the last).

        @return: C{False} if nothing was sent (closed, or a flow-controlled
            cell that does not fit the circuit window).
        """
        if self.closed:
            return False
        flow = command in RelayCommand.FLOW_CONTROLLED
        if flow and self.packWindow.window <= 0:
            return False
        if early:
            if self.earlySent >= MAX_RELAY_EARLY:
                raise MeshVPNError("RELAY_EARLY budget of this circuit is spent")
            self.earlySent += 1
        hopIndex = hop if hop >= 0 else len(self.crypto.hops) - 1
        ct, tag = self.crypto.encrypt(packRelay(command, streamId, data), hopIndex)
        if flow:
            self.packWindow.onSent(tag)
        return self._send(self.prefix + _CMD[early] + ct)

    def circuitRoom(self):
        """Flow-controlled cells (DATA, PACKET) the circuit window takes now."""
        return 0 if self.closed else self.packWindow.window

    def sendPacket(self, packet):
        """Send one IP packet (packet mode); dropped if the window is full."""
        return self.sendPackets([packet])

    def sendPackets(self, packets):
        """
        Send IP packets in as few cells as possible.  Those that do not fit the
        circuit window are dropped (counted in C{packetsDropped}), as a full
        router queue drops them; TCP inside recovers.

        @return: the number of packets sent.
        """
        if self.closed:
            return 0
        room = self.packWindow.window
        n = len(packets)
        while packets and packetCellCount(packets) > room:
            packets = packets[:-1]
        self.packetsDropped += n - len(packets)
        for body in framePackets(packets):
            self.sendRelay(RelayCommand.PACKET, 0, body)
        return len(packets)

    def setPacketReceiver(self, receiver):
        """C{receiver(packets: list[bytes])} gets IP packets the exit sends back."""
        self._packetReceiver = receiver

    def openStream(self, host, port, isolation=None, protocol=None):
        """
        BEGIN a stream through the stream layer; C{isolation} was already
        used by the circuit manager to choose this circuit.
        """
        if self.streamHandler is None:
            return defer.fail(MeshVPNError("no stream layer is attached to this circuit"))
        return self.streamHandler.openStream(host, port, protocol)

    # -- receiving (entries of the switch's table for the guard link)

    def onRelay(self, cmd, payload):
        if cmd != Command.RELAY:
            raise CellError("RELAY_EARLY travelling toward the origin")
        res = self.crypto.decrypt(payload)
        if res is None:
            raise CellError("relay cell recognized by no hop (modified, replayed or reordered)")
        hop, plain, tag = res
        hdr = unpackRelay(plain)
        c = hdr.command
        last = len(self.crypto.hops) - 1
        if c == RelayCommand.PACKET or c == RelayCommand.DATA:
            if hop != last:
                raise CellError(f"relay {RelayCommand.NAMES[c]} from a middle hop")
            ack = self.deliverWindow.onReceived(tag)
            if ack is not None:
                self.sendRelay(RelayCommand.SENDME, 0, Sendme(ack).encode())
            if c == RelayCommand.PACKET:
                packets = self.packetReader.feed(hdr.data)
                if packets and self._packetReceiver is not None:
                    self._packetReceiver(packets)
            elif self.streamHandler is not None:
                self.streamHandler.relayReceived(c, hdr.streamId, hdr.data)
        elif c == RelayCommand.SENDME and hdr.streamId == 0:
            if hop != last:
                raise CellError("circuit SENDME from a middle hop")
            self.packWindow.onSendme(Sendme.decode(hdr.data).tag)
            opened = getattr(self.streamHandler, "circuitWindowOpened", None)
            if opened is not None:
                opened()
        elif c == RelayCommand.EXTENDED2:
            if hop != last:
                raise CellError("EXTENDED2 from a hop that was not asked to extend")
            self._answer(Extended2.decode(hdr.data).created.hdata)
        elif c == RelayCommand.TRUNCATED:
            reason = Truncated.decode(hdr.data).reason
            self.crypto.truncate(hop + 1)
            del self.path[hop + 1:]
            w, self._waiter = self._waiter, None
            if w is not None:
                if reason == DestroyReason.REQUESTED:
                    w.callback(reason)
                else:
                    w.errback(CircuitDestroyed(reason, f"hop {hop + 1} could not extend"))
        elif c == RelayCommand.DROP:
            pass
        elif c in (RelayCommand.END, RelayCommand.CONNECTED, RelayCommand.RESOLVED, RelayCommand.SENDME,
                   RelayCommand.PAYMENT):
            if c == RelayCommand.PAYMENT and hop != last:
                raise CellError("PAYMENT from a middle hop")
            if self.streamHandler is not None:
                self.streamHandler.relayReceived(c, hdr.streamId, hdr.data)
        else:
            raise CellError(f"relay {RelayCommand.NAMES[c]} is not accepted by a client")

    def onCreated2(self, payload):
        if self.crypto.hops:
            raise CellError("CREATED2 after the first hop was created")
        self._answer(Created2.decode(payload).hdata)

    def onDestroy(self, reason):
        self._destroy(reason, "destroyed by the network", False)

    def linkClosed(self, ls):
        self._destroy(DestroyReason.CHANNEL_CLOSED, "guard link closed", False)

    def protocolError(self, reason, why):
        self._destroy(reason, why, True)

    # -- closing

    def close(self, reason=DestroyReason.FINISHED):
        """Send DESTROY and tear the circuit down; C{reason} is a number or a name ("finished")."""
        self._destroy(reasonCode(reason), "closed by us", True)

    def whenClosed(self):
        d = defer.Deferred()
        if self.closed:
            d.callback(self.closeReason)
        else:
            self._closeWaiters.append(d)
        return d

    def _destroy(self, reason, why, send):
        if self.closed:
            return
        self.closed = True
        self.closeReason = err = CircuitDestroyed(reason, why)
        self.ls.removeEnd(self.circId, self)
        if send and not self.ls.closed:
            self.switch._enqueue(self.ls, destroyCell(self.circId, reason), force=True)
            if not self.switch._depth:
                self.switch._flush(None)
        w, self._waiter = self._waiter, None
        if w is not None:
            w.errback(err)
        waiters, self._closeWaiters = self._closeWaiters, []
        for d in waiters:
            d.callback(err)
        closed = getattr(self.streamHandler, "circuitClosed", None)
        if closed is not None:
            closed()  # streams end with END reason DESTROY; the cause is in closeReason

    def status(self):
        """No keys, no payload: just the shape and counters."""
        return {
            "hops": len(self.crypto.hops), "path": [h.nodeId.hex()[:16] for h in self.path],
            "closed": self.closed, "package_window": self.packWindow.window,
            "packets_dropped": self.packetsDropped,
        }
