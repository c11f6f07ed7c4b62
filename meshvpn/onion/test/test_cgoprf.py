"""
CGO's PRF in C (meshvpn/onion/_cgodirection.c) is AES-128-GCM's keystream,
byte for byte, though it runs counter mode itself from the first counter
block GCM derives (without GCM's hash of the output): many random keys,
nonces and cells through the C direction and the Python reference, and
nonces chosen so GCM's 32-bit counter wraps inside a cell or an update.

The wrap is the case random inputs never reach (a cell's 31 counter blocks
wrap for about one nonce in 2^27), and a neighbour chooses the T the
client's PRF runs on: a hostile one can pick a T whose counter wraps.  GCM
increments only the last 32 bits, so a counter that carried into the other
96 would give the client another keystream than the relay's, and the circuit
would break for a cell the relay made correctly.  The test builds such T
from the GHASH algebra below (NIST SP 800-38D), checks with the Python
reference that the keystream really wraps, then that C gives the same bytes.
"""

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings, strategies as st
from twisted.trial import unittest

from meshvpn.onion import cgo

try:
    from meshvpn.onion._cgodirection import Direction as CDirection
except ImportError:
    CDirection = None

_NOT_BUILT = "meshvpn.onion._cgodirection was not built (no C compiler or OpenSSL headers)"
_R = 0xE1 << 120  # GCM's reduction, in its bit-reflected order
_CMDS = st.sampled_from([b"\x03", b"\x09"])
_seeds = st.binary(min_size=cgo.STATE_SEED_LEN, max_size=cgo.STATE_SEED_LEN)


def _mul(x, y):
    """x * y in GCM's GF(2^128), blocks as big-endian integers (SP 800-38D, algorithm 1)."""
    z = 0
    for i in range(127, -1, -1):
        if (x >> i) & 1:
            z ^= y
        y = (y >> 1) ^ _R if y & 1 else y >> 1
    return z


def _inverse(h):
    """h^(2^128 - 2): the inverse of a non-zero h."""
    result, power, e = 1 << 127, h, (1 << 128) - 2  # 1 << 127 is the field's one
    while e:
        if e & 1:
            result = _mul(result, power)
        power = _mul(power, power)
        e >>= 1
    return result


def _aes(key, block):
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return enc.update(block) + enc.finalize()


def _ghash(h, blocks):
    y = 0
    for b in blocks:
        y = _mul(y ^ int.from_bytes(b, "big"), h)
    return y


def _lengthBlock(nonceLen):
    return bytes(8) + (8 * nonceLen).to_bytes(8, "big")


def _cellNonce(ks, j0):
    """T (16 bytes) whose J0 under KS is j0: J0 = (T*H ^ L)*H."""
    h = int.from_bytes(_aes(ks, bytes(16)), "big")
    hInv = _inverse(h)
    t = _mul(_mul(j0, hInv) ^ int.from_bytes(_lengthBlock(16), "big"), hInv)
    return t.to_bytes(16, "big")


def _updateNonce(ks, j0):
    """N (16 bytes) whose J0 for N | 0x01 under KS is j0: J0 = ((N*H ^ B)*H ^ L)*H, B = 0x01 | zeros."""
    h = int.from_bytes(_aes(ks, bytes(16)), "big")
    hInv = _inverse(h)
    x = _mul(j0, hInv) ^ int.from_bytes(_lengthBlock(17), "big")
    x = _mul(x, hInv) ^ int.from_bytes(b"\x01" + bytes(15), "big")
    return _mul(x, hInv).to_bytes(16, "big")


