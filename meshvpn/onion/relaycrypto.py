"""Layered relay crypto: one AES-128-CTR layer per hop and direction, and an
8-byte keyed BLAKE2b tag bound to the cell's position, checked only by the hop
a cell is meant for (doc/security.md, "Relay crypto").

A circuit's hops may mix this scheme with CGO (L{meshvpn.onion.cgo},
negotiated per hop in the circuit handshake; L{meshvpn.onion.cgohops} puts
it behind the same methods): L{OriginCrypto} runs the fast joined-buffer
paths below while every hop uses this scheme, and a cell at a time
through each hop's own layer otherwise.

Per hop the ntor KDF gives 96 bytes: Kf | Kb (AES-128 forward/backward) and
Mf | Mb (32-byte BLAKE2b keys).  Each direction of each hop is a stream: the
CTR keystream and the tag counter both advance per cell, so a cell that is
modified, replayed, dropped or reordered fails the tag of the hop it is for
(forgery probability 2^-64 per attempt) and the circuit is destroyed.

The tag covers bytes 8..509 of the relay payload (everything after the tag)
prefixed by the 64-bit count of cells this hop has recognized in that
direction.  A hop tries the tag only when the 2-byte "recognized" field
decrypts to zero, so a middle hop pays one AES call per passing cell.
"""

import hashlib
import hmac

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from meshvpn.onion.cells import PAYLOAD_LEN, RECOGNIZED_AT, RELAY_DATA_LEN, TAG_LEN
from meshvpn.onion.cgohops import CgoOriginView, unwrapRun
from meshvpn.onion.circhandshake import CGO, TOR1
from meshvpn.onion.ntor import kdfRfc5869

KEY_MATERIAL_LEN = 96
_ZERO_IV = bytes(16)
_ZERO2 = b"\0\0"
_RELAY = b"\x03"


def _ctr(key):
    # One stateful CTR context per direction: the keystream position is the
    # cell's position, and a fresh key per hop makes the zero IV safe (as Tor).
    return Cipher(algorithms.AES(key), modes.CTR(_ZERO_IV)).encryptor()


def _mac(key):
    return hashlib.blake2b(key=key, digest_size=TAG_LEN, person=b"meshvpn-relaytag")


class _Keys:
    __slots__ = ("kf", "kb", "mf", "mb")

    def __init__(self, keys):
        # keys: a handshake's HopKeys (meshvpn.onion.circhandshake), or a bare
        # 32-byte ntor KEY_SEED (tests and benchmarks).
        material = getattr(keys, "material", None)
        m = material[:KEY_MATERIAL_LEN] if material is not None else kdfRfc5869(keys, KEY_MATERIAL_LEN)
        self.kf, self.kb, self.mf, self.mb = m[0:16], m[16:32], m[32:64], m[64:96]


def candidates(data, size=509):
    """
    Indexes of the C{size}-byte cells of C{data} whose "recognized" field
    (bytes 8..10) is zero: the only ones worth a tag check.  Done with two
    strided slices and C{find}, not a Python loop over cells: a passing
    cell's field is zero with probability 2^-16.
    """
    a = data[RECOGNIZED_AT::size]
    b = data[RECOGNIZED_AT + 1::size]
    out = []
    k = a.find(0)
    while k != -1:
        if b[k] == 0:
            out.append(k)
        k = a.find(0, k + 1)
    return out


def _tag(base, counter, payload):
    h = base.copy()
    h.update(counter.to_bytes(8, "big"))
    h.update(memoryview(payload)[TAG_LEN:])
    return h.digest()


class _HopKeys:
    """One hop's keys as either end holds them: AES-CTR streams, tag keys, cell counters."""

    __slots__ = ("_fwd", "_back", "_mf", "_mb", "fwdCount", "backCount")

    def __init__(self, keySeed):
        k = _Keys(keySeed)
        self._fwd = _ctr(k.kf).update
        self._back = _ctr(k.kb).update
        self._mf, self._mb = _mac(k.mf), _mac(k.mb)
        self.fwdCount = self.backCount = 0


