"""Fuzz target: the TLS link's record stream (link/wire.py), fed in two pieces, with control payloads decoded.

VERSIONS (link and circuit-protocol entries, split as the protocol does),
CLOSE (link version 2) and DIRECTORY (link/dirwire.py) payloads go through
their decoders; the record stateful handling is the link-session target's.
"""

from meshvpn.fuzz import realmsgs
from meshvpn.fuzz.target import FuzzTarget
from meshvpn.link import auth, dirwire, wire
from meshvpn.link.cellsize import CELL_SIZE


def _control(kind, payload):
    if kind == wire.VERSIONS:
        link, circuit = wire.splitVersions(wire.decodeVersions(payload))
        if any(v >= wire.CIRCUIT_VERSION_BASE for v in link) or any(not 0 < v < wire.CIRCUIT_VERSION_BASE for v in circuit):
            raise AssertionError(f"a version out of range: {link} {circuit}")
    elif kind == wire.CLOSE:
        wire.decodeClose(payload)
    elif kind == wire.DIRECTORY:
        dirwire.decodeRecord(payload)


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
    return [bytes([128]) + stream, bytes([7]) + wire.encodeVersions([1, 2]), bytes([200]) + wire.encodeControl(wire.AUTH, auth.encodeAnonymousAuth()),
            bytes([60]) + wire.encodeVersions([1, 2], [1, 2]) + wire.encodeControl(wire.DIRECTORY, dirwire.encodeRequest(7, dirwire.WHAT_RELAYS, 64))
            + wire.encodeClose(wire.CLOSE_IDLE)]


TARGET = FuzzTarget("link-records", "link/wire.py RecordParser, decodeVersions/splitVersions, decodeClose, dirwire.decodeRecord (every TLS link)",
                    (wire.LinkProtocolError, dirwire.DirectoryWireError), _run, _seeds)
