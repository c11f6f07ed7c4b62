"""Fuzz target: a cell as it comes off a link, and the CREATE2, CREATED2 and DESTROY bodies it carries."""

from meshvpn.fuzz import realmsgs
from meshvpn.fuzz.target import FuzzTarget
from meshvpn.onion import ntor
from meshvpn.onion.cells import CELL_SIZE, CellError, Command, Create2, Created2, Destroy, HTYPE_NTOR, encodeCell, parseCell

_BODIES = {Command.CREATE2: Create2, Command.CREATED2: Created2, Command.DESTROY: Destroy}


def _run(data):
    # The link hands up whole cells only, so the interesting inputs are
    # exactly one cell long: shorter ones are padded, longer ones cut.
    cell = parseCell(data[:CELL_SIZE].ljust(CELL_SIZE, b"\0"))
    body = _BODIES.get(cell.command)
    if body is not None:
        body.decode(cell.payload)


def _seeds():
    relay = realmsgs.identity(2)
    _, hdata = ntor.clientCreate(relay.nodeId, relay.onionPublicKey)
    return [
        encodeCell(0x80000001, Command.CREATE2, Create2(HTYPE_NTOR, hdata).encode()),
        encodeCell(0x80000001, Command.CREATED2, Created2(bytes(range(64))).encode()),
        encodeCell(0x80000001, Command.DESTROY, Destroy(9).encode()),
        encodeCell(0x80000001, Command.RELAY, (bytes(range(256)) * 2)[:509]),
        encodeCell(0, Command.PADDING, b""),
    ]


TARGET = FuzzTarget("cell", "onion/cells.py parseCell + CREATE2/CREATED2/DESTROY bodies (every link)", (CellError,),
                    _run, _seeds)
