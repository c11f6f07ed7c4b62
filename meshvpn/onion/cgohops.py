"""CGO hops as circuits use them: the common relay payload on one side, a CGO layer on the other.

A circuit's ends speak one relay payload layout whatever a hop's relay
crypto (L{meshvpn.onion.cells}: tag | recognized | command | stream | length
| data, 509 bytes), so the dispatcher, flow control and the stream layer
are the same for both schemes.  A CGO hop (L{meshvpn.onion.cgo}) carries
only bytes 10..503 of it, the header from the command on, as its 493-byte
body: on a CGO hop a relay message holds at most 488 bytes of data
(C{CGO_RELAY_DATA_LEN}, the old scheme 494) and its tag, what an
authenticated SENDME echoes, is 16 bytes (the old scheme 8).

A recognized CGO cell comes back in the same layout, its first ten bytes
zero, and a length past 488 is refused here: the dispatcher's checks are
the old scheme's and would let bytes past the body through.
"""

from meshvpn.onion import cgo
from meshvpn.onion.cells import CGO_BODY_AT, CGO_BODY_LEN, CGO_RELAY_DATA_LEN, PAYLOAD_LEN, CellError, RelayCommand
from meshvpn.onion.circhandshake import CGO

_BODY_END = CGO_BODY_AT + CGO_BODY_LEN  # 503
_PAD = bytes(CGO_BODY_AT)
_RELAY = b"\x03"
_LEN_AT = 3  # the length field's offset in the body (command 1, stream 2)


def toBody(plain):
    """The CGO body of a common-layout relay payload (from L{meshvpn.onion.cells.packRelay})."""
    if ((plain[13] << 8) | plain[14]) > CGO_RELAY_DATA_LEN:
        raise CellError(f"relay data over {CGO_RELAY_DATA_LEN} bytes on a CGO hop")
    return plain[CGO_BODY_AT:_BODY_END]


def unwrapRun(payloads, views):
    """
    Cells from the relays through C{views} (every hop of the circuit a
    L{CgoOriginView}, guard first), in order.

    @return: C{[(hop index, common-layout payload, tag), ...]}, ended by
        C{None} at the first cell no hop recognizes.
    """
    try:
        # The length bound is checked in the same call, once the whole run went through the layers.
        return cgo.unwrapRun(_RELAY, payloads, [view.back for view in views], _PAD, CGO_RELAY_DATA_LEN)
    except cgo.RelayLengthError as e:
        raise CellError(str(e)) from None


def fromCell(cell):
    """A recognized CGO cell (T | body) in the common layout."""
    if ((cell[cgo.TAG_LEN + _LEN_AT] << 8) | cell[cgo.TAG_LEN + _LEN_AT + 1]) > CGO_RELAY_DATA_LEN:
        raise CellError(f"relay length over {CGO_RELAY_DATA_LEN} on a CGO hop")
    return _PAD + cell[cgo.TAG_LEN:]


