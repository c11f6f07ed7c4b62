"""Fuzz target: one link's record protocol after TLS (link/protocol.py LinkProtocol), both roles.

An input is the decrypted byte stream a peer sends, cut into reads where
the fuzzer likes, with time passing between some: VERSIONS with link and
circuit-protocol entries (the version negotiation), AUTH (an anonymous
client's, which a responder accepts), then CELLS, KEEPALIVE, DIRECTORY and
the CLOSE record of link version 2.  The link must never raise: a bad
record closes it (and only it), with the state table's order kept: no cell
and no DIRECTORY record goes up before OPEN, a CLOSE is honoured only on an
open version-2 link, and a closed link hands nothing more up.
"""

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from meshvpn.fuzz import realmsgs
from meshvpn.fuzz.target import FuzzTarget
from meshvpn.link import auth, wire
from meshvpn.link.cellsize import CELL_SIZE
from meshvpn.link.protocol import LinkProtocol, LinkSettings, State

_ME = realmsgs.identity(50)


class _TLS:
    def export_keying_material(self, label, length):
        return bytes(range(length))


class _Transport(StringTransport):
    def getHandle(self):
        return _TLS()

    def abortConnection(self):
        self.loseConnection()


def _run(data):
    if not data:
        return
    clock = Clock()
    initiator = bool(data[0] & 1)
    settings = LinkSettings(versions=(1, 2) if data[0] & 2 else (1,), acceptAnonymous=not data[0] & 4)
    up = []
    link = LinkProtocol(clock, _ME, settings, initiator, expectedId=bytes(32), cellReceiver=up.append)
    directory = []
    link.onDirectory = lambda l, payload: directory.append((l.state, payload))
    transport = _Transport()
    link.makeConnection(transport)
    link.handshakeCompleted()
    pos = 1
    while pos + 2 <= len(data):
        control, n = data[pos], data[pos + 1]
        chunk = data[pos + 2 : pos + 2 + n]
        pos += 2 + n
        before = link.state
        cellsBefore = len(up)
        link.dataReceived(chunk)
        if len(up) > cellsBefore and before is not State.OPEN:
            raise AssertionError(f"cells went up from a link in {before}")
        if any(len(c) != CELL_SIZE for batch in up for c in batch):
            raise AssertionError("a partial cell went up")
        if link.state is State.CLOSED and not transport.disconnecting:
            raise AssertionError("a closed link kept its connection")
        if control & 1:
            clock.advance(31)
        if control & 2:
            clock.advance(100)
    if any(state is not State.OPEN for state, _ in directory):
        raise AssertionError("a DIRECTORY record went up before the link was open")
    if link.state is State.OPEN and link.version not in settings.versions:
        raise AssertionError(f"open at link version {link.version}")
    link.connectionLost(_Gone())
    clock.advance(3600)


class _Gone:
    def getErrorMessage(self):
        return "gone"


def _frame(stream, cut=255, control=0):
    """C{stream} as reads of at most C{cut} (<= 255) bytes."""
    out = b""
    for i in range(0, max(len(stream), 1), cut):
        piece = stream[i : i + cut]
        out += bytes([control, len(piece)]) + piece
    return out


def _seeds():
    versions = wire.encodeVersions([1, 2], [1, 2])
    client = versions + wire.encodeControl(wire.AUTH, auth.encodeAnonymousAuth())
    opened = (client + wire.encodeCells([bytes(range(256)) + bytes(CELL_SIZE - 256)] * 3)
              + wire.encodeControl(wire.DIRECTORY, b"\x01\x00\x00\x00\x07\x02\x00\x40") + wire.encodeControl(wire.KEEPALIVE))
    closing = opened + wire.encodeClose(wire.CLOSE_SHUTDOWN)
    old = wire.encodeVersions([1]) + wire.encodeControl(wire.AUTH, auth.encodeAnonymousAuth()) + wire.encodeClose(1)
    return [b"\2" + _frame(closing), b"\2" + _frame(opened, 2) + _frame(b"", control=3), b"\0" + _frame(old, 40),
            b"\3" + _frame(versions)]


TARGET = FuzzTarget("link-session", "link/protocol.py LinkProtocol after TLS: VERSIONS (link and circuit versions), "
                    "AUTH, CELLS, DIRECTORY, CLOSE", (), _run, _seeds)
