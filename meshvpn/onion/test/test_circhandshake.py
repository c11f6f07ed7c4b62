"""
The circuit handshakes: each kind against itself, MeshVPN's checked-in
vectors (doc/protocol.md, "Hybrid circuit handshake"), the choice a client
makes from a descriptor, and the downgrades a relay must not get away with.
"""

from twisted.trial import unittest

from meshvpn import hybridkem
from meshvpn.onion import circhandshake as ch
from meshvpn.onion import ntorv3
from meshvpn.onion.ntor import HandshakeError, publicKey
from meshvpn.test.test_hybridkem import published

h = bytes.fromhex
NODE_ID = bytes(range(32))
B_SK = h("4051daa5921cfa2a1c27b08451324919538e79e788a81b38cbed097a5dff454a")
B_PK = publicKey(B_SK)
X_SK = h("b825a3719147bcbe5fb1d0b0fcb9c09e51948048e2e3283d2ab7b45b5ef38b49")
Y_SK = h("4865a5b7689dafd978f529291c7171bc159be076b92186405d13220b80e2a053")


def findKey(B):
    return B_SK if B == B_PK else None


def requireKEM(case):
    if not hybridkem.available():
        raise unittest.SkipTest("ML-KEM-768 is not available here")


class RoundTripTests(unittest.TestCase):
    def roundTrip(self, kind, offered=(ch.TOR1,), relaySchemes=(ch.TOR1,)):
        client = ch.ClientHandshake(kind, NODE_ID, B_PK, offered)
        relayKeys, reply = ch.serverAnswer(client.htype, client.hdata, NODE_ID, findKey, relaySchemes)
        clientKeys = client.finish(reply)
        self.assertEqual(clientKeys.material, relayKeys.material)
        self.assertEqual((clientKeys.scheme, clientKeys.kind), (relayKeys.scheme, kind))
        return client, reply, clientKeys

    def test_ntor(self):
        client, reply, keys = self.roundTrip(ch.NTOR)
        self.assertEqual((len(client.hdata), len(reply), len(keys.material)), (96, 64, 96))
        self.assertFalse(keys.postQuantum)

    def test_ntor3(self):
        _, _, keys = self.roundTrip(ch.NTOR3)
        self.assertEqual(len(keys.material), ch.KEY_MATERIAL_LEN)
        self.assertFalse(keys.postQuantum)

    def test_hybrid(self):
        requireKEM(self)
        client, reply, keys = self.roundTrip(ch.HYBRID)
        self.assertTrue(keys.postQuantum)
        # ID | B | X | ek | extensions | MAC, and Y | AUTH | ct | extensions
        self.assertEqual(len(client.hdata), 128 + hybridkem.EK_LEN + 3)
        self.assertEqual(len(reply), 64 + hybridkem.CT_LEN + 3)
        self.assertLessEqual(len(client.hdata), ch.MAX_ONIONSKIN)
        self.assertLessEqual(len(reply), ch.MAX_REPLY)

    def test_freshKeysEveryTime(self):
        """Ephemeral X25519 and ML-KEM keys: two handshakes never share key material."""
        requireKEM(self)
        a = self.roundTrip(ch.HYBRID)[2].material
        b = self.roundTrip(ch.HYBRID)[2].material
        self.assertNotEqual(a, b)

    def test_schemeNegotiated(self):
        _, _, keys = self.roundTrip(ch.NTOR3, offered=("cgo", ch.TOR1), relaySchemes=("cgo", ch.TOR1))
        self.assertEqual(keys.scheme, "cgo")
        _, _, keys = self.roundTrip(ch.NTOR3, offered=("cgo", ch.TOR1), relaySchemes=(ch.TOR1,))
        self.assertEqual(keys.scheme, ch.TOR1)


class VectorTests(unittest.TestCase):
    """
    Generated once with the fixed X25519 secrets above, the published
    ML-KEM key seed and ciphertext of meshvpn/test/vectors (Wycheproof
    tcId 1: the relay's encapsulation stands in for a random one), and
    checked in; doc/protocol.md lists the same values.
    """

    def setUp(self):
        requireKEM(self)
        self.v = published()

    def test_hybridVector(self):
        v = self.v
        client = ch.ClientHandshake(ch.HYBRID, NODE_ID, B_PK, ("cgo", ch.TOR1), x=X_SK, kemSeed=v["seed"][0])
        self.assertEqual(client.hdata[64:96], publicKey(X_SK))
        relayKeys, reply = ch.serverAnswer(client.htype, client.hdata, NODE_ID, findKey, ("cgo", ch.TOR1), y=Y_SK,
                                           encapsulate=lambda ek: (v["K"][0], v["c"][0]))
        keys = client.finish(reply)
        self.assertEqual(keys.material, relayKeys.material)
        self.assertEqual(keys.scheme, "cgo")
        self.assertEqual(keys.material[:32].hex(), HYBRID_KEYS_HEAD)
        self.assertEqual(ntorv3.kdf(client.hdata + reply, b"digest", 32).hex(), HYBRID_TRANSCRIPT)

    def test_ntor3Vector(self):
        client = ch.ClientHandshake(ch.NTOR3, NODE_ID, B_PK, ("cgo", ch.TOR1), x=X_SK)
        _, reply = ch.serverAnswer(client.htype, client.hdata, NODE_ID, findKey, ("cgo", ch.TOR1), y=Y_SK)
        self.assertEqual((client.hdata + reply).hex(), NTOR3_TRANSCRIPT)
        self.assertEqual(client.finish(reply).material[:32].hex(), NTOR3_KEYS_HEAD)


