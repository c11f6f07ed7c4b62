"""
The two implementations of a CGO direction agree byte for byte: the C one
(meshvpn/onion/_cgodirection.c, what circuits use when it is built) and the
Python reference in meshvpn/onion/cgo.py; the checked-in vectors hold for
both, and the C one refuses malformed input with a clear error.
"""

import os

from hypothesis import given, settings, strategies as st
from twisted.trial import unittest

from meshvpn.onion import cgo
from meshvpn.onion.test import test_cgo

try:
    from meshvpn.onion._cgodirection import Direction as CDirection
except ImportError:
    CDirection = None

_NOT_BUILT = "meshvpn.onion._cgodirection was not built (no C compiler or OpenSSL headers)"


class BuiltTests(unittest.TestCase):
    def test_builtOnCI(self):
        """bin/install installs the compiler and headers, so CI always runs the C part."""
        if os.environ.get("CI") != "true" and CDirection is None:
            raise unittest.SkipTest(_NOT_BUILT)
        self.assertIsNotNone(CDirection, _NOT_BUILT)
        self.assertIs(cgo._Direction, CDirection)


class PythonVectorTests(test_cgo.VectorTests):
    """The checked-in vectors through the Python reference alone."""

    def setUp(self):
        self.patch(cgo, "_Direction", cgo.PyDirection)


class PythonTaggingTests(test_cgo.TaggingTests):
    """The tagging attack against the Python reference alone."""

    def setUp(self):
        self.patch(cgo, "_Direction", cgo.PyDirection)


_cells = st.lists(
    st.tuples(st.sampled_from([b"\x03", b"\x09"]), st.binary(min_size=cgo.CELL_LEN, max_size=cgo.CELL_LEN),
              st.booleans()),
    min_size=1, max_size=12)


def _fromOtherEnd(seed, decrypting, tprime, cmd, body):
    """A cell that this end's layer, keyed from C{seed} with chain C{tprime}, turns into N | body."""
    other = cgo.PyDirection(seed, not decrypting)
    other.tprime = tprime
    plain = seed[48:64] + body
    return other.encrypt(cmd, plain) if decrypting else other.decrypt(cmd, plain)


_ops = st.lists(
    st.tuples(st.sampled_from(["layer", "originate", "originateRun", "passRun"]), st.sampled_from([b"\x03", b"\x09"]),
              st.binary(min_size=cgo.CELL_LEN, max_size=cgo.CELL_LEN), st.integers(0, 3)),
    min_size=1, max_size=10)


