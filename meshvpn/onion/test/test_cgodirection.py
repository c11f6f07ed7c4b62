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

    def test_malformed(self):
        """Wrong sizes are a ValueError that names what was expected; nothing is read past a buffer."""
        d = CDirection(bytes(cgo.STATE_SEED_LEN), False)
        for bad in (b"", bytes(cgo.CELL_LEN - 1), bytes(cgo.CELL_LEN + 1)):
            self.assertRaises(ValueError, d.encrypt, b"\x03", bad)
            self.assertRaises(ValueError, d.decrypt, b"\x03", bad)
        self.assertRaises(ValueError, d.encrypt, b"\x03\x03", bytes(cgo.CELL_LEN))
        self.assertRaises(ValueError, d.encrypt, b"", bytes(cgo.CELL_LEN))
        self.assertRaises(TypeError, d.encrypt, b"\x03")
        self.assertRaises(TypeError, d.encrypt, "x", bytes(cgo.CELL_LEN))
        self.assertRaises(ValueError, d.update, bytes(15))
        self.assertRaises(ValueError, CDirection, bytes(63), False)
        e = self.assertRaises(ValueError, CDirection, bytes(65), True)
        self.assertIn("64", str(e))