class ChoiceTests(unittest.TestCase):
    def tearDown(self):
        hybridkem.setAvailableForTests(None)

    def test_descriptorDecides(self):
        hybridkem.setAvailableForTests(True)
        self.assertEqual(ch.chooseKind(None), ch.NTOR)  # an old descriptor: classic only
        self.assertEqual(ch.chooseKind(()), ch.NTOR)
        self.assertEqual(ch.chooseKind(("ntor", "ntor3")), ch.NTOR3)
        self.assertEqual(ch.chooseKind(("ntor", "ntor3", "ntor3-mlkem768")), ch.HYBRID)

    def test_fallbackWithoutKEM(self):
        """Without ML-KEM here, the client falls back to ntor v3 and the relay stops offering the hybrid."""
        hybridkem.setAvailableForTests(False)
        self.assertEqual(ch.chooseKind(("ntor", "ntor3", "ntor3-mlkem768")), ch.NTOR3)
        self.assertNotIn(ch.HYBRID, ch.supportedKinds())

    def test_relayWithoutKEMRefusesHybrid(self):
        requireKEM(self)
        client = ch.ClientHandshake(ch.HYBRID, NODE_ID, B_PK)
        hybridkem.setAvailableForTests(False)
        self.assertRaises(HandshakeError, ch.serverAnswer, client.htype, client.hdata, NODE_ID, findKey)


class DowngradeTests(unittest.TestCase):
    """A relay that advertises the hybrid handshake but answers any other way is refused."""

    def setUp(self):
        requireKEM(self)
        self.client = ch.ClientHandshake(ch.HYBRID, NODE_ID, B_PK)

    def test_classicNtorReply(self):
        """The relay answers the hybrid CREATE2 with an ntor (v1) reply."""
        bogus = ch.ClientHandshake(ch.NTOR, NODE_ID, B_PK)
        _, reply = ch.serverAnswer(bogus.htype, bogus.hdata, NODE_ID, findKey)
        self.assertRaises(HandshakeError, self.client.finish, reply)

    def test_ntor3WithoutCiphertext(self):
        """
        The relay runs the hybrid's ntor v3 honestly (it holds the onion key,
        AUTH checks) but leaves out the ML-KEM ciphertext: the keys would be
        classic only.  Refused.
        """
        t = ch.TWEAKS[ch.HYBRID]
        state, cm = ntorv3.serverReceive(t, self.client.hdata, NODE_ID, findKey, ch.VERIFICATION)
        sm = ch.encodeExtensions([(ch.EXT_CRYPTO_CHOSEN, b"\x01")])
        _, _, reply = ntorv3.serverRespond(state, sm, ch.KEY_MATERIAL_LEN)
        with self.assertRaises(HandshakeError) as caught:
            self.client.finish(reply)
        self.assertIn("downgrade refused", str(caught.exception))

    def test_classicProtoidReply(self):
        """The relay answers with a classic ntor v3 transcript: AUTH fails (the PROTOIDs differ)."""
        t = ch.TWEAKS[ch.NTOR3]
        self.assertRaises(HandshakeError, ntorv3.serverReceive, t, self.client.hdata, NODE_ID, findKey,
                          ch.VERIFICATION)

    def test_strippedCiphertextByMiddle(self):
        """Someone between client and relay changes the reply: AUTH fails."""
        _, reply = ch.serverAnswer(self.client.htype, self.client.hdata, NODE_ID, findKey)
        bad = bytearray(reply)
        bad[100] ^= 0x40
        self.assertRaises(HandshakeError, self.client.finish, bytes(bad))

    def test_schemeDowngrade(self):
        """A client that asked only for CGO refuses a relay that picks the old scheme."""
        client = ch.ClientHandshake(ch.HYBRID, NODE_ID, B_PK, ("cgo",))
        _, reply = ch.serverAnswer(client.htype, client.hdata, NODE_ID, findKey, (ch.TOR1,))
        self.assertRaises(HandshakeError, client.finish, reply)


class ExtensionTests(unittest.TestCase):
    def test_roundTrip(self):
        data = ch.encodeExtensions([(0x10, b"\x02\x01"), (0x99, b""), (0x10, b"\x01")])
        self.assertEqual(ch.decodeExtensions(data), {0x10: b"\x02\x01", 0x99: b""})

    def test_truncated(self):
        self.assertRaises(HandshakeError, ch.decodeExtensions, b"\x10")
        self.assertRaises(HandshakeError, ch.decodeExtensions, b"\x10\x05abc")


# The checked-in vectors (VectorTests).  The hybrid transcript is 2,540
# bytes, so its SHAKE-256 digest stands for it (KDF(transcript, "digest")).
HYBRID_KEYS_HEAD = "696f42fb64d230c4ff896c53399ea5b0e577f0fe783008986103d4adc02b3d20"
HYBRID_TRANSCRIPT = "cc6c16020116a1a71c2928a57ef0ac5396578fe4101bded8ab45b51ce9a82e9d"
NTOR3_TRANSCRIPT = (
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1ff8307a2bc1870b00b828bb74dbb8fd88e632a6375ab3bcd1ae"
    "706aaa8b6cdd1d252fe9ae91264c91d4ecb8501f79d0387e34ad8ca0f7c995184f7d11d5da4f46ce177591cbad8e3ba2d90e630531f73b4ca4"
    "530e65a41b7b663c32f133d3961b4aca9d214bf4814326fdab45ad5184f5518bd7fae25dc59374062698201a50a22954246dc206151d38c01d"
    "25d7183d7081b025bb4d203602010ad8ddd24d259b869d38adbaa04c"
)
NTOR3_KEYS_HEAD = "dcf749524b766ae59b89c8ce645d7c404f50edb0b77acb3f334ae58d3305d7cf"
