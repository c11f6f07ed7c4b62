"""The link's record framing: what travels inside the TLS session.

Kept apart from the protocol so the parser can be fed arbitrary bytes in
tests (hypothesis) without any TLS around it.  Every record starts with a
one-byte type and a two-byte big-endian length field; CELLS records carry a
count of fixed-size cells instead of a byte length, so the receiver can hand
whole cells upward as soon as they arrive, without waiting for the record's
end and without ever buffering more than one partial cell.
"""

import struct

from meshvpn.errors import LinkError
from meshvpn.link.cellsize import CELL_SIZE

CELLS = 0x01
KEEPALIVE = 0x02
VERSIONS = 0x03
AUTH = 0x04
CLOSE = 0x05  # link version 2 and later: "I am closing this link, and why"

# A request to, or answer from, the relay at the other end of the link
# itself (meshvpn/link/dirwire.py): how a client behind a censor reads the
# directory through its bridge without a circuit and without UDP.  Link
# version 4 and later: never sent on a link below it, a protocol violation
# when received on one (a node that did not negotiate it does not know it).
DIRECTORY = 0x06
DIRECTORY_LINK_VERSION = 4

# Link version 3 and later: liveness.  PING asks the peer to answer at once
# with a PONG echoing its body (up to PING_MAX_BODY bytes), so a peer that
# is alive but has nothing to say is told from one that hangs (a stopped
# process keeps its TCP connections open and answers nothing).
PING = 0x07
PONG = 0x08
PING_MAX_BODY = 8

# Link version 5 and later: a capacity probe (meshvpn/link/probewire.py), a
# measurer's random bytes that the target echoes back on the same link,
# only to the measurers the epoch's probe plan gives it and only inside
# the plan's slot (meshvpn/measure/probeecho.py).  Never sent on a link
# below version 5; a protocol violation when received on one.
PROBE = 0x09
PROBE_LINK_VERSION = 5

CONTROL_TYPES = frozenset((KEEPALIVE, VERSIONS, AUTH, CLOSE, DIRECTORY, PING, PONG, PROBE))

# VERSIONS entries from here up name circuit protocol versions (0x8000 + n),
# below it link versions.  A node of the first release intersects every
# entry with its link versions, so it ignores these without a change.
CIRCUIT_VERSION_BASE = 0x8000
# The entry 0x8000 itself ("circuit version 0", which no node speaks) marks a
# probe-only link (link version 5 and later): an initiator that lists it asks
# for a link that carries only PROBE records and liveness, never cells, so no
# cell batch can pause it at either end; a responder that takes it lists it back.
# Earlier releases ignore it (neither a link nor a circuit version to them).
PROBE_ONLY_ENTRY = CIRCUIT_VERSION_BASE

# Why a link is closed (the CLOSE record's one byte).  A code this node does
# not know is shown by number: a newer peer may have more.
CLOSE_UNSPECIFIED = 0
CLOSE_SHUTDOWN = 1  # the node is stopping: its circuits are gone, rebuild elsewhere now
CLOSE_IDLE = 2  # no circuit used the link for a while
CLOSE_REASONS = {CLOSE_UNSPECIFIED: "unspecified", CLOSE_SHUTDOWN: "node stopping", CLOSE_IDLE: "idle"}

# Bounds: a sender splits bigger batches; a receiver refuses anything larger.
MAX_CELLS_PER_RECORD = 256
MAX_CONTROL_PAYLOAD = 1024

_HEADER = struct.Struct(">BH")
_CELLS_HEADERS = [None] + [_HEADER.pack(CELLS, n) for n in range(1, MAX_CELLS_PER_RECORD + 1)]
# n whole cells cut from a buffer in one C call (struct's "514s" repeated), about a third of a
# slice per cell in Python; one per count met, at most MAX_CELLS_PER_RECORD of them.
_CELL_RUNS = {}


def _cellRun(count):
    run = _CELL_RUNS.get(count)
    if run is None:
        run = _CELL_RUNS[count] = struct.Struct(f"{CELL_SIZE}s" * count)
    return run


class LinkProtocolError(LinkError):
    """The peer sent bytes that are not a valid link record stream."""


def encodeControl(kind, payload=b""):
    """One control record (VERSIONS, AUTH, KEEPALIVE, DIRECTORY)."""
    if kind not in CONTROL_TYPES or len(payload) > MAX_CONTROL_PAYLOAD:
        raise ValueError("bad control record")
    return _HEADER.pack(kind, len(payload)) + payload


def encodeCells(cells):
    """
    CELLS records for a list of encoded cells, joined into one C{bytes} so
    the caller writes once per batch.

    @raise ValueError: a cell is not exactly C{CELL_SIZE} bytes (checked on
        the batch's total, so a correct batch costs no per-cell check).
    """
    count = len(cells)
    if count <= MAX_CELLS_PER_RECORD:
        out = _CELLS_HEADERS[count] + b"".join(cells) if count else b""
        if len(out) != 3 * (count > 0) + count * CELL_SIZE:
            raise ValueError(f"cells must be {CELL_SIZE} bytes each")
        return out
    parts = []
    for i in range(0, count, MAX_CELLS_PER_RECORD):
        chunk = cells[i : i + MAX_CELLS_PER_RECORD]
        parts.append(_CELLS_HEADERS[len(chunk)])
        parts.extend(chunk)
    out = b"".join(parts)
    records = (count + MAX_CELLS_PER_RECORD - 1) // MAX_CELLS_PER_RECORD
    if len(out) != 3 * records + count * CELL_SIZE:
        raise ValueError(f"cells must be {CELL_SIZE} bytes each")
    return out


