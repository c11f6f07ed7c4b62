"""
A relay's runs in one C call (meshvpn/onion/_cgodirection.c: runEnd,
passCells, forwardCells, originateRun's `at`, unwrapRun's `maxData`) agree
byte for byte with their Python references in meshvpn/onion/cgo.py on
random batches of link cells, malformed ones included, and a malformed cell
in a run closes only its circuit.
"""

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings, strategies as st
from twisted.trial import unittest

from meshvpn.onion import cgo
from meshvpn.onion.cells import CGO_BODY_AT, CGO_RELAY_DATA_LEN, CellError
from meshvpn.onion.cgohops import CgoRelayHop
from meshvpn.onion.dispatch import RelayDispatcher
from meshvpn.onion.test import test_cgo
from meshvpn.onion.test.test_cgodirection import _fromOtherEnd

try:
    from meshvpn.onion import _cgodirection as C
except ImportError:
    C = None

_NOT_BUILT = "meshvpn.onion._cgodirection was not built (no C compiler or OpenSSL headers)"
_SEED = st.binary(min_size=cgo.STATE_SEED_LEN, max_size=cgo.STATE_SEED_LEN)


class _Sized:
    maxData = CGO_RELAY_DATA_LEN


def _outcome(f, *args):
    """C{("ok", result)} or C{("error", exception type)}: what both implementations must agree on."""
    try:
        return "ok", f(*args)
    except (ValueError, IndexError, TypeError) as e:
        return "error", type(e)


# A batch as a link hands it over: cells of a few circuits and commands, some of the wrong size.
_linkCell = st.tuples(
    st.sampled_from([b"\x00\x00\x00\x07", b"\x80\x00\x00\x07", b"\x00\x00\x00\x08"]),
    st.sampled_from([b"\x03", b"\x09", b"\x04"]),
    st.one_of(st.binary(min_size=cgo.CELL_LEN, max_size=cgo.CELL_LEN),
              st.binary(min_size=0, max_size=cgo.CELL_LEN + 3)),
).map(b"".join)
_batch = st.lists(_linkCell, min_size=1, max_size=10)


