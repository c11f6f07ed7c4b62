"""Counter Galois Onion (CGO) relay crypto, MeshVPN's instantiation: tagging-resistant layers.

With the original layered AES-CTR (L{meshvpn.onion.relaycrypto}) a guard
can XOR a pattern into a cell and a colluding exit can look for it (and
XOR it out again): CTR layers carry the change through untouched.  CGO
(Tor proposal 359, after Degabriele, Melloni, Muench and Stam) makes each
relay's layer a wide-block, tweakable permutation (UIV+) chained from cell
to cell: a change to any bit of a cell makes the next relay's output for it
random, and, through the chained tweak, every later cell too.  The circuit
dies at the next hop instead of the pattern arriving (the tests:
meshvpn/onion/test/test_cgo.py in memory, meshvpn/onion/test/test_cgocircuit.py
through real relay code).  Keys and nonce are replaced after every cell an
end originates or recognizes, so a key taken from a relay later does not
decrypt earlier cells.

The construction is proposal 359's (ET, PRF, UIV+, the per-direction state
K, N, T' and its update); the primitives differ, because CPython exposes no
POLYVAL with a caller's key and a pure-Python one costs about 60 us a
cell (doc/protocol.md, "CGO relay crypto"):

  UH(KU, V, x)     = the AES-128-GCM(KU) tag of (nonce V, no plaintext, AAD x):
                     GHASH of x under a secret key plus AES_KU(J0(V)), a
                     Carter-Wegman hash of x with nonce V
  ET((KB,KU), (V, x), X) = UH ^ AES_KB(X ^ UH)                          (LRW2, as CGO)
  PRF(KS, T, 0)    = the AES-128-GCM(KS) keystream for the 16-byte nonce T.  GCM turns a
                     nonce that is not 96 bits into its first counter block through
                     GHASH, so this is CTR_KS(GHASH(T)), CGO's PRF with the hash key AES_KS(0)
  PRF(KS, N, 1)    = the same keystream for the 17-byte nonce N | 0x01 (another J0)
  ENC_UIV((J,S), H, (X_L, X_R)) = (Y_L = ET(J, (H, X_R), X_L),  Y_R = X_R ^ PRF(S, Y_L, 0))
  UPDATE: (J', S', N') = PRF(S, N, 1), 64 bytes

H, the tweak's head, is the previous cell's T' and the cell command (RELAY
or RELAY_EARLY), 17 bytes: it is GCM's nonce in UH, so no cell-sized
buffer is built per cell.

Cell payload (509 bytes): T (16) | C (493).  Per direction the seed is
KB | KU | KS | N (64 bytes); a hop's material is forward then backward.  A relay's layer always runs
ENC_UIV, the client DEC_UIV, so each direction keys only the AES direction
it uses.  An end recognizes a cell when, after its layer, T equals its
nonce N.  A cell's tag (what an authenticated SENDME echoes) is its T on
the wire side of the layer of the end that originated it: the relay's
output T backward, the T entering the relay's layer forward; both ends
know it only by having the cell.  Proposal 359's published vectors do not
apply to these primitives; MeshVPN's own are checked in
(meshvpn/onion/test/test_cgo.py).

A direction's state and its per-cell steps run in C over OpenSSL when that
was built (meshvpn/onion/_cgodirection.c: re-keyed in place, one call per
cell or per run); L{PyDirection} and L{pyUnwrapRun} here are the reference
it must match byte for byte, and what runs without it.
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
PAYLOAD_LEN = 509  # a common-layout relay payload (meshvpn.onion.cells), what originateRun's `at` reads
_LEN_AT = 3  # the data length's offset in a body (command 1, stream 2)
_LINK_HEAD = 5  # circuit id and command, before a cell's payload on the link
LINK_CELL = _LINK_HEAD + CELL_LEN  # a whole cell as the link hands it over (meshvpn.link.cellsize)
_ECB = modes.ECB()
_UPDATE = b"\x01"
_SEED_ZEROS = bytes(STATE_SEED_LEN)

_from = int.from_bytes


class PyDirection:
    """
    One direction of one hop's CGO layer: the keys (J, S), the nonce N and
    the chained tag T'.  C{decrypting}: this end runs DEC_UIV (the client).

    The reference: C{_Direction} is the C one (meshvpn/onion/_cgodirection.c,
    the same bytes, re-keyed in place) when it was built, else this.
    """

    __slots__ = ("_kb", "_ku", "_ks", "nonce", "tprime", "_decrypting")

    def __init__(self, seed, decrypting):
        self._decrypting = decrypting
        self._rekey(seed)
        self.tprime = bytes(BLOCK)

    def _rekey(self, seed):
        cipher = Cipher(algorithms.AES(seed[:16]), _ECB)
        self._kb = (cipher.decryptor() if self._decrypting else cipher.encryptor()).update
        self._ku = AESGCM(seed[16:32]).encrypt
        self._ks = AESGCM(seed[32:48]).encrypt
        self.nonce = seed[48:64]

    def update(self, nonce):
        """UPDATE_UIV with C{nonce}: new keys and a new nonce; the old ones are gone."""
        self._rekey(self._ks(nonce + _UPDATE, _SEED_ZEROS, None))

    def encrypt(self, cmd, cell):
        """ENC_UIV with H = T' | cmd (what a relay's layer does); T' becomes the output's T."""
        xr = memoryview(cell)[TAG_LEN:]
        m = _from(self._ku(self.tprime + cmd, b"", xr), "little")
        yl = (_from(self._kb((_from(cell[:TAG_LEN], "little") ^ m).to_bytes(16, "little")), "little")
              ^ m).to_bytes(16, "little")
        self.tprime = yl
        return yl + self._ks(yl, xr, None)[:BODY_LEN]

    def decrypt(self, cmd, cell):
        """DEC_UIV with H = T' | cmd (what the client does); T' becomes the input's T."""
        yl = cell[:TAG_LEN]
        xr = self._ks(yl, cell[TAG_LEN:], None)[:BODY_LEN]
        m = _from(self._ku(self.tprime + cmd, b"", xr), "little")
        self.tprime = yl
        return (_from(self._kb((_from(yl, "little") ^ m).to_bytes(16, "little")), "little")
                ^ m).to_bytes(16, "little") + xr

    def layer(self, cmd, cell):
        """
        This direction's layer on a cell passing it, and recognition: when
        the output's T is N, the cell is for this end and the keys update
        (the client's with the T the cell arrived with, a relay's with N).

        @return: C{(out, tag)}: C{tag} is C{None}, or the T the cell arrived with.
        """
        tag = cell[:TAG_LEN]
        out = self.decrypt(cmd, cell) if self._decrypting else self.encrypt(cmd, cell)
        if compare_digest(out[:TAG_LEN], self.nonce):
            self.update(bytes(tag) if self._decrypting else self.nonce)
            return out, bytes(tag)
        return out, None

    def originate(self, cmd, body):
        """
        A 493-byte C{body} this end sends: T = N, the layer, then the update
        (the client's with N, a relay's with the output's T).

        @return: C{(cell, tag)}: C{tag} is the output's T.
        """
        nonce = self.nonce
        if self._decrypting:
            out = self.decrypt(cmd, nonce + body)
            self.update(nonce)
        else:
            out = self.encrypt(cmd, nonce + body)
            self.update(out[:TAG_LEN])
        return out, out[:TAG_LEN]

    def originateRun(self, cmd, bodies, head, at=None, maxData=None):
        """
        L{originate} for several bodies in order. @return: C{([head + cell, ...], [tag, ...])}.

        With C{at}, each item is a common-layout relay payload (L{PAYLOAD_LEN}
        bytes) whose body starts at byte C{at}, its data length at most
        C{maxData}; every item is checked before any is sealed.

        @raise ValueError: an item of the wrong size.
        @raise RelayLengthError: an item's data length is over C{maxData}.
        """
        if at is not None:
            for plain in bodies:
                if len(plain) != PAYLOAD_LEN:
                    raise ValueError(f"relay payload of {len(plain)} bytes, expected {PAYLOAD_LEN}")
                if ((plain[at + _LEN_AT] << 8) | plain[at + _LEN_AT + 1]) > maxData:
                    raise RelayLengthError(f"relay data over {maxData} bytes on a CGO hop")
            bodies = [plain[at:at + BODY_LEN] for plain in bodies]
        cells, tags = [], []
        for body in bodies:
            cell, tag = self.originate(cmd, body)
            cells.append(head + cell)
            tags.append(tag)
        return cells, tags

    def originateData(self, cmd, relayCmd, streamId, chunks, maxData, head):
        """
        L{originateRun} for one relay message per chunk: each body is
        C{relayCmd} 1 | C{streamId} 2 | length 2 | chunk | zeros.

        @raise RelayLengthError: a chunk is over C{maxData} bytes (nothing sealed).
        """
        if not (0 <= relayCmd <= 0xff and 0 <= streamId <= 0xffff and 0 <= maxData <= BODY_LEN - _LEN_AT - 2):
            raise ValueError("relay command, stream id or data bound out of range")
        if any(len(chunk) > maxData for chunk in chunks):
            raise RelayLengthError(f"relay data over {maxData} bytes on a CGO hop")
        room = BODY_LEN - _LEN_AT - 2
        bodies = [bytes((relayCmd, streamId >> 8, streamId & 0xff, len(chunk) >> 8, len(chunk) & 0xff))
                  + bytes(chunk) + bytes(room - len(chunk)) for chunk in chunks]
        return self.originateRun(cmd, bodies, head)

    def passRun(self, cmd, payloads, head):
        """Cells passing through, none for this end: C{[head + layer(payload), ...]}."""
        step = self.decrypt if self._decrypting else self.encrypt
        return [head + step(cmd, payload) for payload in payloads]

    def passCells(self, cmd, cells, start, stop, head):
        """
        L{passRun} on the payloads of the link cells C{cells[start:stop]}.

        @raise ValueError: a cell is not L{LINK_CELL} bytes (the ones before it went through the layer).
        """
        _checkRun(cells, start, stop)
        step = self.decrypt if self._decrypting else self.encrypt
        out = []
        for cell in cells[start:stop]:
            out.append(head + step(cmd, _payload(cell)))
        return out

    def forwardCells(self, cmd, cells, start, stop, head):
        """
        L{layer} on the payloads of the link cells C{cells[start:stop]} in
        order, up to and including the first one for this end.

        @return: C{(next, [head + out, ...], mine)}: the cells before that one,
            to pass on; C{mine} is C{None} or that one's C{(out, tag)}; C{next}
            the index after the last cell taken.
        """
        _checkRun(cells, start, stop)
        out = []
        i = start
        while i < stop:
            payload = _payload(cells[i])
            i += 1
            plain, tag = self.layer(cmd, payload)
            if tag is not None:
                return i, out, (plain, tag)
            out.append(head + plain)
        return i, out, None


