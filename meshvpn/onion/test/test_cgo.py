"""
CGO relay crypto (meshvpn.onion.cgo): cells through three hops both ways,
the tagging attack it stops (and that the original scheme lets through),
forward secrecy of the per-cell key update, and MeshVPN's checked-in vectors.
"""

import hashlib
import os

from twisted.trial import unittest

from meshvpn.onion import cgo
from meshvpn.onion.cells import RelayCommand, packRelay, unpackRelay
from meshvpn.onion.relaycrypto import OriginCrypto, RelayLayer

RELAY, EARLY = b"\x03", b"\x09"


def material(i):
    return hashlib.shake_256(b"cgo test hop %d" % i).digest(cgo.KEY_MATERIAL_LEN)


def circuit(hops=3):
    origin = cgo.CgoOriginCrypto()
    relays = []
    for i in range(hops):
        origin.addHop(material(i))
        relays.append(cgo.CgoRelayLayer(material(i)))
    return origin, relays


def forward(relays, cell, cmd=RELAY, tamper=None):
    """Through the relays in order; C{tamper(index, cell)} may change a cell before a relay. @return: (index, body) or None."""
    for i, relay in enumerate(relays):
        if tamper is not None:
            cell = tamper(i, cell)
        cell, recognized = relay.forward(cmd, cell)
        if recognized is not None:
            return i, cell[cgo.TAG_LEN:]
    return None


def body(n):
    return (b"cell %d " % n).ljust(cgo.BODY_LEN, b".")


class RoundTripTests(unittest.TestCase):
    def test_forwardToEachHop(self):
        origin, relays = circuit()
        for n in range(60):
            hop = n % 3
            cell = origin.encrypt(RELAY if n % 2 else EARLY, body(n), hop)
            self.assertEqual(len(cell), 509)
            self.assertEqual(forward(relays, cell, RELAY if n % 2 else EARLY), (hop, body(n)))

    def test_backwardFromEachHop(self):
        origin, relays = circuit()
        for n in range(60):
            hop = (n * 7) % 3
            cell = relays[hop].originate(RELAY, body(n))[0]
            for i in range(hop - 1, -1, -1):
                cell = relays[i].backward(RELAY, cell)
            self.assertEqual(origin.decrypt(RELAY, cell), (hop, body(n)))

    def test_wrongCommandIsAnotherCell(self):
        """RELAY_EARLY and RELAY are part of the tweak: switching them is a modification."""
        origin, relays = circuit()
        cell = origin.encrypt(EARLY, body(1), 2)
        self.assertIsNone(forward(relays, cell, RELAY))


class TaggingTests(unittest.TestCase):
    """
    A guard XORs a pattern into a cell; a colluding exit looks for it (and
    would XOR it out).  With the original scheme the exit finds it and the
    circuit lives on; with CGO the middle turns the cell into noise, the exit
    sees nothing it can use, and the circuit is dead from then on.
    """

    PATTERN = bytes(range(1, 33))

    def tag(self, cell, at=100):
        return cell[:at] + bytes(a ^ b for a, b in zip(cell[at:at + 32], self.PATTERN)) + cell[at + 32:]

    def test_originalSchemeLetsThePatternThrough(self):
        seeds = [os.urandom(32) for _ in range(3)]
        origin = OriginCrypto()
        for s in seeds:
            origin.addHop(s)
        relays = [RelayLayer(s) for s in seeds]
        ct, _ = origin.encrypt(packRelay(RelayCommand.DATA, 1, b"secret"), 2)
        plain = relays[0].decryptForward(self.tag(ct))  # the guard tags
        plain = relays[1].decryptForward(plain)
        seen = relays[2].decryptForward(plain)
        untagged = self.tag(seen)  # the exit finds the pattern where it was put, and removes it
        self.assertIsNotNone(relays[2].recognizeForward(untagged))
        self.assertEqual(unpackRelay(untagged).data, b"secret")

    def test_cgoKillsTheCellAtTheNextHop(self):
        origin, relays = circuit()
        cell = origin.encrypt(RELAY, body(0), 2)
        seen = []

        def guardTags(i, c):
            if i == 1:  # what leaves the guard, tagged
                return self.tag(c, at=200)
            if i == 2:
                seen.append(c)
            return c

        self.assertIsNone(forward(relays, cell, tamper=guardTags))
        # The exit cannot find or remove the pattern: un-XORing it gives garbage too.
        self.assertIsNone(forward(relays[2:], self.tag(seen[0], at=200)))
        # And the circuit stays dead: the middle's chained tweak is off for every later cell.
        for n in range(1, 10):
            self.assertIsNone(forward(relays, origin.encrypt(RELAY, body(n), 2)))

    def test_anyBitAnywhere(self):
        """One flipped bit at any position of the tag or the body: the exit recognizes nothing."""
        for position in (0, 15, 16, 17, 250, 508):
            origin, relays = circuit()
            cell = bytearray(origin.encrypt(RELAY, body(0), 2))
            cell[position] ^= 0x01
            self.assertIsNone(forward(relays, bytes(cell)))

    def test_backwardTagging(self):
        """The same from the exit toward a colluding guard: the middle's layer turns the cell into noise."""
        origin, relays = circuit()
        cell = relays[2].originate(RELAY, body(0))[0]
        cell = self.tag(cell, at=300)
        cell = relays[1].backward(RELAY, cell)
        cell = relays[0].backward(RELAY, cell)
        self.assertIsNone(origin.decrypt(RELAY, cell))


