"""Fuzz target: the TLS link's record stream (link/wire.py), fed in two pieces, with VERSIONS payloads decoded."""

from meshvpn.fuzz import realmsgs
from meshvpn.fuzz.target import FuzzTarget
from meshvpn.link import auth, wire
from meshvpn.link.cellsize import CELL_SIZE


def _control(kind, payload):
    if kind == wire.VERSIONS:
        wire.decodeVersions(payload)


def _run(data):
    if not data:
        return
    cells = []
    parser = wire.RecordParser(cells.extend, _control)
    # The first byte says where TCP cut the stream: a record split across
    # reads must parse like a whole one.
    cut = 1 + data[0] * len(data) // 256
    parser.feed(data[1:cut])
    parser.feed(data[cut:])
    if any(len(c) != CELL_SIZE for c in cells):
        raise AssertionError("the record parser handed up a partial cell")
    if parser.buffered() > max(CELL_SIZE, 3 + wire.MAX_CONTROL_PAYLOAD):
        raise AssertionError(f"the record parser holds {parser.buffered()} bytes")


def _seeds():
    ident = realmsgs.identity(3)
    transcript = auth.transcriptHash(b"\x00\x01", b"\x00\x01")
    stream = (wire.encodeVersions([1]) + wire.encodeControl(wire.AUTH, auth.encodeAuth(ident, auth.INITIATOR, bytes(32), transcript))
              + wire.encodeCells([bytes(range(256)) + bytes(CELL_SIZE - 256)] * 2) + wire.encodeControl(wire.KEEPALIVE))
    return [bytes([128]) + stream, bytes([7]) + wire.encodeVersions([1, 2]), bytes([200]) + wire.encodeControl(wire.AUTH, auth.encodeAnonymousAuth())]


TARGET = FuzzTarget("link-records", "link/wire.py RecordParser + decodeVersions (every TLS link)",
                    (wire.LinkProtocolError,), _run, _seeds)