class PyRelayLengthError(ValueError):
    """A relay payload's data length is over the CGO bound (C{RelayLengthError}, what callers catch)."""


def pyUnwrapRun(cmd, payloads, directions, pad, maxData=None):
    """
    The client's backward layers (C{directions}, guard first) on each cell
    until one recognizes it.

    @return: C{[(hop index, pad + body, tag), ...]}; a cell no layer
        recognizes ends the list with C{None} (the chain is broken from it on).
    @raise RelayLengthError: C{maxData} given and a recognized cell's data
        length is over it (raised once the whole run went through the layers).
    """
    out = []
    tooLong = False
    for cell in payloads:
        for i, direction in enumerate(directions):
            cell, tag = direction.layer(cmd, cell)
            if tag is not None:
                if maxData is not None and ((cell[TAG_LEN + _LEN_AT] << 8) | cell[TAG_LEN + _LEN_AT + 1]) > maxData:
                    tooLong = True
                out.append((i, pad + cell[TAG_LEN:], tag))
                break
        else:
            out.append(None)
            break
    if tooLong:
        raise RelayLengthError(f"relay length over {maxData} on a CGO hop")
    return out


def _checkRun(cells, start, stop):
    if not 0 <= start <= stop <= len(cells):
        raise IndexError("run outside the cells")