def encodeVersions(versions, circuitVersions=(), probeOnly=False):
    """
    A VERSIONS record offering link C{versions} (1-0x7fff) and circuit
    protocol C{circuitVersions} (1-0x7fff, sent as 0x8000 + n); with
    C{probeOnly}, the L{PROBE_ONLY_ENTRY} too.
    """
    entries = list(versions) + [CIRCUIT_VERSION_BASE + v for v in circuitVersions]
    if probeOnly:
        entries.append(PROBE_ONLY_ENTRY)
    if not all(0 < v < 0x10000 for v in entries) or not all(0 < v < CIRCUIT_VERSION_BASE for v in versions):
        raise ValueError("versions must be 1-32767")
    return encodeControl(VERSIONS, b"".join(struct.pack(">H", v) for v in entries))


def splitVersions(offered):
    """C{decodeVersions} output -> C{(link versions, circuit versions)}."""
    link = [v for v in offered if v < CIRCUIT_VERSION_BASE]
    circuit = [v - CIRCUIT_VERSION_BASE for v in offered if v > CIRCUIT_VERSION_BASE]
    return link, circuit


def encodeClose(code):
    return encodeControl(CLOSE, bytes([code]))


def decodeClose(payload):
    """@return: the reason's name.  @raise LinkProtocolError: not one byte."""
    if len(payload) != 1:
        raise LinkProtocolError("malformed CLOSE record")
    return CLOSE_REASONS.get(payload[0], f"reason {payload[0]}")


def encodePing(kind, body):
    """A PING or PONG record carrying C{body} (at most L{PING_MAX_BODY} bytes)."""
    if kind not in (PING, PONG) or len(body) > PING_MAX_BODY:
        raise ValueError("bad PING/PONG record")
    return encodeControl(kind, body)


def checkPing(payload):
    """@return: C{payload}.  @raise LinkProtocolError: longer than L{PING_MAX_BODY}."""
    if len(payload) > PING_MAX_BODY:
        raise LinkProtocolError(f"PING/PONG body of {len(payload)} bytes")
    return payload


def decodeVersions(payload):
    """
    @return: the list of versions a VERSIONS payload offers.
    @raise LinkProtocolError: empty or odd-length payload.
    """
    if not payload or len(payload) % 2:
        raise LinkProtocolError("malformed VERSIONS record")
    return [v for (v,) in struct.iter_unpack(">H", payload)]


class RecordParser:
    """
    Splits the decrypted byte stream into records.

    C{cellsReceived(list[bytes])} gets every run of whole cells that arrived;
    C{controlReceived(kind, payload)} gets each control record.  Malformed
    input raises L{LinkProtocolError} from L{feed}; the parser is then dead
    (the link closes).  A callback may call L{stop} to drop the rest.
    """

    def __init__(self, cellsReceived, controlReceived):
        self._cellsReceived = cellsReceived
        self._controlReceived = controlReceived
        self._buf = b""
        self._cellsLeft = 0
        self._stopped = False

    def stop(self):
        self._stopped = True
        self._buf = b""

    def buffered(self):
        """Bytes held back waiting for the rest of a record (always bounded)."""
        return len(self._buf)

    def feed(self, data):
        if self._stopped:
            return
        buf = self._buf + data if self._buf else data
        pos, n = 0, len(buf)
        while pos < n and not self._stopped:
            if self._cellsLeft:
                whole = min(self._cellsLeft, (n - pos) // CELL_SIZE)
                if not whole:
                    break
                end = pos + whole * CELL_SIZE
                self._cellsLeft -= whole
                self._cellsReceived(list(_cellRun(whole).unpack_from(buf, pos)))
                pos = end
                continue
            if n - pos < 3:
                break
            kind, length = _HEADER.unpack_from(buf, pos)
            if kind == CELLS:
                if not 1 <= length <= MAX_CELLS_PER_RECORD:
                    self._fail(f"CELLS record with count {length}")
                self._cellsLeft = length
                pos += 3
                continue
            if kind not in CONTROL_TYPES:
                self._fail(f"unknown record type 0x{kind:02x}")
            if length > MAX_CONTROL_PAYLOAD:
                self._fail(f"control record of {length} bytes")
            if n - pos - 3 < length:
                break
            payload = buf[pos + 3 : pos + 3 + length]
            pos += 3 + length
            self._controlReceived(kind, payload)
        self._buf = b"" if self._stopped else buf[pos:]

    def _fail(self, why):
        self.stop()
        raise LinkProtocolError(why)