class ForwardSecrecyTests(unittest.TestCase):
    def test_keysChangeEveryCell(self):
        origin, relays = circuit(1)
        before = relays[0].fwd.nonce
        cell = origin.encrypt(RELAY, body(0), 0)
        copy = cgo.CgoRelayLayer(material(0))  # what a thief with the first keys holds
        self.assertEqual(forward(relays, cell), (0, body(0)))
        self.assertNotEqual(relays[0].fwd.nonce, before)
        second = origin.encrypt(RELAY, body(1), 0)
        self.assertIsNone(forward([copy], second))  # the old keys do not open the next cell


class VectorTests(unittest.TestCase):
    """MeshVPN's CGO vectors, generated once from the fixed material above and checked in."""

    def test_vectors(self):
        origin, relays = circuit()
        out = [origin.encrypt(RELAY, body(n), n % 3) for n in range(3)]
        back = relays[2].originate(RELAY, body(9))[0]
        digest = hashlib.sha256(b"".join(out) + back).hexdigest()
        self.assertEqual(out[0][:16].hex(), FIRST_CELL_HEAD)
        self.assertEqual(digest, ALL_CELLS_SHA256)


class ImplementationTests(unittest.TestCase):
    """The C direction against the Python reference, cell by cell, with key updates."""

    def setUp(self):
        if cgo._Direction is cgo.PyDirection:
            raise unittest.SkipTest("the C part was not built")

    def test_sameBytesAsTheReference(self):
        rnd = hashlib.shake_256(b"cgo implementations").digest(64 + 400 * 510)
        for decrypting in (False, True):
            c, py = cgo._Direction(rnd[:64], decrypting), cgo.PyDirection(rnd[:64], decrypting)
            for n in range(400):
                cell = rnd[64 + n * 510:64 + n * 510 + 509]
                cmd = RELAY if rnd[64 + n * 510 + 509] & 1 else EARLY
                if n % 7 == 3:  # a key update now and then, as recognized cells make
                    c.update(cell[:16])
                    py.update(cell[:16])
                    self.assertEqual(c.nonce, py.nonce)
                one = c.decrypt(cmd, cell) if decrypting else c.encrypt(cmd, cell)
                other = py.decrypt(cmd, cell) if decrypting else py.encrypt(cmd, cell)
                self.assertEqual(one, other)
                self.assertEqual(c.tprime, py.tprime)


FIRST_CELL_HEAD = "3b7f4f66600ed1e61ca69ddb0db44330"
ALL_CELLS_SHA256 = "e0b7a6e6ea77b563fbbd2de32f70d3049ab59146cb05ba3154cb7a9b6f6789d4"
