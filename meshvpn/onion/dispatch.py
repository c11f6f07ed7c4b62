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
here too, so both ends send packets the same way.

L{RelayDispatcher} is a base class of both circuit ends rather than an
object they hold: it keeps the per-cell path at one method call and the
circuits free of reference cycles, so a torn-down circuit is freed at once.
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
      - C{sendRelay(command, streamId, data) -> bool}, C{_packetsArrived(packets)},
        C{_streamArrived(command, streamId, data)} and C{_windowOpened()}.
    """

    ACCEPTS = {}
    EDGE_ONLY = frozenset()
    NOT_AT_EDGE = "away from the circuit's edge"
    WHO = "this end"

    def __init__(self):
        self.packWindow = SendWindow()
        self.deliverWindow = ReceiveWindow()
        self.packetReader = PacketReader()
        self.packetsDropped = 0

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
        hdr = unpackRelay(plain)
        c = hdr.command
        if c == _PACKET or c == _DATA:
            if not atEdge:
                raise CellError(f"relay {_NAMES[c]} {self.NOT_AT_EDGE}")
            ack = self.deliverWindow.onReceived(tag)
            if ack is not None:
                self.sendRelay(_SENDME, 0, Sendme(ack).encode())
            if c == _PACKET:
                packets = self.packetReader.feed(hdr.data)
                if packets:
                    self._packetsArrived(packets)
            else:
                self._streamArrived(c, hdr.streamId, hdr.data)
        elif c == _SENDME and hdr.streamId == 0:
            if not atEdge:
                raise CellError(f"circuit SENDME {self.NOT_AT_EDGE}")
            self.packWindow.onSendme(Sendme.decode(hdr.data).tag)
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
                self._streamArrived(c, hdr.streamId, hdr.data)
            else:
                handler(self, cellCommand, hdr, hop)

    def _sendPacketsInWindow(self, packets):
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
        sendRelay = self.sendRelay
        for body in framePackets(packets):
            sendRelay(_PACKET, 0, body)
        return len(packets)