class AgreementTests(unittest.TestCase):
    def setUp(self):
        if CDirection is None:
            raise unittest.SkipTest(_NOT_BUILT)

    @settings(max_examples=150, deadline=None)
    @given(seed=st.binary(min_size=cgo.STATE_SEED_LEN, max_size=cgo.STATE_SEED_LEN), decrypting=st.booleans(),
           cells=_cells)
    def test_sameBytes(self, seed, decrypting, cells):
        """Any cells, either direction, updates anywhere: the same output, T' and N from both."""
        c, p = CDirection(seed, decrypting), cgo.PyDirection(seed, decrypting)
        self.assertEqual(c.nonce, p.nonce)
        for cmd, cell, update in cells:
            if decrypting:
                self.assertEqual(c.decrypt(cmd, cell), p.decrypt(cmd, cell))
            else:
                self.assertEqual(c.encrypt(cmd, memoryview(cell)), p.encrypt(cmd, cell))
            self.assertEqual(c.tprime, p.tprime)
            if update:
                c.update(cell[:cgo.TAG_LEN])
                p.update(cell[:cgo.TAG_LEN])
                self.assertEqual(c.nonce, p.nonce)

    @settings(max_examples=150, deadline=None)
    @given(seed=st.binary(min_size=cgo.STATE_SEED_LEN, max_size=cgo.STATE_SEED_LEN), decrypting=st.booleans(),
           ops=_ops)
    def test_sameSteps(self, seed, decrypting, ops):
        """layer (with recognition), originate and passRun: the same results and state from both."""
        c, p = CDirection(seed, decrypting), cgo.PyDirection(seed, decrypting)
        fresh = True  # the keys are still the seed's: the other end's cells can be made
        for op, cmd, cell, n in ops:
            if op == "layer":
                if n == 0 and fresh:
                    cell = _fromOtherEnd(seed, decrypting, p.tprime, cmd, cell[cgo.TAG_LEN:])
                got, want = c.layer(cmd, cell), p.layer(cmd, cell)
                fresh = fresh and want[1] is None
            elif op == "originate":
                fresh = False
                got, want = c.originate(cmd, cell[:cgo.BODY_LEN]), p.originate(cmd, cell[:cgo.BODY_LEN])
            elif op == "originateRun":
                fresh = False
                bodies = [cell[k:k + cgo.BODY_LEN] for k in range(n)]
                got, want = c.originateRun(cmd, bodies, b"h"), p.originateRun(cmd, bodies, b"h")
            else:
                cells = [cell] * n
                got, want = c.passRun(cmd, cells, b"head"), p.passRun(cmd, cells, b"head")
            self.assertEqual(got, want)
            self.assertEqual((c.tprime, c.nonce), (p.tprime, p.nonce))

    def test_recognized(self):
        """A cell the other end made for this one is recognized by both, with the same tag and new keys."""
        seed = bytes(range(cgo.STATE_SEED_LEN))
        for decrypting in (False, True):
            c, p = CDirection(seed, decrypting), cgo.PyDirection(seed, decrypting)
            cell = _fromOtherEnd(seed, decrypting, p.tprime, b"\x03", bytes(cgo.BODY_LEN))
            got, want = c.layer(b"\x03", cell), p.layer(b"\x03", cell)
            self.assertIsNotNone(want[1])
            self.assertEqual(got, want)
            self.assertEqual(c.nonce, p.nonce)
            self.assertNotEqual(c.nonce, seed[48:])

    @settings(max_examples=60, deadline=None)
    @given(hopFor=st.lists(st.integers(0, 2), min_size=1, max_size=8), breakAt=st.integers(0, 9))
    def test_unwrapRun(self, hopFor, breakAt):
        """Cells from any hop of three, one maybe modified: the same entries from both, the list ended at it."""
        def build(direction):
            relays = [cgo.CgoRelayLayer(test_cgo.material(i)) for i in range(3)]
            dirs = [direction(test_cgo.material(i)[cgo.STATE_SEED_LEN:cgo.KEY_MATERIAL_LEN], True) for i in range(3)]
            return relays, dirs

        def cellsFrom(relays):
            cells = []
            for k, hop in enumerate(hopFor):
                cell, _ = relays[hop].originate(b"\x03", test_cgo.body(k))
                for inner in range(hop - 1, -1, -1):
                    cell = relays[inner].backward(b"\x03", cell)
                if k == breakAt:
                    cell = bytes([cell[0] ^ 1]) + cell[1:]
                cells.append(cell)
            return cells

        self.patch(cgo, "_Direction", cgo.PyDirection)
        pyRelays, pyDirs = build(cgo.PyDirection)
        want = cgo.pyUnwrapRun(b"\x03", cellsFrom(pyRelays), pyDirs, b"pad")
        cRelays, cDirs = build(CDirection)
        got = cgo.unwrapRun(b"\x03", cellsFrom(cRelays), cDirs, b"pad")
        self.assertEqual(got, want)
        self.assertEqual(len(got), min(len(hopFor), breakAt + 1))
        self.assertEqual([e[0] for e in got if e is not None], hopFor[:breakAt])
        self.assertEqual(got[0] is None, breakAt == 0)

    def test_malformed(self):
        """Wrong sizes are a ValueError that names what was expected; nothing is read past a buffer."""
        d = CDirection(bytes(cgo.STATE_SEED_LEN), False)
        client = CDirection(bytes(cgo.STATE_SEED_LEN), True)
        for bad in (b"", bytes(cgo.CELL_LEN - 1), bytes(cgo.CELL_LEN + 1)):
            self.assertRaises(ValueError, d.encrypt, b"\x03", bad)
            self.assertRaises(ValueError, client.decrypt, b"\x03", bad)
            self.assertRaises(ValueError, d.layer, b"\x03", bad)
            self.assertRaises(ValueError, d.passRun, b"\x03", [bytes(cgo.CELL_LEN), bad], b"h")
            self.assertRaises(ValueError, d.originate, b"\x03", bad)
            self.assertRaises(ValueError, d.originateRun, b"\x03", [bytes(cgo.BODY_LEN), bad], b"h")
        self.assertRaises(TypeError, d.decrypt, b"\x03", bytes(cgo.CELL_LEN))  # a relay's keys only encrypt
        self.assertRaises(TypeError, client.encrypt, b"\x03", bytes(cgo.CELL_LEN))
        self.assertRaises(TypeError, d.passRun, b"\x03", 5, b"h")
        unwrapRun = cgo._unwrapRun
        self.assertRaises(TypeError, unwrapRun, b"\x03", [bytes(cgo.CELL_LEN)], [d], b"")  # a relay's direction
        self.assertRaises(TypeError, unwrapRun, b"\x03", [bytes(cgo.CELL_LEN)], [object()], b"")
        self.assertRaises(ValueError, unwrapRun, b"\x03", [bytes(cgo.CELL_LEN - 1)], [client], b"")
        self.assertEqual(unwrapRun(b"\x03", [bytes(cgo.CELL_LEN)] * 3, [client], b""), [None])
        self.assertRaises(ValueError, d.encrypt, b"\x03\x03", bytes(cgo.CELL_LEN))
        self.assertRaises(ValueError, d.encrypt, b"", bytes(cgo.CELL_LEN))
        self.assertRaises(TypeError, d.encrypt, b"\x03")
        self.assertRaises(TypeError, d.encrypt, "x", bytes(cgo.CELL_LEN))
        self.assertRaises(ValueError, d.update, bytes(15))
        self.assertRaises(ValueError, CDirection, bytes(63), False)
        e = self.assertRaises(ValueError, CDirection, bytes(65), True)
        self.assertIn("64", str(e))
