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
    st.tuples(st.sampled_from(["layer", "originate", "passRun"]), st.sampled_from([b"\x03", b"\x09"]),
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
        self.assertRaises(TypeError, d.decrypt, b"\x03", bytes(cgo.CELL_LEN))  # a relay's keys only encrypt
        self.assertRaises(TypeError, client.encrypt, b"\x03", bytes(cgo.CELL_LEN))
        self.assertRaises(TypeError, d.passRun, b"\x03", 5, b"h")
        self.assertRaises(ValueError, d.encrypt, b"\x03\x03", bytes(cgo.CELL_LEN))
        self.assertRaises(ValueError, d.encrypt, b"", bytes(cgo.CELL_LEN))
        self.assertRaises(TypeError, d.encrypt, b"\x03")
        self.assertRaises(TypeError, d.encrypt, "x", bytes(cgo.CELL_LEN))
        self.assertRaises(ValueError, d.update, bytes(15))
        self.assertRaises(ValueError, CDirection, bytes(63), False)
        e = self.assertRaises(ValueError, CDirection, bytes(65), True)
        self.assertIn("64", str(e))
