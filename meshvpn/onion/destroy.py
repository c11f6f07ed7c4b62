"""How a circuit ends, in one place: the DESTROY cell, reason names and the
exception the origin's callers see.

Both ends and the channel tear circuits down; they share these three so a
reason travels unchanged from the hop that gave up to the origin's
C{whenClosed()}.
"""

from meshvpn.errors import MeshVPNError
from meshvpn.link.cellsize import CELL_SIZE
from meshvpn.onion.cells import Command, DestroyReason

_DESTROY = bytes([Command.DESTROY])
_PAD_DESTROY = bytes(CELL_SIZE - 6)


class CircuitDestroyed(MeshVPNError):
    """A circuit was torn down; C{reason} is a L{DestroyReason} number."""

    def __init__(self, reason, why="", hop=None, silent=False):
        super().__init__(f"circuit destroyed: {DestroyReason.name(reason)}" + (f" ({why})" if why else ""))
        self.reason = reason
        self.why = why
        self.hop = hop  # during a build: the index of the hop that failed (0 = guard), if known
        # the guard link was closed because the guard answered no liveness PING (it hangs)
        self.silent = silent
        # during a build, a failure charged to no hop: the index of the hop being added then
        self.extending = None


def reasonCode(reason):
    """A DESTROY reason number from a number or a name such as C{"finished"}."""
    if isinstance(reason, int) and 0 <= reason <= 255:
        return reason
    if isinstance(reason, str):
        for code, name in DestroyReason.NAMES.items():
            if name == reason.upper():
                return code
    return DestroyReason.NONE


def destroyCell(circId, reason):
    """The DESTROY cell for C{circId} carrying C{reason} (a number)."""
    return circId.to_bytes(4, "big") + _DESTROY + bytes([reason]) + _PAD_DESTROY
