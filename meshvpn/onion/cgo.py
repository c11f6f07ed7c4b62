"""Counter Galois Onion (CGO) relay crypto, MeshVPN's instantiation: tagging-resistant layers.

With the original layered AES-CTR (L{meshvpn.onion.relaycrypto}) a guard
can XOR a pattern into a cell and a colluding exit can look for it (and
XOR it out again): CTR layers carry the change through untouched.  CGO
(Tor proposal 359, after Degabriele, Melloni, Muench and Stam) makes each
relay's layer a wide-block, tweakable permutation (UIV+) chained from cell
to cell: a change to any bit of a cell makes the next relay's output for it
random, and, through the chained tweak, every later cell too.  The circuit
dies at the next hop instead of the pattern arriving (the test:
meshvpn/onion/test/test_cgo.py).  Keys and nonce are replaced after every
cell an end originates or recognizes, so a key taken from a relay later
does not decrypt earlier cells.

The construction is proposal 359's (ET, PRF, UIV+, the per-direction state
K, N, T' and its update); the primitives differ, because CPython exposes no
POLYVAL with a caller's key and a pure-Python one costs about 60 us a
cell (doc/protocol.md, "CGO relay crypto"):

  UH(KU, x)        = the AES-128-GCM tag of (key KU, nonce 0, no plaintext, AAD x):
                     GHASH under a secret key plus a constant, an AXU hash as POLYVAL is
  ET((KB,KU), T, X) = UH(KU,T) ^ AES_KB(X ^ UH(KU,T))                  (LRW2, as CGO)
  PRF(KS, T, t)    = the AES-128-GCM(KS) keystream for the 16-byte nonce T, from
                     block 0 (t = 0) or block 31 (t = 1).  GCM turns a nonce that is
                     not 96 bits into its first counter block through GHASH, so this
                     is CTR_KS(UH(T)), CGO's PRF, with the hash key AES_KS(0)
  ENC_UIV((J,S), H, (X_L, X_R)) = (Y_L = ET(J, H | X_R, X_L),  Y_R = X_R ^ PRF(S, Y_L, 0))
  UPDATE: (J', S', N') = PRF(S, N, 1), 64 bytes

Cell payload (509 bytes): T (16) | C (493).  Per direction the seed is
KB | KU | KS | N (64 bytes); a hop's material is forward then backward.  A relay's layer always runs
ENC_UIV, the client DEC_UIV; H is the previous cell's T' and the cell
command (RELAY or RELAY_EARLY).  An end recognizes a cell when, after its
layer, T equals its nonce N.  Proposal 359's published vectors do not
apply to these primitives; MeshVPN's own are checked in
(meshvpn/onion/test/test_cgo.py).
"""

from hmac import compare_digest

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

BLOCK = 16
TAG_LEN = 16
BODY_LEN = 493
CELL_LEN = TAG_LEN + BODY_LEN  # the 509-byte cell payload
STATE_SEED_LEN = 4 * BLOCK  # KB | KU | KS | N
KEY_MATERIAL_LEN = 2 * STATE_SEED_LEN  # forward, then backward
_ZERO12 = bytes(12)
_N1_OFFSET = 31 * BLOCK
_ZEROS = bytes(_N1_OFFSET + STATE_SEED_LEN)


_from = int.from_bytes


def _lrw(block, xl, u):
    """u ^ block(xl ^ u): LRW2's two masks with one conversion of u."""
    m = _from(u, "little")
    return (_from(block((_from(xl, "little") ^ m).to_bytes(16, "little")), "little") ^ m).to_bytes(16, "little")