def _payload(cell):
    """A whole link cell's payload. @raise ValueError: not L{LINK_CELL} bytes."""
    if len(cell) != LINK_CELL:
        raise ValueError(f"a run holds whole {LINK_CELL}-byte cells only")
    return cell[_LINK_HEAD:]


def pyRunEnd(cells, start):
    """
    The end of the run that starts at C{cells[start]}: the whole link cells
    from there on with its circuit id and command (its first 5 bytes).
    """
    if not 0 <= start < len(cells):
        raise IndexError("run start outside the cells")
    first = cells[start]
    if len(first) != LINK_CELL:
        raise ValueError(f"a run starts with a whole {LINK_CELL}-byte cell")
    head = first[:_LINK_HEAD]
    j = start + 1
    while j < len(cells) and len(cells[j]) == LINK_CELL and cells[j][:_LINK_HEAD] == head:
        j += 1
    return j


try:
    from meshvpn.onion._cgodirection import (
        Direction as _Direction, RelayLengthError, runEnd, unwrapRun as _unwrapRun,
    )
except ImportError:  # built without a C compiler or OpenSSL's headers
    _Direction, _unwrapRun, runEnd, RelayLengthError = PyDirection, pyUnwrapRun, pyRunEnd, PyRelayLengthError


def unwrapRun(cmd, payloads, directions, pad, maxData=None):
    """L{pyUnwrapRun}, in C when the directions are (they are built together)."""
    if _unwrapRun is not pyUnwrapRun and directions and type(directions[0]) is not _Direction:
        return pyUnwrapRun(cmd, payloads, directions, pad, maxData)  # a test swapped in the Python reference
    if maxData is None:
        return _unwrapRun(cmd, payloads, directions, pad)
    return _unwrapRun(cmd, payloads, directions, pad, maxData)