class RelayLayer(_HopKeys):
    """
    A relay's layer of one circuit: removes a forward layer, adds a backward one.
    """

    __slots__ = ()

    def decryptForward(self, payload):
        """Remove this hop's layer from a forward 509-byte payload."""
        return self._fwd(payload)

    def recognizeForward(self, plain):
        """
        @return: the cell's tag if it is meant for this hop (and count it), else C{None}.
        """
        if plain[RECOGNIZED_AT:RECOGNIZED_AT + 2] != _ZERO2:
            return None
        tag = _tag(self._mf, self.fwdCount, plain)
        if not hmac.compare_digest(tag, plain[:TAG_LEN]):
            return None
        self.fwdCount += 1
        return tag

    def encryptBackward(self, payload):
        """Add this hop's layer to a backward payload passing through."""
        return self._back(payload)

    def originateBackward(self, plain):
        """
        Tag and encrypt a payload this hop sends toward the origin.

        @return: C{(ciphertext, tag)}.
        """
        tag = _tag(self._mb, self.backCount, plain)
        self.backCount += 1
        return self._back(tag + plain[TAG_LEN:]), tag

    def originateBackwardRun(self, plains):
        """
        L{originateBackward} for several payloads in order, with one AES call.

        @return: C{(ciphertexts joined, tags)}.
        """
        mb, count = self._mb, self.backCount
        tags, parts = [], []
        for plain in plains:
            h = mb.copy()
            h.update(count.to_bytes(8, "big"))
            h.update(memoryview(plain)[TAG_LEN:])
            tag = h.digest()
            count += 1
            tags.append(tag)
            parts.append(tag)
            parts.append(plain[TAG_LEN:])
        self.backCount = count
        return self._back(b"".join(parts)), tags

    def originateBackwardCells(self, plains, head):
        """
        L{originateBackwardRun}, each cell behind C{head} (the previous hop's
        circuit id and command), ready for its channel.

        @return: C{(cells, tags)}.
        """
        data, tags = self.originateBackwardRun(plains)
        return [head + data[k:k + PAYLOAD_LEN] for k in range(0, len(data), PAYLOAD_LEN)], tags


class OriginHop(_HopKeys):
    """
    The origin's copy of one hop's keys: adds forward layers, removes backward ones.
    """

    __slots__ = ()
    maxData = RELAY_DATA_LEN
    scheme = TOR1

    # What OriginCrypto calls on a circuit that mixes schemes (the CGO hop's are CgoOriginView's).

    def sealFor(self, cmd, plain):
        payload, tag = self.seal(plain)
        return self._fwd(payload), tag

    def wrap(self, cmd, payload):
        return self._fwd(payload)

    def unwrap(self, cmd, payload):
        plain = self._back(payload)
        if plain[8:10] != _ZERO2:
            return plain, None
        return plain, self.recognizeBackward(plain)

    def seal(self, plain):
        """
        Tag a payload for this hop (not yet encrypted).

        @return: C{(payload, tag)}.
        """
        tag = _tag(self._mf, self.fwdCount, plain)
        self.fwdCount += 1
        return tag + plain[TAG_LEN:], tag

    def encryptForward(self, payload):
        return self._fwd(payload)

    def decryptBackward(self, payload):
        return self._back(payload)

    def recognizeBackward(self, plain):
        """@return: the tag if this hop originated C{plain}, else C{None}."""
        if plain[RECOGNIZED_AT:RECOGNIZED_AT + 2] != _ZERO2:
            return None
        tag = _tag(self._mb, self.backCount, plain)
        if not hmac.compare_digest(tag, plain[:TAG_LEN]):
            return None
        self.backCount += 1
        return tag