class RunTests(unittest.TestCase):
    def setUp(self):
        if C is None:
            raise unittest.SkipTest(_NOT_BUILT)

    @settings(max_examples=200, deadline=None)
    @given(cells=_batch, start=st.integers(0, 11))
    def test_runEnd(self, cells, start):
        """The run a channel hands over: the same end from both, the same refusal of a bad start."""
        self.assertEqual(_outcome(C.runEnd, cells, start), _outcome(cgo.pyRunEnd, cells, start))

    def test_runEndStopsAtMalformed(self):
        """A short cell, another circuit or another command ends a run; a run never starts on a bad cell."""
        a = b"\x00\x00\x00\x07\x03" + bytes(cgo.CELL_LEN)
        other = b"\x00\x00\x00\x08\x03" + bytes(cgo.CELL_LEN)
        early = b"\x00\x00\x00\x07\x09" + bytes(cgo.CELL_LEN)
        for runEnd in (C.runEnd, cgo.pyRunEnd):
            self.assertEqual(runEnd([a, a, a[:-1], a], 0), 2)
            self.assertEqual(runEnd([a, a, other, a], 0), 2)
            self.assertEqual(runEnd([a, early, a], 0), 1)
            self.assertEqual(runEnd([a, a, a], 1), 3)
            self.assertRaises(ValueError, runEnd, [a[:-1], a], 0)
            self.assertRaises(IndexError, runEnd, [a], 1)
            self.assertRaises(IndexError, runEnd, [a], -1)

    @settings(max_examples=150, deadline=None)
    @given(seed=_SEED, cells=_batch, start=st.integers(0, 11), length=st.integers(0, 11))
    def test_passCells(self, seed, cells, start, length):
        """Any batch and range: the same cells (or the same refusal, the cells before it taken) and the same state."""
        c, p = C.Direction(seed, False), cgo.PyDirection(seed, False)
        stop = start + length
        self.assertEqual(_outcome(c.passCells, b"\x03", cells, start, stop, b"head\x03"),
                         _outcome(p.passCells, b"\x03", cells, start, stop, b"head\x03"))
        self.assertEqual((c.tprime, c.nonce), (p.tprime, p.nonce))

    @settings(max_examples=150, deadline=None)
    @given(seed=_SEED, bodies=st.lists(st.binary(min_size=cgo.BODY_LEN, max_size=cgo.BODY_LEN), min_size=1, max_size=6),
           mineAt=st.lists(st.booleans(), min_size=6, max_size=6), bad=st.integers(-1, 7))
    def test_forwardCells(self, seed, bodies, mineAt, bad):
        """
        Cells from the origin, some for this hop (made with its keys as they
        will be), one maybe of the wrong size: both stop after the same first
        one for this hop, with the same cells before it and the same state.
        """
        c, p = C.Direction(seed, False), cgo.PyDirection(seed, False)
        head = b"\x00\x00\x00\x07\x03"
        # Cells for this hop are made against a shadow of its state, the others are random.
        shadow = _Shadow(seed)
        cells = []
        for k, body in enumerate(bodies):
            payload = shadow.mine(body) if mineAt[k] else bytes(16) + body
            shadow.take(payload)
            cells.append(head + payload)
        if 0 <= bad < len(cells):
            cells[bad] = cells[bad][:-1]
        k = 0
        while k < len(cells):
            got = _outcome(c.forwardCells, b"\x03", cells, k, len(cells), b"next\x03")
            want = _outcome(p.forwardCells, b"\x03", cells, k, len(cells), b"next\x03")
            self.assertEqual(got, want)
            if got[0] == "error":
                break
            self.assertEqual((c.tprime, c.nonce), (p.tprime, p.nonce))
            k = got[1][0]

    def test_forwardCellsStopsAtMine(self):
        """The first cell for this hop ends the call: the ones before it are returned to pass on."""
        seed = bytes(range(cgo.STATE_SEED_LEN))
        c = C.Direction(seed, False)
        shadow = _Shadow(seed)
        head = b"\x00\x00\x00\x07\x03"
        first = bytes(16) + test_cgo.body(1)
        shadow.take(first)
        mine = shadow.mine(test_cgo.body(2))
        shadow.take(mine)
        after = bytes(16) + test_cgo.body(3)
        cells = [head + first, head + mine, head + after]
        nxt, out, got = c.forwardCells(b"\x03", cells, 0, 3, b"nxt")
        self.assertEqual(nxt, 2)
        self.assertEqual(len(out), 1)
        self.assertTrue(out[0].startswith(b"nxt"))
        self.assertEqual(got[0][cgo.TAG_LEN:], test_cgo.body(2))
        self.assertEqual(got[1], mine[:cgo.TAG_LEN])
        self.assertEqual(c.forwardCells(b"\x03", cells, 2, 3, b"nxt")[0], 3)

    @settings(max_examples=100, deadline=None)
    @given(seed=_SEED, lengths=st.lists(st.integers(0, 494), min_size=1, max_size=5),
           sizes=st.lists(st.sampled_from([509, 509, 509, 508, 510]), min_size=5, max_size=5))
    def test_originateAt(self, seed, lengths, sizes):
        """Common-layout payloads, some too long or of the wrong size: the same cells, or the same error and no change."""
        plains = [(bytes(13) + n.to_bytes(2, "big") + bytes(494))[:size] for n, size in zip(lengths, sizes)]
        c, p = C.Direction(seed, False), cgo.PyDirection(seed, False)
        got = _outcome(c.originateRun, b"\x03", plains, b"h", CGO_BODY_AT, CGO_RELAY_DATA_LEN)
        want = _outcome(p.originateRun, b"\x03", plains, b"h", CGO_BODY_AT, CGO_RELAY_DATA_LEN)
        self.assertEqual(got, want)
        self.assertEqual((c.tprime, c.nonce), (p.tprime, p.nonce))
        if got[0] == "ok":
            # The same as the bodies cut in Python (what CgoRelayHop did before).
            ref = cgo.PyDirection(seed, False)
            self.assertEqual(got[1], ref.originateRun(b"\x03", [x[CGO_BODY_AT:CGO_BODY_AT + cgo.BODY_LEN]
                                                                 for x in plains], b"h"))
        else:
            self.assertEqual(c.nonce, C.Direction(seed, False).nonce)  # nothing was sealed

    def test_originateAtTooLongIsCellError(self):
        """At the relay circuit's level a too long payload is a protocol error (CellError), as toBody made it."""
        hop = CgoRelayHop(test_cgo.material(0))
        plain = bytes(13) + (CGO_RELAY_DATA_LEN + 1).to_bytes(2, "big") + bytes(494)
        self.assertRaises(CellError, hop.originateBackwardCells, [plain], b"h")
        e = self.assertRaises(C.RelayLengthError, C.Direction(bytes(64), False).originateRun, b"\x03", [plain], b"h",
                              CGO_BODY_AT, CGO_RELAY_DATA_LEN)
        self.assertIn("488", str(e))

    @settings(max_examples=100, deadline=None)
    @given(seed=_SEED, sid=st.integers(0, 0xffff), chunks=st.lists(st.binary(max_size=CGO_RELAY_DATA_LEN + 2), max_size=5))
    def test_originateData(self, seed, sid, chunks):
        """Stream chunks (some maybe too long): the same cells and tags, or the same error and nothing sealed."""
        c, p = C.Direction(seed, False), cgo.PyDirection(seed, False)
        got = _outcome(c.originateData, b"\x03", 2, sid, [memoryview(x) for x in chunks], CGO_RELAY_DATA_LEN, b"h")
        want = _outcome(p.originateData, b"\x03", 2, sid, chunks, CGO_RELAY_DATA_LEN, b"h")
        self.assertEqual(got, want)
        self.assertEqual((c.tprime, c.nonce), (p.tprime, p.nonce))
        self.assertEqual(got[0] == "error", any(len(x) > CGO_RELAY_DATA_LEN for x in chunks))

    @settings(max_examples=50, deadline=None)
    @given(sid=st.integers(1, 0xffff), chunks=st.lists(st.binary(max_size=CGO_RELAY_DATA_LEN), min_size=1, max_size=5))
    def test_dataCellsAsTheDispatcherPacksThem(self, sid, chunks):
        """The exit's DATA cells from C are the ones the dispatcher's payloads sealed one by one give."""
        fast, ref = CgoRelayHop(test_cgo.material(1)), CgoRelayHop(test_cgo.material(1))
        plains = RelayDispatcher._dataCells(_Sized(), sid, chunks)
        self.assertEqual(fast.originateDataCells(sid, chunks, b"head"), ref.originateBackwardCells(plains, b"head"))
        self.assertRaises(CellError, fast.originateDataCells, sid, [bytes(CGO_RELAY_DATA_LEN + 1)], b"head")

    @settings(max_examples=60, deadline=None)
    @given(hopFor=st.lists(st.integers(0, 2), min_size=1, max_size=6), longAt=st.integers(0, 7))
    def test_unwrapMaxData(self, hopFor, longAt):
        """A recognized cell with a length over the bound: both raise after the whole run, with the same state."""
        def build(direction):
            relays = [cgo.CgoRelayLayer(test_cgo.material(i)) for i in range(3)]
            return relays, [direction(test_cgo.material(i)[cgo.STATE_SEED_LEN:cgo.KEY_MATERIAL_LEN], True)
                            for i in range(3)]

        def cellsFrom(relays):
            cells = []
            for k, hop in enumerate(hopFor):
                body = bytearray(test_cgo.body(k))
                body[3:5] = (CGO_RELAY_DATA_LEN + (k == longAt)).to_bytes(2, "big")
                cell, _ = relays[hop].originate(b"\x03", bytes(body))
                for inner in range(hop - 1, -1, -1):
                    cell = relays[inner].backward(b"\x03", cell)
                cells.append(cell)
            return cells

        self.patch(cgo, "_Direction", cgo.PyDirection)
        pyRelays, pyDirs = build(cgo.PyDirection)
        want = _outcome(cgo.pyUnwrapRun, b"\x03", cellsFrom(pyRelays), pyDirs, b"pad", CGO_RELAY_DATA_LEN)
        cRelays, cDirs = build(C.Direction)
        got = _outcome(C.unwrapRun, b"\x03", cellsFrom(cRelays), cDirs, b"pad", CGO_RELAY_DATA_LEN)
        self.assertEqual(got, want)
        self.assertEqual(got[0] == "error", longAt < len(hopFor))
        self.assertEqual([d.nonce for d in cDirs], [d.nonce for d in pyDirs])


