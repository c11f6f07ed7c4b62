"""Origin-side circuits: build a path hop by hop (CREATE2, then EXTEND2 in
RELAY_EARLY cells), wrap every outgoing cell in one layer per hop, unwrap and
authenticate every incoming one, and carry packets (packet mode) or, through
a pluggable stream handler, streams.

The circuit talks to its guard link only through its channel's public
API (allocate an id, add and remove itself, send cells, send DESTROY), and
its lifecycle is the table L{meshvpn.onion.lifecycle.ORIGIN}.
"""

import attrs
from twisted.internet import defer
from zope.interface import implementer

from meshvpn.errors import LinkError, LinkSilent, MeshVPNError
from meshvpn.interfaces import ICircuit, ICircuitEnd
from meshvpn.observer import OneShotObserver
from meshvpn.onion import circhandshake, circversions, nexthop
from meshvpn.onion.fragments import MessageAssembler, create2Cells, splitMessage
from meshvpn.onion.ntor import HandshakeError
from meshvpn.onion.cells import (
    MAX_RELAY_EARLY, CellError, Command, Create2, Created2, DestroyReason, Extend2,
    Extended2, RelayCommand, Truncated, packRelay,
)
from meshvpn.onion.destroy import CircuitDestroyed, reasonCode
from meshvpn.onion.dispatch import STREAM, RelayDispatcher
from meshvpn.onion.flow import FLOW_ALL, FlowError, flagsFor
from meshvpn.onion.lifecycle import ORIGIN, OriginEvent, OriginState
from meshvpn.onion.relaycrypto import OriginCrypto

_CMD = {False: bytes([Command.RELAY]), True: bytes([Command.RELAY_EARLY])}
_FLOW = RelayCommand.FLOW_CONTROLLED
_CLOSED = OriginState.CLOSED
DEFAULT_BUILD_TIMEOUT = 10.0

# Stream messages a client takes.  Its streams are attached to the last hop
# (the exit), so like DATA they are taken only from there: any other hop
# that sends one (a guard forging RESOLVED for the VPN's DNS) destroys the
# circuit, Tor's rule.
# PAYMENT (bandwidth tokens, meshvpn.payments.paymsg) goes to the stream layer too, from the exit only,
# and so do the multipath messages (MP_*, meshvpn.circuits.mpset).
_STREAM_COMMANDS = (RelayCommand.END, RelayCommand.CONNECTED, RelayCommand.RESOLVED, RelayCommand.SENDME,
                    RelayCommand.XON, RelayCommand.XOFF, RelayCommand.PAYMENT, *sorted(RelayCommand.MULTIPATH))


@attrs.frozen
class HopSpec:
    """What the origin needs to reach and authenticate one hop (from its descriptor)."""

    nodeId: bytes
    onionKey: bytes
    addresses: tuple = ()
    transports: tuple = ()
    # What its descriptor lists (meshvpn.dht.descriptor): circuit handshakes and
    # relay crypto schemes ("cgo"); () means classic only.
    handshakes: tuple = ()


