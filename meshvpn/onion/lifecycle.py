"""Circuit lifecycles as explicit transition tables, one per kind of circuit end.

A circuit end moves between a few states on a few events: control messages
from its peers (CREATED2, EXTENDED2, TRUNCATED, ...) and requests of its own
(extend, truncate, close).  Each table lists every legal move, so what a
circuit accepts in which state is read in one place instead of being
spread over flags.  An event a table does not list is refused: from a peer
it is a protocol violation (a L{CellError}, which destroys the circuit),
from our own code a L{MeshVPNError} for the caller.  Only control messages
move a state; data cells never look at these tables.
"""

import enum

from meshvpn.errors import MeshVPNError
from meshvpn.onion.cells import CellError


class StateTable:
    """C{{(state, event): next state}}; anything not listed is refused."""

    def __init__(self, table):
        self._table = table

    def onPeer(self, state, event):
        """@return: the next state. @raise CellError: a peer sent C{event} where it is not allowed."""
        try:
            return self._table[state, event]
        except KeyError:
            raise CellError(f"{event.value} on a circuit that is {state.value}") from None

    def onRequest(self, state, event):
        """@return: the next state. @raise MeshVPNError: we may not do C{event} now."""
        try:
            return self._table[state, event]
        except KeyError:
            raise MeshVPNError(f"cannot {event.value} a circuit that is {state.value}") from None


# --------------------------------------------------------------------------
# the origin's circuit (OriginCircuit)


class OriginState(enum.Enum):
    BUILDING = "building"  # a CREATE2 or EXTEND2 answer is awaited
    OPEN = "open"
    TRUNCATING = "truncating"  # our TRUNCATE is out, its TRUNCATED is awaited
    CLOSED = "closed"


class OriginEvent(enum.Enum):
    CREATED = "CREATED2"
    EXTENDED = "EXTENDED2"
    TRUNCATED = "TRUNCATED"
    BUILT = "finish building"
    EXTEND = "extend"
    TRUNCATE = "truncate"
    CLOSE = "close"


_O = OriginState
_OE = OriginEvent
_origin = {
    (_O.BUILDING, _OE.CREATED): _O.BUILDING,
    (_O.BUILDING, _OE.EXTENDED): _O.BUILDING,
    (_O.BUILDING, _OE.BUILT): _O.OPEN,
    # The hop asked to extend could not: the circuit closes, as Tor's does;
    # a circuit is never left shorter than the path it was built for.
    (_O.BUILDING, _OE.TRUNCATED): _O.CLOSED,
    (_O.OPEN, _OE.EXTEND): _O.BUILDING,
    (_O.OPEN, _OE.TRUNCATE): _O.TRUNCATING,
    # The answer to our own TRUNCATE: the only TRUNCATED that leaves a circuit open.
    (_O.TRUNCATING, _OE.TRUNCATED): _O.OPEN,
    (_O.BUILDING, _OE.CLOSE): _O.CLOSED,
    (_O.OPEN, _OE.CLOSE): _O.CLOSED,
    (_O.TRUNCATING, _OE.CLOSE): _O.CLOSED,
}
# Not listed: a TRUNCATED on an open circuit.  Nobody asked for it, so it is
# a protocol violation that destroys the circuit: a guard that sends one must
# not leave the client with a one-hop circuit whose cells only the guard's
# layer protects.  (The circuit also checks that a TRUNCATED in BUILDING or
# TRUNCATING comes from the hop that was asked.)

ORIGIN = StateTable(_origin)


# --------------------------------------------------------------------------
# a relay's hop of someone's circuit (RelayCircuit)


class HopState(enum.Enum):
    LAST = "the last hop"  # the circuit ends here
    EXTENDING = "extending"  # EXTEND2 accepted: the next hop's link and CREATED2 are awaited
    MIDDLE = "a middle hop"  # cells are forwarded to the next hop
    CLOSED = "closed"


class HopEvent(enum.Enum):
    EXTEND = "EXTEND2"
    EXTENDED = "CREATED2 from the next hop"
    EXTEND_FAILED = "fail an extend of"
    TRUNCATE = "TRUNCATE"
    CLOSE = "close"


_H = HopState
_HE = HopEvent
HOP = StateTable({
    (_H.LAST, _HE.EXTEND): _H.EXTENDING,
    (_H.EXTENDING, _HE.EXTENDED): _H.MIDDLE,
    (_H.EXTENDING, _HE.EXTEND_FAILED): _H.LAST,
    (_H.LAST, _HE.TRUNCATE): _H.LAST,
    (_H.EXTENDING, _HE.TRUNCATE): _H.LAST,
    (_H.MIDDLE, _HE.TRUNCATE): _H.LAST,
    (_H.LAST, _HE.CLOSE): _H.CLOSED,
    (_H.EXTENDING, _HE.CLOSE): _H.CLOSED,
    (_H.MIDDLE, _HE.CLOSE): _H.CLOSED,
})
