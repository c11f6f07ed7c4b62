"""Fuzz target: long CREATE2/CREATED2 bodies arriving in pieces (onion/fragments.py PendingBodies), as one
channel sees first cells and continuations of several circuits interleaved, with time passing.

A piece may finish a body (which must then be exactly as long as it said)
or be refused with the declared error; the half-received bodies never
exceed the per-channel cap, and every one expires.
"""

from twisted.internet.task import Clock

from meshvpn.fuzz.target import FuzzTarget
from meshvpn.onion.cells import PAYLOAD_LEN, CellError, Command
from meshvpn.onion.fragments import HalfOpenBudget, PendingBodies, create2Cells

_COMMANDS = (Command.CREATE2, Command.CREATED2)


def _run(data):
    clock = Clock()
    expired = []
    pending = PendingBodies(clock, HalfOpenBudget(limit=16), lambda circId, command: expired.append(circId))
    pos = 0
    while pos + 3 <= len(data):
        op, circ, n = data[pos], data[pos + 1], data[pos + 2]
        payload = data[pos + 3 : pos + 3 + n * 2].ljust(PAYLOAD_LEN, b"\0")[:PAYLOAD_LEN]
        pos += 3 + n * 2
        command = _COMMANDS[op & 1]
        try:
            whole = pending.first(circ, command, payload) if op & 2 else pending.more(circ, command, payload)
        except CellError:
            whole = None
        if whole is not None:
            headerLen = 4 if command == Command.CREATE2 else 2
            want = int.from_bytes(whole[headerLen - 2 : headerLen], "big")
            if len(whole) < headerLen + want and want > PAYLOAD_LEN - headerLen:
                raise AssertionError(f"a body of {len(whole) - headerLen} bytes handed up for {want}")
        if len(pending) > pending.perChannel:
            raise AssertionError(f"{len(pending)} half-received bodies on one channel")
        if op & 4:
            clock.advance(6)
    pending.clear()


def _seeds():
    out = []
    for cells in (create2Cells(7, 3, bytes(range(256)) * 5),):
        script = b""
        for i, cell in enumerate(cells):
            payload = cell[5:]
            cut = payload.rstrip(b"\0") or b"\0"
            cut = cut + b"\0" * (len(cut) % 2)
            script += bytes([0 | (2 if i == 0 else 0), 7, len(cut) // 2]) + cut
        out.append(script)
    return out


TARGET = FuzzTarget("fragments", "onion/fragments.py PendingBodies: long CREATE2/CREATED2 bodies in pieces",
                    (), _run, _seeds)