class OriginCrypto:
    """
    All of a circuit's hops, guard first, at the origin.
    """

    def __init__(self):
        self.hops = []
        self.tor1Only = True  # every hop uses this module's scheme: the joined-buffer paths apply

    def addHop(self, keys):
        """
        @param keys: a handshake's L{meshvpn.onion.circhandshake.HopKeys}
            (its C{scheme} picks the hop's relay crypto), or a bare ntor
            KEY_SEED (this scheme).
        """
        if getattr(keys, "scheme", None) == CGO:
            self.hops.append(CgoOriginView(keys.material))
            self.tor1Only = False
        else:
            self.hops.append(OriginHop(keys))

    def truncate(self, n):
        """Keep only the first C{n} hops."""
        del self.hops[n:]
        self.tor1Only = all(type(hop) is OriginHop for hop in self.hops)

    def maxData(self, hopIndex=-1):
        """Data bytes one relay message to hop C{hopIndex} carries (its scheme's)."""
        return self.hops[hopIndex].maxData

    @property
    def schemes(self):
        """Per hop, guard first: its relay crypto scheme."""
        return [hop.scheme for hop in self.hops]

    def encrypt(self, plain, hopIndex, cmd=_RELAY):
        """
        Tag C{plain} for hop C{hopIndex} and add its layer and every layer
        before it; C{cmd} is the cell command byte (CGO's tweak covers it).

        @return: C{(ciphertext, tag)}.
        """
        hops = self.hops
        if not self.tor1Only:
            payload, tag = hops[hopIndex].sealFor(cmd, plain)
            for i in range(hopIndex - 1, -1, -1):
                payload = hops[i].wrap(cmd, payload)
            return payload, tag
        payload, tag = hops[hopIndex].seal(plain)
        for i in range(hopIndex, -1, -1):
            payload = hops[i].encryptForward(payload)
        return payload, tag

    def encryptRun(self, plains, hopIndex):
        """
        L{encrypt} for several payloads for hop C{hopIndex}, in order: a tag
        per cell, then one AES call per layer for all of them.

        @return: C{(ciphertexts joined, tags)}.
        """
        if not self.tor1Only:
            # CGO chains every cell to the one before: a cell at a time.
            out = [self.encrypt(plain, hopIndex) for plain in plains]
            return b"".join([ct for ct, _ in out]), [tag for _, tag in out]
        hop = self.hops[hopIndex]
        mf, count = hop._mf, hop.fwdCount
        tags, parts = [], []
        for plain in plains:
            h = mf.copy()
            h.update(count.to_bytes(8, "big"))
            h.update(memoryview(plain)[TAG_LEN:])
            tag = h.digest()
            count += 1
            tags.append(tag)
            parts.append(tag)
            parts.append(plain[TAG_LEN:])
        hop.fwdCount = count
        data = b"".join(parts)
        for i in range(hopIndex, -1, -1):
            data = self.hops[i]._fwd(data)
        return data, tags

    def decryptRun(self, payloads):
        """
        L{decrypt} for consecutive cells of this circuit: one AES call per
        hop for all of them, the tag tried only where "recognized" is zero
        (or, at the last hop, for every cell: they are all meant for it).

        @return: a list with, for each payload in order, C{(hopIndex, plain,
            tag)} or C{None} (recognized by no hop).
        """
        n = len(payloads)
        if not self.tor1Only:
            if all(type(hop) is CgoOriginView for hop in self.hops):
                out = unwrapRun(payloads, self.hops)
                return out + [None] * (n - len(out))
            out = [None] * n
            for k, payload in enumerate(payloads):
                out[k] = self.decrypt(payload)
                if out[k] is None:
                    break  # CGO's chain is broken from here: the circuit goes
            return out
        hops = self.hops
        last = len(hops) - 1
        out = [None] * n
        left = list(range(n))  # which payloads are still travelling
        data = b"".join(payloads)
        for h, hop in enumerate(hops):
            data = hop._back(data)
            if h < last:
                found = candidates(data)
                if not found:
                    continue
                keep, parts = [], []
                found = set(found)
                for k, i in enumerate(left):
                    plain = data[k * 509:(k + 1) * 509]
                    if k in found:
                        tag = hop.recognizeBackward(plain)
                        if tag is not None:
                            out[i] = (h, plain, tag)
                            continue
                    keep.append(i)
                    parts.append(plain)
                left, data = keep, b"".join(parts)
                if not left:
                    break
            else:
                # recognizeBackward inlined: this loop runs once per cell the
                # origin receives; the MAC reads the joined buffer in place.
                view = memoryview(data)
                base, count = hop._mb, hop.backCount
                compare = hmac.compare_digest
                for k, i in enumerate(left):
                    at = k * 509
                    plain = data[at:at + 509]
                    if plain[8:10] != _ZERO2:
                        break
                    m = base.copy()
                    m.update(count.to_bytes(8, "big"))
                    m.update(view[at + TAG_LEN:at + 509])
                    tag = m.digest()
                    if not compare(tag, plain[:TAG_LEN]):
                        break
                    count += 1
                    out[i] = (h, plain, tag)
                hop.backCount = count
        return out

    def decrypt(self, payload):
        """
        Remove backward layers until a hop recognizes the cell.

        @return: C{(hopIndex, plain, tag)}, or C{None} if no hop did: the cell
            was modified, replayed or reordered, and the circuit must go.
        """
        if not self.tor1Only:
            for i, hop in enumerate(self.hops):
                payload, tag = hop.unwrap(_RELAY, payload)
                if tag is not None:
                    return i, payload, tag
            return None
        # Inlined hop.decryptBackward / recognizeBackward: this runs for
        # every cell the origin receives, and the tag is tried only where
        # "recognized" decrypts to zero.
        i = 0
        for hop in self.hops:
            payload = hop._back(payload)
            if payload[8:10] == _ZERO2:
                tag = hop.recognizeBackward(payload)
                if tag is not None:
                    return i, payload, tag
            i += 1
        return None