class _Direction:
    """One direction of one hop's CGO layer: the keys (J, S), the nonce N and the chained tag T'."""

    __slots__ = ("_kbEnc", "_kbDec", "_ku", "_ks", "nonce", "tprime")

    def __init__(self, seed):
        self._rekey(seed)
        self.tprime = bytes(BLOCK)

    def _rekey(self, seed):
        kb, ku, ks, n = (seed[i:i + BLOCK] for i in range(0, STATE_SEED_LEN, BLOCK))
        self._kbEnc = Cipher(algorithms.AES(kb), modes.ECB()).encryptor().update
        self._kbDec = Cipher(algorithms.AES(kb), modes.ECB()).decryptor().update
        self._ku = AESGCM(ku).encrypt
        self._ks = AESGCM(ks).encrypt
        self.nonce = n

    # the building blocks

    def _prf0(self, tweak, data):
        """C{data} ^ PRF(S, tweak, 0)."""
        return self._ks(tweak, data, None)[:-16]

    def update(self, nonce):
        """UPDATE_UIV with C{nonce}: new keys and a new nonce; the old ones are gone."""
        stream = self._ks(nonce, _ZEROS, None)
        self._rekey(stream[_N1_OFFSET:_N1_OFFSET + STATE_SEED_LEN])

    def encrypt(self, cmd, cell):
        """ENC_UIV with H = T' | cmd (what a relay's layer does); T' becomes the output's T."""
        xl, xr = cell[:TAG_LEN], cell[TAG_LEN:]
        yl = _lrw(self._kbEnc, xl, self._ku(_ZERO12, b"", self.tprime + cmd + xr))
        self.tprime = yl
        return yl + self._prf0(yl, xr)

    def decrypt(self, cmd, cell):
        """DEC_UIV with H = T' | cmd (what the client does); T' becomes the input's T."""
        yl = cell[:TAG_LEN]
        xr = self._prf0(yl, cell[TAG_LEN:])
        xl = _lrw(self._kbDec, yl, self._ku(_ZERO12, b"", self.tprime + cmd + xr))
        self.tprime = yl
        return xl + xr


def _split(material):
    if len(material) < KEY_MATERIAL_LEN:
        raise ValueError(f"CGO needs {KEY_MATERIAL_LEN} bytes of key material")
    return _Direction(material[:STATE_SEED_LEN]), _Direction(material[STATE_SEED_LEN:KEY_MATERIAL_LEN])


class CgoRelayLayer:
    """A relay's CGO layer of one circuit (its forward and backward directions)."""

    __slots__ = ("fwd", "back")

    def __init__(self, material):
        self.fwd, self.back = _split(material)

    def forward(self, cmd, cell):
        """
        A cell away from the origin: add this relay's layer.

        @return: C{(cell, recognized)}; a recognized cell's body is C{cell[16:]}.
        """
        out = self.fwd.encrypt(cmd, cell)
        if compare_digest(out[:TAG_LEN], self.fwd.nonce):
            self.fwd.update(self.fwd.nonce)
            return out, True
        return out, False

    def backward(self, cmd, cell):
        """A cell toward the origin passing through: add this relay's layer."""
        return self.back.encrypt(cmd, cell)

    def originate(self, cmd, body):
        """A cell this relay sends toward the origin (C{body}: 493 bytes)."""
        out = self.back.encrypt(cmd, self.back.nonce + body)
        self.back.update(out[:TAG_LEN])
        return out


class CgoOriginHop:
    """The origin's copy of one hop's CGO layer."""

    __slots__ = ("fwd", "back")

    def __init__(self, material):
        self.fwd, self.back = _split(material)


class CgoOriginCrypto:
    """All of a circuit's CGO hops at the origin, guard first."""

    def __init__(self):
        self.hops = []

    def addHop(self, material):
        self.hops.append(CgoOriginHop(material))

    def encrypt(self, cmd, body, hopIndex):
        """A 493-byte C{body} for hop C{hopIndex}: originate for it, then every earlier hop's layer."""
        target = self.hops[hopIndex].fwd
        cell = target.decrypt(cmd, target.nonce + body)
        target.update(target.nonce)
        for i in range(hopIndex - 1, -1, -1):
            cell = self.hops[i].fwd.decrypt(cmd, cell)
        return cell

    def decrypt(self, cmd, cell):
        """
        Remove backward layers until a hop recognizes the cell.

        @return: C{(hopIndex, body)}, or C{None}: nobody sent it, the circuit must go.
        """
        for i, hop in enumerate(self.hops):
            back = hop.back
            tag = cell[:TAG_LEN]
            cell = back.decrypt(cmd, cell)
            if compare_digest(cell[:TAG_LEN], back.nonce):
                back.update(tag)
                return i, cell[TAG_LEN:]
        return None