@implementer(ICircuit, ICircuitEnd)
class OriginCircuit(RelayDispatcher):
    """
    A circuit this node originates over C{guardLink}, through C{path}
    (L{HopSpec}s, guard first).  Call L{build}.

    @ivar streamHandler: the stream layer's hook, an
        L{meshvpn.interfaces.ICircuitStreamHandler} (a
        L{meshvpn.streams.mux.StreamMux}, installed by
        L{meshvpn.streams.edge.attachStreams}), or C{None}: then
        L{openStream} fails and stream cells are dropped.  It sends with
        L{sendRelay} and asks L{circuitRoom} before DATA.
    """

    NOT_AT_EDGE = "from a hop other than the last"
    WHO = "a client"
    EDGE_ONLY = frozenset((RelayCommand.EXTENDED2, RelayCommand.FRAGMENT, RelayCommand.FLOW_NEGOTIATED,
                           RelayCommand.DHT_RECEIVED, RelayCommand.DHT_REFUSED,
                           *_STREAM_COMMANDS))

    def __init__(self, switch, guardLink, path, buildTimeout=DEFAULT_BUILD_TIMEOUT, flow=FLOW_ALL):
        if not path:
            raise ValueError("a circuit needs at least one hop")
        if guardLink.peerId != path[0].nodeId:
            raise LinkError("the guard link's peer is not the path's first hop")
        super().__init__(switch.clock)
        self.flowProposal = flow  # negotiated with the last hop once built (0: fixed windows)
        self.path = list(path)
        self.clock = switch.clock
        self.channel = switch.attachLink(guardLink)
        self.circId = self.channel.allocateId()
        self.prefix = self.circId.to_bytes(4, "big")
        self.crypto = OriginCrypto()
        self.buildTimeout = buildTimeout
        self.state = OriginState.BUILDING
        self.streamHandler = None
        self.earlySent = 0
        self._packetReceiver = None
        self._datagramReceiver = None
        self._reply = None  # the Deferred for the CREATED2, EXTENDED2 or TRUNCATED awaited
        self._asked = None  # the hop index whose EXTENDED2 or TRUNCATED is awaited
        self._offender = None  # the hop whose protocol violation is destroying the circuit
        self._closed = OneShotObserver()
        self._assembler = MessageAssembler()  # a long EXTENDED2 arriving in pieces
        self.hopKinds = []  # per hop added: the handshake used (circhandshake.NTOR, NTOR3, HYBRID)

    @property
    def closed(self):
        return self.state is _CLOSED

    @property
    def closeReason(self):
        """The L{CircuitDestroyed} the circuit closed with (C{None} while open)."""
        return self._closed.result

    def _request(self, event):
        if self.state is _CLOSED:
            raise self.closeReason
        self.state = ORIGIN.onRequest(self.state, event)

    # -- building

    def build(self):
        """
        @return: a Deferred firing with this circuit once every hop is added;
            fails with L{CircuitDestroyed} (the circuit is then closed).
        """
        return defer.Deferred.fromCoroutine(self._build())

    async def _build(self):
        timer = self.clock.callLater(self.buildTimeout, self._destroy, DestroyReason.TIMEOUT, "build timed out", True)
        try:
            first = self.path[0]
            handshake = self._handshakeWith(first)
            self.channel.addCircuit(self.circId, self)
            d = self._awaitReply()
            for cell in create2Cells(self.circId, handshake.htype, handshake.hdata):
                self._send(cell)
            self._addHop(self._finish(handshake, await self._hopFailure(d, 0), 0))
            for hop in self.path[1:]:
                await self._extendTo(hop)
            self._request(OriginEvent.BUILT)
            proposal = flagsFor(self.flowProposal, circversions.hopVersion(self.path[-1].handshakes))
            if proposal:
                self.negotiateFlow(proposal)
        finally:
            if timer.active():
                timer.cancel()
        return self

    async def _extendTo(self, hop):
        handshake = self._handshakeWith(hop)
        ext = Extend2(hop.nodeId, tuple(hop.addresses), tuple(hop.transports),
                      Create2(handshake.htype, handshake.hdata))
        d = self._awaitReply()
        self._asked = len(self.crypto.hops) - 1
        # A long EXTEND2 (the hybrid handshake) goes as FRAGMENTs, then the
        # EXTEND2 with its last piece: only that one spends RELAY_EARLY.
        pieces = splitMessage(ext.encode(), self.crypto.maxData(self._asked))
        for piece in pieces[:-1]:
            self.sendRelay(RelayCommand.FRAGMENT, 0, piece, hop=self._asked)
        self.sendRelay(RelayCommand.EXTEND2, 0, pieces[-1], hop=self._asked, early=True)
        index = len(self.crypto.hops)
        self._addHop(self._finish(handshake, await self._hopFailure(d, index), index))

    @staticmethod
    def _handshakeWith(hop):
        """
        The handshake for C{hop}: the hybrid one when its descriptor lists it
        and ML-KEM works here (L{circhandshake.chooseKind}), asking for the
        relay crypto its descriptor lists (L{circhandshake.chooseSchemes}:
        CGO alone when it lists CGO, so an answer without it is refused).
        """
        kind = circhandshake.chooseKind(hop.handshakes)
        return circhandshake.ClientHandshake(kind, hop.nodeId, hop.onionKey,
                                             circhandshake.chooseSchemes(kind, hop.handshakes))

    def _addHop(self, hopKeys):
        self.crypto.addHop(hopKeys)
        self.hopKinds.append(hopKeys.kind)
        self.maxData = self.crypto.maxData()

    @property
    def postQuantumHops(self):
        """Per hop: whether its keys came from the hybrid (post-quantum) handshake."""
        return [kind in circhandshake.POST_QUANTUM for kind in self.hopKinds]

    @property
    def relayCrypto(self):
        """Per hop: its relay crypto scheme ("cgo" or "tor1")."""
        return self.crypto.schemes

    def extend(self, hop):
        """Add C{hop} at the end of an open circuit. @return: a Deferred firing with C{None}."""
        return defer.Deferred.fromCoroutine(self._extend(hop))

    async def _extend(self, hop):
        self._request(OriginEvent.EXTEND)
        self.path.append(hop)
        await self._extendTo(hop)
        self._request(OriginEvent.BUILT)

    def truncate(self, keep):
        """
        Ask hop C{keep - 1} to drop everything after it.

        @return: a Deferred firing with the TRUNCATED reason.
        """
        if not 1 <= keep < len(self.crypto.hops):
            raise MeshVPNError(f"cannot truncate a {len(self.crypto.hops)}-hop circuit to {keep} hops")
        self._request(OriginEvent.TRUNCATE)
        d = self._awaitReply()
        self._asked = keep - 1
        self.sendRelay(RelayCommand.TRUNCATE, 0, b"", hop=self._asked)
        return d

    @staticmethod
    def _hopFailure(d, index):
        """
        Say which hop a failed build is charged to (C{CircuitDestroyed.hop},
        what the circuit manager excludes and, for 0, marks down): only what
        the client sees for itself.  The guard (index 0) failed if its link
        or its CREATE2 did.  A failure while extending past it is charged to
        nobody: the client cannot tell whether the hop asked to extend or the
        hop it names is at fault, and believing either lets one relay steer
        the client's paths (a guard that "cannot reach" honest middles).
        A proven protocol violation (a TRUNCATED nobody asked for) is charged
        to the hop that sent it, already set by then.  The build timer is
        charged to nobody, not even at the guard: a CREATED2 that comes late
        on a starved machine is the machine's doing, and a guard that really
        hangs is found by its link's liveness PING (C{silent}).  A failure
        charged to nobody says which hop was being added (C{extending}):
        the circuit manager may avoid it for a while, within bounds.
        """

        def name(f):
            f.trap(CircuitDestroyed)
            if f.value.hop is None:
                if index == 0 and f.value.reason != DestroyReason.TIMEOUT:
                    f.value.hop = 0
                elif index > 0:
                    f.value.extending = index
            return f

        return d.addErrback(name)

    def _finish(self, handshake, reply, index):
        try:
            return handshake.finish(reply)
        except HandshakeError as e:
            # A bad reply for hop 1 or later came through the hop before it,
            # which could have forged it: charged to the guard only for its own.
            self._destroy(DestroyReason.PROTOCOL, str(e), True)
            raise CircuitDestroyed(DestroyReason.PROTOCOL, str(e), hop=0 if index == 0 else None) from None

    def _awaitReply(self):
        if self._reply is not None:
            raise MeshVPNError("a circuit handshake is already in progress")
        self._reply = defer.Deferred()
        return self._reply

    def _answer(self, event, value):
        self.state = ORIGIN.onPeer(self.state, event)
        self._asked = None
        reply, self._reply = self._reply, None
        if reply is None:
            raise CellError("handshake reply nobody asked for")
        reply.callback(value)

    # -- sending

    def _send(self, cell):
        if self.channel.send(cell):
            return True
        self._destroy(DestroyReason.RESOURCELIMIT, "guard link queue full", True)
        return False

    def sendRelay(self, command, streamId, data, hop=-1, early=False):
        """
        Send one relay cell to hop C{hop} (default: the last).

        @raise circversions.CircuitVersionTooOld: C{command} is newer than
            the hop's circuit version (its descriptor's C{circuit-N}).

        @return: C{False} if nothing was sent (closed, or a flow-controlled
            cell that does not fit the circuit window).
        """
        if self.state is _CLOSED:
            return False
        flow = command in _FLOW
        if flow and self.packWindow.window <= 0:
            return False
        if early:
            if self.earlySent >= MAX_RELAY_EARLY:
                raise MeshVPNError("RELAY_EARLY budget of this circuit is spent")
            self.earlySent += 1
        hopIndex = hop if hop >= 0 else len(self.crypto.hops) - 1
        if command in circversions.COMMAND_SINCE:  # a hop of an older release would tear the circuit down
            circversions.checkCommand(command, circversions.hopVersion(self.path[hopIndex].handshakes))
        ct, tag = self.crypto.encrypt(packRelay(command, streamId, data), hopIndex, _CMD[early])
        if flow:
            self.packWindow.onSent(tag)
        if self.channel.send(self.prefix + _CMD[early] + ct):
            return True
        self._destroy(DestroyReason.RESOURCELIMIT, "guard link queue full", True)
        return False

    def _sendRun(self, plains):
        """
        Flow-controlled cells (plain payloads, tags zero) to the last hop: a
        tag per cell, one AES call per layer, one append to the queue; the
        caller checked L{circuitRoom}.
        """
        if self.state is _CLOSED:
            return False
        data, tags = self.crypto.encryptRun(plains, len(self.crypto.hops) - 1)
        onSent = self.packWindow.onSent
        for tag in tags:
            onSent(tag)
        head = self.prefix + _CMD[False]
        if self.channel.sendCells([head + data[k:k + 509] for k in range(0, len(data), 509)]):
            return True
        self._destroy(DestroyReason.RESOURCELIMIT, "guard link queue full", True)
        return False

    def circuitRoom(self):
        """Flow-controlled cells (DATA, PACKET) the circuit window takes now."""
        return 0 if self.state is _CLOSED else self.packWindow.window

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
        if self.state is _CLOSED:
            return 0
        return self._sendPacketsInWindow(packets)

    def setDatagramReceiver(self, receiver):
        """
        C{receiver(command, body)} gets the DHT_RECEIVED and DHT_REFUSED
        bodies the last hop sends (L{meshvpn.onion.dhtmsgs}); without one they
        are dropped.  It may raise L{CellError}: the circuit is destroyed.
        """
        self._datagramReceiver = receiver

    def _onDatagram(self, cellCommand, hdr, hop):
        if self._datagramReceiver is not None:
            self._datagramReceiver(hdr.command, hdr.data)

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

    # -- receiving (the circuit's end on the guard channel)

    def onRelay(self, cmd, payload):
        if cmd != Command.RELAY:
            raise CellError("RELAY_EARLY travelling toward the origin")
        res = self.crypto.decrypt(payload)
        if res is None:
            raise CellError("relay cell recognized by no hop (modified, replayed or reordered)")
        hop, plain, tag = res
        self._dispatchFrom(hop, plain, tag, len(self.crypto.hops) - 1)

    def _dispatchFrom(self, hop, plain, tag, last):
        try:
            self._dispatch(Command.RELAY, plain, tag, hop == last, hop)
        except (CellError, FlowError):
            # The cell passed hop's tag: only that hop could have sent it, so
            # the violation is provably its own (what the close is charged to).
            self._offender = hop
            raise

    TAKES_RUNS = True

    def onRelayRun(self, payloads):
        last = len(self.crypto.hops) - 1
        entries = self.crypto.decryptRun(payloads)
        good, fromInner = [], False
        for entry in entries:
            if entry is None:
                break
            if entry[0] != last:
                fromInner = True
            good.append(entry)
        if fromInner:
            # Rare (an inner hop speaks only to truncate or pad): one by one,
            # so a violation is charged to the hop that sent it.
            for hop, plain, tag in good:
                self._dispatchFrom(hop, plain, tag, last)
        else:
            try:
                self._dispatchRun(Command.RELAY, good, last)
            except (CellError, FlowError):
                self._offender = last
                raise
        if len(good) < len(entries):
            raise CellError("relay cell recognized by no hop (modified, replayed or reordered)")

    def _packetsArrived(self, packets):
        if self._packetReceiver is not None:
            self._packetReceiver(packets)

    def _streamArrived(self, command, streamId, data):
        if self.streamHandler is not None:
            self.streamHandler.relayReceived(command, streamId, data)

    def _windowOpened(self):
        if self.streamHandler is not None:
            self.streamHandler.circuitWindowOpened()

    def _onExtended2(self, cellCommand, hdr, hop):
        body = self._assembler.finish(RelayCommand.EXTENDED2, hdr.data)
        self._answer(OriginEvent.EXTENDED, Extended2.decode(body).created.hdata)

    def _onFragment(self, cellCommand, hdr, hop):
        """A piece of a long EXTENDED2: only from the hop asked to extend, while it is asked."""
        if hop != self._asked:
            raise CellError(f"FRAGMENT from hop {hop}, which was not asked to extend")
        self._assembler.fragment(hdr.data)

    def _onTruncated(self, cellCommand, hdr, hop):
        """
        A TRUNCATED is only ever the answer of the hop we asked: to our
        TRUNCATE (the circuit is cut back and stays open) or to an EXTEND2
        (the build failed: the circuit closes, charged to no hop).  Any
        other is a protocol violation of the hop that sent it, which the
        circuit does not survive (Tor closes on it too).
        """
        if hop != self._asked:
            raise CellError(f"TRUNCATED from hop {hop}, which was not asked to extend or truncate")
        reason = Truncated.decode(hdr.data).reason
        following = ORIGIN.onPeer(self.state, OriginEvent.TRUNCATED)
        if following is _CLOSED:
            self._destroy(reason, f"hop {hop} could not extend the circuit", True)
            return
        self.state = following
        self._asked = None
        self.crypto.truncate(hop + 1)
        self.maxData = self.crypto.maxData()
        del self.path[hop + 1:]
        reply, self._reply = self._reply, None
        if reply is not None:
            reply.callback(reason)

    # callable(circuit, hop, suspected), set by whoever watches this circuit (the circuit manager)
    onNextHopSuspected = None

    def _onNextHopSuspected(self, cellCommand, hdr, hop):
        """
        Hop C{hop} says its link to the hop after it is suspected (or heard
        again): L{meshvpn.onion.nexthop}.  From the hop asked to extend, a
        build waiting for that hop fails now, as a TRUNCATED would (charged
        to no hop); an open circuit tells its watcher.
        """
        if hop >= len(self.path) - 1:
            raise CellError(f"NEXT_HOP_SUSPECTED from hop {hop}, which has no next hop")
        suspected = nexthop.decode(hdr.data)
        if suspected and hop == self._asked and self.state is OriginState.BUILDING:
            self._destroy(DestroyReason.TIMEOUT, f"hop {hop}'s link to the next hop is suspected", True)
            return
        if self.onNextHopSuspected is not None:
            self.onNextHopSuspected(self, hop, suspected)

    def onCreated2(self, payload):
        if self.crypto.hops:
            raise CellError("CREATED2 after the first hop was created")
        self._answer(OriginEvent.CREATED, Created2.decode(payload).hdata)

    def onDestroy(self, reason):
        self._destroy(reason, "destroyed by the network", False)

    def linkClosed(self, channel):
        silent = isinstance(getattr(channel.link, "closeReason", None), LinkSilent)
        why = "guard link closed: the guard answered no PING" if silent else "guard link closed"
        self._destroy(DestroyReason.CHANNEL_CLOSED, why, False, hop=0, silent=silent)

    def protocolError(self, reason, why):
        self._destroy(reason, why, True, hop=self._offender)

    # The dispatcher's table (after the handlers it names).
    ACCEPTS = {**dict.fromkeys(_STREAM_COMMANDS, STREAM),
               RelayCommand.EXTENDED2: _onExtended2, RelayCommand.TRUNCATED: _onTruncated,
               RelayCommand.FRAGMENT: _onFragment, RelayCommand.NEXT_HOP_SUSPECTED: _onNextHopSuspected,
               RelayCommand.DHT_RECEIVED: _onDatagram, RelayCommand.DHT_REFUSED: _onDatagram,
               RelayCommand.FLOW_NEGOTIATED: RelayDispatcher._onFlowNegotiated}

    # -- closing

    def close(self, reason=DestroyReason.FINISHED):
        """Send DESTROY and tear the circuit down; C{reason} is a number or a name ("finished")."""
        self._destroy(reasonCode(reason), "closed by us", True)

    def whenClosed(self):
        return self._closed.whenFired()

    def _destroy(self, reason, why, send, hop=None, silent=False):
        """
        Close the circuit.  C{hop}: the hop the closing is charged to (see
        L{_hopFailure}), for a build that fails; C{silent}: the guard link
        closed because the guard hangs.
        """
        if self.state is _CLOSED:
            return
        self.state = ORIGIN.onRequest(self.state, OriginEvent.CLOSE)
        err = CircuitDestroyed(reason, why, hop=hop, silent=silent)
        self.channel.removeCircuit(self.circId, self)
        if send:
            self.channel.sendDestroy(self.circId, reason)
        self._closed.fire(err)
        reply, self._reply = self._reply, None
        if reply is not None and not reply.called:  # a cancelled build's reply already failed
            reply.errback(err)
        if self.streamHandler is not None:
            self.streamHandler.circuitClosed()  # streams end with END reason DESTROY; the cause is in closeReason

    def status(self):
        """No keys, no payload: just the shape and counters."""
        return {
            "hops": len(self.crypto.hops), "path": [h.nodeId.hex()[:16] for h in self.path],
            "state": self.state.value, "closed": self.closed, "package_window": self.packWindow.window,
            "handshakes": list(self.hopKinds), "post_quantum_hops": self.postQuantumHops,
            "relay_crypto": self.relayCrypto,
            "flow_flags": self.flowFlags, **_ccStatus(self.packWindow),
            "packets_dropped": self.packetsDropped,
        }


def _ccStatus(window):
    if not hasattr(window, "cwnd"):
        return {}
    rtt = window.ewmaRtt
    return {"cwnd": window.cwnd, "rtt_ms": None if rtt is None else round(rtt * 1000, 2),
            "min_rtt_ms": None if window.minRtt is None else round(window.minRtt * 1000, 2)}