class _Shadow:
    """A relay direction's state followed in Python, to make cells it will recognize (the origin's side)."""

    def __init__(self, seed):
        self.seed = seed
        self.relay = cgo.PyDirection(seed, False)

    def mine(self, body):
        """A payload that the relay direction, as it is now, recognizes as carrying C{body}."""
        return _fromOtherEnd(self.seed, False, self.relay.tprime, b"\x03", body)

    def take(self, payload):
        """The relay's layer on C{payload}, its keys followed when it is recognized (a relay updates with N)."""
        _, tag = self.relay.layer(b"\x03", payload)
        if tag is not None:
            self.seed = AESGCM(self.seed[32:48]).encrypt(self.seed[48:64] + b"\x01", bytes(64), None)[:64]


class MalformedInARun(unittest.TestCase):
    """At a relay, through the real switch: a bad cell in a run closes its circuit only."""

    def test_shortCellClosesOnlyItsCircuit(self):
        from meshvpn.onion.origin import OriginCircuit
        from meshvpn.onion.test.test_circuit import Net

        n = Net(self)
        first = n.built(self)
        second = OriginCircuit(n.client.switch, n.guardLink, [n.guard.hopSpec(), n.middle.hopSpec(), n.exit.hopSpec()])
        built = second.build()
        n.net.pump()
        self.assertIs(self.successResultOf(built), second)
        self.assertIs(first.channel, second.channel)
        captured = []
        n.guardLink.tap = captured.append
        n.guardLink.discard = True
        for i in range(4):
            first.sendPackets([b"\x45a" * 10 + bytes([i])])
        for i in range(3):
            second.sendPackets([b"\x45b" * 10 + bytes([i])])
        n.net.pump()
        n.guardLink.discard = False
        cells = [c for batch in captured for c in batch if c[4] == 3]
        self.assertEqual(len(cells), 7)
        batch = cells[:2] + [cells[2][:-1]] + cells[3:]  # a short cell inside the first circuit's run
        guardChannel = n.channel(n.guard, n.client)
        errors = n.guard.switch.counters["protocol_errors"]
        guardChannel.receive(batch)
        n.net.pump()
        self.assertEqual(n.guard.switch.counters["protocol_errors"], errors + 1)
        self.assertEqual(n.edge.packets, [b"\x45a" * 10 + bytes([i]) for i in range(2)]
                         + [b"\x45b" * 10 + bytes([i]) for i in range(3)])
        self.assertTrue(first.closed)
        self.assertFalse(second.closed)
        self.assertIn(second.circId, guardChannel.circuits)

    def test_cgoEndsTakeCells(self):
        """A relay's CGO hop and its end on the next hop's channel provide ICellRunEnd; the channel uses it."""
        from zope.interface.verify import verifyObject

        from meshvpn.interfaces import ICellRunEnd
        from meshvpn.onion.test.test_circuit import Net

        n = Net(self)
        n.built(self)
        hop = n.relayCircuit(n.middle)
        self.assertTrue(verifyObject(ICellRunEnd, hop))
        self.assertTrue(verifyObject(ICellRunEnd, n.channel(n.middle, n.exit).circuits[hop.nextId]))
        self.assertTrue(hop.TAKES_CELLS)