class CgoRelayHop:
    """
    A relay's CGO layer with the methods a relay circuit calls (the old
    scheme's are L{meshvpn.onion.relaycrypto.RelayLayer}'s).  Backward
    cells toward the origin always travel as RELAY.
    """

    __slots__ = ("_layer", "_passRun", "_originateRun", "_originateData", "_passCells", "_forwardCells")
    maxData = CGO_RELAY_DATA_LEN

    def __init__(self, material):
        self._layer = cgo.CgoRelayLayer(material)
        self._passRun = self._layer.back.passRun
        self._originateRun = self._layer.back.originateRun
        self._originateData = self._layer.back.originateData
        self._passCells = self._layer.back.passCells
        self._forwardCells = self._layer.fwd.forwardCells

    def backwardRun(self, payloads, head):
        """Cells toward the origin passing through, in order: C{[head + cell with this layer, ...]}."""
        return self._passRun(_RELAY, payloads, head)

    def forward(self, cmd, payload):
        """
        This hop's layer on a cell away from the origin (C{cmd}: the cell command byte).

        @return: C{(cell, tag)}: the cell to pass on and C{None}, or, when it
            is for this hop, the relay payload in the common layout and its tag.
        """
        out, tag = self._layer.forward(cmd, payload)
        if tag is None:
            return out, None
        return fromCell(out), tag

    def encryptBackward(self, data):
        """This hop's layer on cells toward the origin: one cell or several joined."""
        backward = self._layer.backward
        if len(data) == PAYLOAD_LEN:
            return backward(_RELAY, data)
        return b"".join([backward(_RELAY, data[k:k + PAYLOAD_LEN]) for k in range(0, len(data), PAYLOAD_LEN)])

    def originateBackward(self, plain):
        """@return: C{(cell, tag)} for a common-layout payload this hop sends toward the origin."""
        return self._layer.originate(_RELAY, toBody(plain))

    def originateBackwardCells(self, plains, head):
        """
        Payloads this hop sends toward the origin, in order, each behind
        C{head} (L{toBody} of each, done in the one call). @return: C{(cells, tags)}.
        """
        try:
            return self._originateRun(_RELAY, plains, head, CGO_BODY_AT, CGO_RELAY_DATA_LEN)
        except cgo.RelayLengthError as e:
            raise CellError(str(e)) from None

    def originateDataCells(self, streamId, chunks, head):
        """
        DATA messages for C{streamId}, one per chunk (at most 488 bytes),
        sealed toward the origin behind C{head} in one C call: what
        L{originateBackwardCells} does with the payloads the dispatcher
        would pack for them. @return: C{(cells, tags)}.
        """
        try:
            return self._originateData(_RELAY, RelayCommand.DATA, streamId, chunks, CGO_RELAY_DATA_LEN, head)
        except cgo.RelayLengthError as e:
            raise CellError(str(e)) from None

    def passCells(self, cells, start, stop, head):
        """
        Link cells C{cells[start:stop]} toward the origin passing through (a
        run of one circuit, L{meshvpn.onion.cgo.runEnd}): C{[head + their
        payloads with this layer, ...]}, without a slice per cell.
        """
        return self._passCells(_RELAY, cells, start, stop, head)

    def forwardCells(self, cells, start, stop, head):
        """
        Link cells C{cells[start:stop]} away from the origin, through this
        layer up to and including the first one for this hop.

        @return: C{(next, [head + cell to pass on, ...], mine)}: C{mine} is
            C{None}, or C{(cell, tag)} of the one for this hop as the layer
            returns it (L{fromCell} makes it a relay payload).
        """
        return self._forwardCells(_RELAY, cells, start, stop, head)

    def originateBackwardRun(self, plains):
        """L{originateBackward} for several payloads in order. @return: C{(cells joined, tags)}."""
        originate = self._layer.originate
        cells, tags = [], []
        for plain in plains:
            cell, tag = originate(_RELAY, toBody(plain))
            cells.append(cell)
            tags.append(tag)
        return b"".join(cells), tags


class CgoOriginView:
    """The origin's copy of one CGO hop, with the methods L{meshvpn.onion.relaycrypto.OriginCrypto} calls."""

    __slots__ = ("_hop", "_unwrap", "back")
    maxData = CGO_RELAY_DATA_LEN
    scheme = CGO

    def __init__(self, material):
        self._hop = cgo.CgoOriginHop(material)
        self.back = self._hop.back  # the direction keeps its identity across updates
        self._unwrap = self.back.layer

    def sealFor(self, cmd, plain):
        """@return: C{(cell, tag)}: C{plain} for this hop with its layer."""
        return self._hop.seal(cmd, toBody(plain))

    def wrap(self, cmd, cell):
        return self._hop.wrap(cmd, cell)

    def unwrap(self, cmd, cell):
        """@return: C{(cell, None)} to go on, or C{(common-layout payload, tag)} when this hop sent it."""
        out, tag = self._unwrap(cmd, cell)
        if tag is None:
            return out, None
        return fromCell(out), tag