def _split(material, decrypting):
    if len(material) < KEY_MATERIAL_LEN:
        raise ValueError(f"CGO needs {KEY_MATERIAL_LEN} bytes of key material")
    return (_Direction(material[:STATE_SEED_LEN], decrypting),
            _Direction(material[STATE_SEED_LEN:KEY_MATERIAL_LEN], decrypting))


class CgoRelayLayer:
    """A relay's CGO layer of one circuit (its forward and backward directions)."""

    __slots__ = ("fwd", "back")

    def __init__(self, material):
        self.fwd, self.back = _split(material, False)

    def forward(self, cmd, cell):
        """
        A cell away from the origin: add this relay's layer.

        @return: C{(cell, tag)}: C{tag} is C{None} unless the cell is for
            this hop; then its body is C{cell[16:]}.
        """
        return self.fwd.layer(cmd, cell)

    def backward(self, cmd, cell):
        """A cell toward the origin passing through: add this relay's layer."""
        return self.back.encrypt(cmd, cell)

    def originate(self, cmd, body):
        """
        A cell this relay sends toward the origin (C{body}: 493 bytes).

        @return: C{(cell, tag)}.
        """
        return self.back.originate(cmd, body)


class CgoOriginHop:
    """The origin's copy of one hop's CGO layer."""

    __slots__ = ("fwd", "back")

    def __init__(self, material):
        self.fwd, self.back = _split(material, True)

    def seal(self, cmd, body):
        """
        A 493-byte C{body} for this hop, with this hop's layer.

        @return: C{(cell, tag)}.
        """
        return self.fwd.originate(cmd, body)

    def wrap(self, cmd, cell):
        """This hop's layer on a cell for a later hop."""
        return self.fwd.decrypt(cmd, cell)

    def unwrap(self, cmd, cell):
        """
        This hop's layer off a cell from the relays.

        @return: C{(cell, tag)}: C{tag} is C{None} unless this hop sent it;
            then its body is C{cell[16:]}.
        """
        return self.back.layer(cmd, cell)


class CgoOriginCrypto:
    """All of a circuit's CGO hops at the origin, guard first (tests and the benchmark)."""

    def __init__(self):
        self.hops = []

    def addHop(self, material):
        self.hops.append(CgoOriginHop(material))

    def encrypt(self, cmd, body, hopIndex):
        """A 493-byte C{body} for hop C{hopIndex}: originate for it, then every earlier hop's layer."""
        cell, _ = self.hops[hopIndex].seal(cmd, body)
        for i in range(hopIndex - 1, -1, -1):
            cell = self.hops[i].wrap(cmd, cell)
        return cell

    def decrypt(self, cmd, cell):
        """
        Remove backward layers until a hop recognizes the cell.

        @return: C{(hopIndex, body)}, or C{None}: nobody sent it, the circuit must go.
        """
        for i, hop in enumerate(self.hops):
            cell, tag = hop.unwrap(cmd, cell)
            if tag is not None:
                return i, cell[TAG_LEN:]
        return None
