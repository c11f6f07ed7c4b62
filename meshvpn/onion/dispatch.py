"""Relay messages at the end they were meant for: one dispatcher for the
origin and for a relay's hop.

Once a hop's layer is off and its tag checks, what happens to a relay
message is the same at both ends of a circuit: DATA and PACKET count
against the receive window (an authenticated SENDME goes back every 100
cells), a circuit SENDME reopens the send window, PACKET bodies are
reassembled into IP packets, stream messages go to the stream layer, DROP
is padding.  The ends differ only in which control and stream messages they
accept, from where, and where delivered packets and stream messages go;
each end gives those as a table and three callables.  The packing side of
packet mode (fitting packets into the send window) lives here too, so both
ends send packets the same way.
"""

from meshvpn.onion.cells import CellError, RelayCommand, Sendme, unpackRelay
from meshvpn.onion.flow import ReceiveWindow, SendWindow
from meshvpn.onion.packets import PacketReader, framePackets, packetCellCount

_DATA = RelayCommand.DATA
_PACKET = RelayCommand.PACKET
_SENDME = RelayCommand.SENDME
_DROP = RelayCommand.DROP
_NAMES = RelayCommand.NAMES

# The value in an end's table for messages that belong to the stream layer.
STREAM = None
_REFUSED = object()


class RelayDispatcher:
    """
    One circuit end's relay messages, in and out (windows, packet framing).

    @param sendRelay: the end's C{sendRelay(command, streamId, data) -> bool}.
    @param packetsArrived: C{callable(packets)} for reassembled IP packets.
    @param streamArrived: C{callable(command, streamId, data)} for stream
        messages (DATA and the end's L{STREAM} entries).
    @param windowOpened: C{callable()} run after a circuit SENDME reopened
        the send window.
    @param accepts: C{{relay command: handler or STREAM}}: the messages this
        end accepts besides DATA, PACKET, circuit SENDME and DROP; a handler
        is called as C{handler(cellCommand, header, hop)}.
    @param edgeOnly: commands of C{accepts} taken only at the circuit's edge
        (from the last hop at the origin; at the last hop at a relay), as
        DATA, PACKET and circuit SENDMEs always are.
    @param notAtEdge: how errors name the wrong place (C{"from a middle hop"}).
    @param who: how errors name this end (C{"a client"}).
    """

    __slots__ = ("_sendRelay", "_packetsArrived", "_streamArrived", "_windowOpened", "_accepts", "_edgeOnly",
                 "_notAtEdge", "_who", "packWindow", "deliverWindow", "packetReader", "packetsDropped")

    def __init__(self, sendRelay, packetsArrived, streamArrived, windowOpened, accepts, edgeOnly, notAtEdge, who):
        self._sendRelay = sendRelay
        self._packetsArrived = packetsArrived
        self._streamArrived = streamArrived
        self._windowOpened = windowOpened
        self._accepts = accepts
        self._edgeOnly = frozenset(edgeOnly)
        self._notAtEdge = notAtEdge
        self._who = who
        self.packWindow = SendWindow()
        self.deliverWindow = ReceiveWindow()
        self.packetReader = PacketReader()
        self.packetsDropped = 0

    def dispatch(self, cellCommand, plain, tag, atEdge, hop):
        """
        Act on one recognized relay message.

        @param plain: the relay payload with every layer removed.
        @param tag: its tag (what a SENDME acknowledges).
        @param atEdge: it came from (origin) or reached (relay) the last hop.
        @param hop: at the origin, the index of the hop that sent it.
        @raise CellError: or L{meshvpn.onion.flow.FlowError}: the message
            breaks the protocol; the caller destroys the circuit.
        """
        hdr = unpackRelay(plain)
        c = hdr.command
        if c == _PACKET or c == _DATA:
            if not atEdge:
                raise CellError(f"relay {_NAMES[c]} {self._notAtEdge}")
            ack = self.deliverWindow.onReceived(tag)
            if ack is not None:
                self._sendRelay(_SENDME, 0, Sendme(ack).encode())
            if c == _PACKET:
                packets = self.packetReader.feed(hdr.data)
                if packets:
                    self._packetsArrived(packets)
            else:
                self._streamArrived(c, hdr.streamId, hdr.data)
        elif c == _SENDME and hdr.streamId == 0:
            if not atEdge:
                raise CellError(f"circuit SENDME {self._notAtEdge}")
            self.packWindow.onSendme(Sendme.decode(hdr.data).tag)
            self._windowOpened()
        elif c == _DROP:
            pass
        else:
            handler = self._accepts.get(c, _REFUSED)
            if handler is _REFUSED:
                raise CellError(f"relay {_NAMES[c]} is not accepted by {self._who}")
            if not atEdge and c in self._edgeOnly:
                raise CellError(f"relay {_NAMES[c]} {self._notAtEdge}")
            if handler is STREAM:
                self._streamArrived(c, hdr.streamId, hdr.data)
            else:
                handler(cellCommand, hdr, hop)

    def sendPackets(self, packets):
        """
        Send IP packets in as few PACKET cells as possible.  Those that do
        not fit the send window are dropped (counted in C{packetsDropped}),
        as a full router queue drops them; TCP inside recovers.

        @return: the number of packets sent.
        """
        room = self.packWindow.window
        n = len(packets)
        while packets and packetCellCount(packets) > room:
            packets = packets[:-1]
        self.packetsDropped += n - len(packets)
        sendRelay = self._sendRelay
        for body in framePackets(packets):
            sendRelay(_PACKET, 0, body)
        return len(packets)
