"""Handshake messages longer than one cell: how they are cut, and how much of
them a node holds while they arrive.

The hybrid handshake's CREATE2 body is 1,319 bytes and its CREATED2 body
1,155 (an ML-KEM-768 key and ciphertext do not fit a 509-byte cell), so
after Tor proposal 340's fragmentation (a first piece that says how long
the whole is, then continuations, nothing interleaved) they travel as a
short, bounded sequence (doc/protocol.md, "Long handshake messages"):

On a link (cell commands):
  CREATE2        HTYPE u16 | HLEN u16 | the first <= 505 bytes of HDATA
  CREATE2_MORE   the next <= 509 bytes                (while HLEN is not reached)
  CREATED2       HLEN u16 | the first <= 507 bytes of HDATA
  CREATED2_MORE  the next <= 509 bytes
On a circuit (relay messages, for EXTEND2 and EXTENDED2):
  FRAGMENT       the next <= 494 bytes of the message (any number of them, none
                 between them of another command)
  EXTEND2 or EXTENDED2   the last piece; the message is the FRAGMENT bodies then its own
  Only that last cell needs RELAY_EARLY, so a long EXTEND2 spends one cell
  of the circuit's RELAY_EARLY budget, as a short one does.

Every whole body is at most L{MAX_BODY} bytes (5 cells).  A node holds a
half-received CREATE2 or CREATED2 for at most L{PendingBodies.maxAge}
seconds and holds at most L{PendingBodies.perChannel} of them per link and
L{HalfOpenBudget.limit} in all: a peer that opens bodies and never
finishes them costs a fixed, small amount of memory and gets DESTROY
RESOURCELIMIT for the rest.  A circuit holds at most one half-received
relay message (L{MessageAssembler}).
"""

import struct

from meshvpn.onion.cells import (
    MAX_HANDSHAKE_BODY, PAYLOAD_LEN, RELAY_DATA_LEN, CellError, Command, DestroyReason, RelayCommand, encodeCell,
)

MAX_BODY = MAX_HANDSHAKE_BODY
CREATE2_FIRST = PAYLOAD_LEN - 4    # 505 bytes of HDATA after HTYPE and HLEN
CREATED2_FIRST = PAYLOAD_LEN - 2   # 507 after HLEN


def _pieces(data, first, rest):
    out = [data[:first]]
    i = first
    while i < len(data):
        out.append(data[i:i + rest])
        i += rest
    return out


def create2Cells(circId, htype, hdata):
    """The cells of a CREATE2 of any length up to L{MAX_BODY}: CREATE2, then CREATE2_MORE."""
    if len(hdata) > MAX_BODY:
        raise CellError(f"CREATE2 body of {len(hdata)} bytes exceeds {MAX_BODY}")
    pieces = _pieces(hdata, CREATE2_FIRST, PAYLOAD_LEN)
    cells = [encodeCell(circId, Command.CREATE2, struct.pack(">HH", htype, len(hdata)) + pieces[0])]
    cells += [encodeCell(circId, Command.CREATE2_MORE, p) for p in pieces[1:]]
    return cells


def created2Cells(circId, hdata):
    """The cells of a CREATED2 of any length up to L{MAX_BODY}: CREATED2, then CREATED2_MORE."""
    if len(hdata) > MAX_BODY:
        raise CellError(f"CREATED2 body of {len(hdata)} bytes exceeds {MAX_BODY}")
    pieces = _pieces(hdata, CREATED2_FIRST, PAYLOAD_LEN)
    cells = [encodeCell(circId, Command.CREATED2, struct.pack(">H", len(hdata)) + pieces[0])]
    cells += [encodeCell(circId, Command.CREATED2_MORE, p) for p in pieces[1:]]
    return cells


class HalfOpenBudget:
    """The node-wide count of half-received CREATE2/CREATED2 bodies, shared by every channel."""

    def __init__(self, limit=256):
        self.limit = limit
        self.count = 0

    def take(self):
        if self.count >= self.limit:
            return False
        self.count += 1
        return True

    def give(self):
        self.count -= 1


class _Pending:
    __slots__ = ("header", "want", "data", "deadline")

    def __init__(self, header, want, data, deadline):
        self.header, self.want, self.data, self.deadline = header, want, data, deadline


