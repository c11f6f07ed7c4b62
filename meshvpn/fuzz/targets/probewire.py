"""Fuzz target: the PROBE record (link record 0x09, link/probewire.py), alone and on an open version-5 link.

The first byte picks the half.  Odd: the rest is one PROBE body for
C{decodeProbe}, whose one encoding must give back exactly those bytes.
Even: the rest is the decrypted stream a peer sends on a link that speaks
version 5 (VERSIONS, an anonymous AUTH, then PROBE, CELLS and KEEPALIVE
records), cut into reads where the fuzzer likes.  The link must never
raise: a PROBE goes up to the probe handler only on an open version-5
link, with 1 to MAX_DATA bytes of data; anything malformed closes the link
(and its connection), never the node.
"""

from twisted.internet.task import Clock

from meshvpn.fuzz.target import FuzzTarget
from meshvpn.fuzz.targets.linksession import _ME, _frame, _Gone, _Transport
from meshvpn.link import auth, probewire, wire
from meshvpn.link.cellsize import CELL_SIZE
from meshvpn.link.protocol import LinkProtocol, LinkSettings, State

_SETTINGS = LinkSettings(versions=(1, 2, 3, 4, 5), acceptAnonymous=True)


def _body(data):
    seq, payload, echo = probewire.decodeProbe(data)
    if probewire.encodeProbe(seq, payload, echo)[3:] != bytes(data):
        raise AssertionError("a PROBE body that decodes does not encode back to itself")


def _session(data):
    clock = Clock()
    up, probes = [], []
    link = LinkProtocol(clock, _ME, _SETTINGS, False, expectedId=bytes(32), cellReceiver=up.append)

    def onProbe(l, seq, payload, echo):
        probes.append((l.state, l.version, len(payload)))

    link.onProbe = onProbe
    transport = _Transport()
    link.makeConnection(transport)
    link.handshakeCompleted()
    pos = 0
    while pos + 2 <= len(data):
        control, n = data[pos], data[pos + 1]
        try:
            link.dataReceived(data[pos + 2 : pos + 2 + n])
        except wire.LinkProtocolError as e:
            raise AssertionError(f"the link raised instead of closing: {e}") from e
        pos += 2 + n
        if link.state is State.CLOSED and not transport.disconnecting:
            raise AssertionError("a closed link kept its connection")
        if control & 1:
            clock.advance(31)
    for state, version, size in probes:
        if state is not State.OPEN or version < wire.PROBE_LINK_VERSION or not 1 <= size <= probewire.MAX_DATA:
            raise AssertionError(f"a PROBE of {size} bytes went up on a {state} version {version} link")
    if any(len(c) != CELL_SIZE for batch in up for c in batch):
        raise AssertionError("a partial cell went up")
    link.connectionLost(_Gone())
    clock.advance(3600)


def _run(data):
    if not data:
        return
    if data[0] & 1:
        _body(data[1:])
    else:
        _session(data[1:])


def _seeds():
    opened = wire.encodeVersions([1, 2, 3, 4, 5], [1, 2, 3]) + wire.encodeControl(wire.AUTH, auth.encodeAnonymousAuth())
    probes = b"".join(probewire.encodeProbe(seq, bytes(range(seq, seq + 40)), echo=seq % 2 == 1) for seq in range(4))
    stream = (opened + probes + wire.encodeCells([bytes(range(256)) + bytes(CELL_SIZE - 256)])
              + probewire.encodeProbe(2**32 - 1, bytes(probewire.MAX_DATA)) + wire.encodeControl(wire.KEEPALIVE))
    old = wire.encodeVersions([1, 2, 3, 4]) + wire.encodeControl(wire.AUTH, auth.encodeAnonymousAuth()) + probes
    return [b"\0" + _frame(stream), b"\2" + _frame(stream, 7) + _frame(b"", control=1), b"\0" + _frame(old, 60),
            b"\1" + probewire.encodeProbe(9, b"echo", echo=True)[3:], b"\1" + probewire.encodeProbe(0, bytes(1000))[3:]]


TARGET = FuzzTarget("probe-record", "link/probewire.py decodeProbe, and PROBE records on an open version-5 LinkProtocol",
                    (wire.LinkProtocolError,), _run, _seeds)