def _counterKeystream(ks, j0, length):
    """CTR from inc32(j0), the last 32 bits wrapping alone: what GCM's keystream must be."""
    head, low = j0 >> 32, j0 & 0xFFFFFFFF
    blocks = b"".join(((head << 32) | ((low + 1 + i) & 0xFFFFFFFF)).to_bytes(16, "big")
                      for i in range(-(-length // 16)))
    return _aes(ks, blocks)[:length]


def _j0(high, blocksBeforeWrap):
    """A J0 with 96 bits C{high} whose counter (from inc32(J0)) wraps after C{blocksBeforeWrap} blocks."""
    return (int.from_bytes(high, "big") << 32) | ((-1 - blocksBeforeWrap) & 0xFFFFFFFF)


class AlgebraTests(unittest.TestCase):
    def test_inverse(self):
        h = int.from_bytes(_aes(bytes(16), bytes(16)), "big")
        self.assertEqual(_mul(h, _inverse(h)), 1 << 127)

    def test_crafted(self):
        """The nonces made here have the J0 they were made for (GCM's GHASH of them)."""
        ks, j0 = bytes(range(16)), _j0(bytes(12), 3)
        h = int.from_bytes(_aes(ks, bytes(16)), "big")
        t = _cellNonce(ks, j0)
        self.assertEqual(_ghash(h, [t, _lengthBlock(16)]), j0)
        n = _updateNonce(ks, j0)
        self.assertEqual(_ghash(h, [n, b"\x01" + bytes(15), _lengthBlock(17)]), j0)


class RandomAgreementTests(unittest.TestCase):
    """Random keys, nonces and cells: the C direction's bytes are the reference's."""

    def setUp(self):
        if CDirection is None:
            raise unittest.SkipTest(_NOT_BUILT)

    @settings(max_examples=400, deadline=None)
    @given(seed=_seeds, decrypting=st.booleans(), cmd=_CMDS,
           cells=st.lists(st.binary(min_size=cgo.CELL_LEN, max_size=cgo.CELL_LEN), min_size=1, max_size=3),
           nonce=st.binary(min_size=cgo.BLOCK, max_size=cgo.BLOCK))
    def test_keysNoncesCells(self, seed, decrypting, cmd, cells, nonce):
        c, p = CDirection(seed, decrypting), cgo.PyDirection(seed, decrypting)
        for cell in cells:
            step = "decrypt" if decrypting else "encrypt"
            self.assertEqual(getattr(c, step)(cmd, cell), getattr(p, step)(cmd, cell))
            c.update(nonce)
            p.update(nonce)
            self.assertEqual((c.nonce, c.tprime), (p.nonce, p.tprime))
            nonce = cell[:cgo.BLOCK]


class CounterWrapTests(unittest.TestCase):
    """Nonces a hostile neighbour can choose so the counter wraps: still GCM's keystream."""

    def setUp(self):
        if CDirection is None:
            raise unittest.SkipTest(_NOT_BUILT)

    @settings(max_examples=60, deadline=None)
    @given(seed=_seeds, high=st.binary(min_size=12, max_size=12), before=st.integers(0, 30), cmd=_CMDS,
           body=st.binary(min_size=cgo.BODY_LEN, max_size=cgo.BODY_LEN))
    def test_cell(self, seed, high, before, cmd, body):
        """The client's PRF on a T chosen so the counter wraps within the cell's 31 blocks."""
        ks, j0 = seed[32:48], _j0(high, before)
        t = _cellNonce(ks, j0)
        c, p = CDirection(seed, True), cgo.PyDirection(seed, True)
        want = p.decrypt(cmd, t + bytes(cgo.BODY_LEN))
        self.assertEqual(want[cgo.TAG_LEN:], _counterKeystream(ks, j0, cgo.BODY_LEN))  # it does wrap
        self.assertEqual(c.decrypt(cmd, t + bytes(cgo.BODY_LEN)), want)
        self.assertEqual(c.decrypt(cmd, t + body), p.decrypt(cmd, t + body))

    @settings(max_examples=30, deadline=None)
    @given(seed=_seeds, high=st.binary(min_size=12, max_size=12), before=st.integers(0, 3),
           decrypting=st.booleans())
    def test_update(self, seed, high, before, decrypting):
        """UPDATE's 64 bytes from an N whose counter wraps within its four blocks: the same new keys."""
        ks, j0 = seed[32:48], _j0(high, before)
        n = _updateNonce(ks, j0)
        c, p = CDirection(seed, decrypting), cgo.PyDirection(seed, decrypting)
        self.assertEqual(p._ks(n + b"\x01", bytes(cgo.STATE_SEED_LEN), None)[:cgo.STATE_SEED_LEN],
                         _counterKeystream(ks, j0, cgo.STATE_SEED_LEN))  # it does wrap
        c.update(n)
        p.update(n)
        self.assertEqual(c.nonce, p.nonce)
        cell = bytes(range(256)) * 2
        step = "decrypt" if decrypting else "encrypt"
        self.assertEqual(getattr(c, step)(b"\x03", cell[:cgo.CELL_LEN]), getattr(p, step)(b"\x03", cell[:cgo.CELL_LEN]))