class PendingBodies:
    """
    The half-received CREATE2 and CREATED2 bodies of one channel.

    L{first} and L{more} return the whole cell payload (as a one-cell
    CREATE2 or CREATED2 would have carried it, with the full HDATA) once the
    last piece is in, else C{None}.

    @param onExpire: C{callable(circId, command)}: a body not finished in
        time was dropped (the channel answers DESTROY).
    """

    def __init__(self, clock, budget, onExpire, perChannel=8, maxAge=5.0):
        self.clock = clock
        self.budget = budget
        self.onExpire = onExpire
        self.perChannel = perChannel
        self.maxAge = maxAge
        self._pending = {}  # (circId, command) -> _Pending
        self._sweep = None

    def __len__(self):
        return len(self._pending)

    def __bool__(self):
        return bool(self._pending)

    def first(self, circId, command, payload):
        """
        The first cell of a CREATE2 (C{command} CREATE2) or CREATED2.

        @raise CellError: a length beyond L{MAX_BODY}, a body already
            arriving for C{circId}, or too many half-received bodies (the
            caller answers DESTROY RESOURCELIMIT, see L{Refused}).
        """
        headerLen = 4 if command == Command.CREATE2 else 2
        if len(payload) < headerLen:
            raise CellError(f"{Command.NAMES[command]} shorter than its header")
        (hlen,) = struct.unpack_from(">H", payload, headerLen - 2)
        if hlen > MAX_BODY:
            raise CellError(f"{Command.NAMES[command]} body of {hlen} bytes exceeds {MAX_BODY}")
        room = PAYLOAD_LEN - headerLen
        if hlen <= room:
            return bytes(payload)
        key = (circId, command)
        if key in self._pending:
            raise CellError(f"a second {Command.NAMES[command]} while one is arriving")
        if len(self._pending) >= self.perChannel or not self.budget.take():
            raise Refused(f"too many half-received handshakes; {Command.NAMES[command]} refused")
        self._pending[key] = _Pending(bytes(payload[:headerLen]), hlen, bytearray(payload[headerLen:]),
                                      self.clock.seconds() + self.maxAge)
        self._schedule()
        return None

    def more(self, circId, command, payload):
        """
        A continuation (C{command} is the first cell's: CREATE2 or CREATED2).

        @raise CellError: nothing is arriving for C{circId}.
        """
        key = (circId, command)
        p = self._pending.get(key)
        if p is None:
            raise CellError(f"{Command.NAMES[command]}_MORE with no {Command.NAMES[command]} arriving")
        p.data += payload[:p.want - len(p.data)]
        if len(p.data) < p.want:
            return None
        self._drop(key)
        return p.header + bytes(p.data)

    def forget(self, circId):
        """The circuit is gone (DESTROY, closed): drop what was arriving for it."""
        for command in (Command.CREATE2, Command.CREATED2):
            if (circId, command) in self._pending:
                self._drop((circId, command))

    def clear(self):
        for key in list(self._pending):
            self._drop(key)
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        self._sweep = None

    def _drop(self, key):
        del self._pending[key]
        self.budget.give()

    def _schedule(self):
        if self._sweep is None and self._pending:
            nextDeadline = min(p.deadline for p in self._pending.values())
            self._sweep = self.clock.callLater(max(0.0, nextDeadline - self.clock.seconds()), self._expire)

    def _expire(self):
        self._sweep = None
        now = self.clock.seconds()
        for key, p in list(self._pending.items()):
            if p.deadline <= now:
                self._drop(key)
                self.onExpire(*key)
        self._schedule()


class Refused(CellError):
    """A half-received handshake over the bounds: answered with DESTROY RESOURCELIMIT, not PROTOCOL."""

    reason = DestroyReason.RESOURCELIMIT


# -- relay messages


def splitMessage(data, size=RELAY_DATA_LEN):
    """
    @param size: data bytes per relay message to or from that hop (488 for a CGO hop).
    @return: the bodies to send for one relay message of C{len(data)} bytes:
        FRAGMENT bodies first, the message's own command's body last.
    """
    if len(data) > MAX_BODY:
        raise CellError(f"relay message of {len(data)} bytes exceeds {MAX_BODY}")
    if len(data) <= size:
        return [data]
    return [data[i:i + size] for i in range(0, len(data), size)]


# The relay commands whose message may be fragmented.
LONG_COMMANDS = frozenset((RelayCommand.EXTEND2, RelayCommand.EXTENDED2))


class MessageAssembler:
    """One circuit's half-received relay message (at most one, at most L{MAX_BODY} bytes)."""

    __slots__ = ("_data",)

    def __init__(self):
        self._data = None

    @property
    def busy(self):
        return self._data is not None

    def fragment(self, body):
        if self._data is None:
            self._data = bytearray()
        if len(self._data) + len(body) > MAX_BODY - 1:
            self._data = None
            raise CellError(f"fragmented relay message longer than {MAX_BODY} bytes")
        self._data += body

    def finish(self, command, body):
        """
        The message's last cell arrived: @return: the whole body.
        @raise CellError: fragments came before a command that may not be fragmented.
        """
        if self._data is None:
            return body
        data, self._data = self._data, None
        if command not in LONG_COMMANDS:
            raise CellError(f"relay command {command} after FRAGMENT cells (only EXTEND2 and EXTENDED2 may be long)")
        return bytes(data + body)
