"""
The ntor handshake against Tor's published reference values.

The handshake vector is the one Tor generated with its reference
implementation (src/test/ntor_ref.py) and that arti checks in
tor-proto's ntor tests; the KDF-RFC5869 vectors are Tor's
test_crypto_hkdf_sha256 / arti's Ntor1Kdf values.
"""

import hashlib
import hmac

from twisted.trial import unittest

from meshvpn.onion import ntor

h = bytes.fromhex

B_SK = h("4820544f4c4420594f5520444f474954204b454550532048415050454e494e47")
B_PK = h("ccbc8541904d18af08753eae967874749e6149f873de937f57f8fd903a21c471")
X_SK = h("706f6461792069207075742e2e2e2e2e2e2e2e4a454c4c59206f6e2074686973")
X_PK = h("e65dfdbef8b2635837fe2cebc086a8096eae3213e6830dc407516083d412b078")
Y_SK = h("70686520737175697272656c2e2e2e2e2e2e2e2e686173206869732067616d65")
Y_PK = h("390480a14362761d6aec1fea840f6e9e928fb2adb7b25c670be1045e35133a37")
ID = h("69546f6c64596f7541626f75745374616972732e")
CLIENT_HANDSHAKE = h(
    "69546f6c64596f7541626f75745374616972732eccbc8541904d18af08753eae967874749e6149f873de937f57f8fd903a21c471"
    "e65dfdbef8b2635837fe2cebc086a8096eae3213e6830dc407516083d412b078"
)
SERVER_HANDSHAKE = h(
    "390480a14362761d6aec1fea840f6e9e928fb2adb7b25c670be1045e35133a37"
    "1cbdf68b89923e1f85e8e18ee6e805ea333fe4849c790ffd2670bd80fec95cc8"
)
KEYS = h(
    "0c62dee7f48893370d0ef896758d35729867beef1a5121df80e00f79ed349af39b51cae125719182f19d932a667dae1a"
    "fbf2e336e6910e7822223e763afad0a13342157969dc6b79"
)
KDF_TOR = h(
    "5521492a85139a8d9107a2d5c0d9c91610d0f95989975ebee6c02a4f8d622a6cfdf9b7c7edd3832e2760ded1eac309b7"
    "6f8d66c4a3c4d6225429b3a016e3c3d45911152fc87bc2de9630c3961be9fdb9f93197ea8e5977180801926d3321fa21513e59ac"
)
KDF_BRUNNER = h(
    "a2aa9b50da7e481d30463adb8f233ff06e9571a0ca6ab6df0fb206fa34e5bc78d063fc291501beec53b36e5a0e434561200c"
    "5f8bd13e0f88b3459600b4dc21d69363e2895321c06184879d94b18f078411be70b767c7fc40679a9440a0c95ea83a23efbf"
)


def _keys(B):
    return B_SK if B == B_PK else None


class TorReferenceValues(unittest.TestCase):
    def test_publicKeys(self):
        self.assertEqual(ntor.publicKey(B_SK), B_PK)
        self.assertEqual(ntor.publicKey(X_SK), X_PK)
        self.assertEqual(ntor.publicKey(Y_SK), Y_PK)

    def test_clientMessage(self):
        state, onionskin = ntor.clientCreate(ID, B_PK, X_SK)
        self.assertEqual(onionskin, CLIENT_HANDSHAKE)

    def test_serverMessageAndAuth(self):
        keySeed, reply = ntor.serverRespond(CLIENT_HANDSHAKE, ID, _keys, Y_SK)
        self.assertEqual(reply, SERVER_HANDSHAKE)
        # AUTH is the second half of Tor's reply
        self.assertEqual(reply[32:], h("1cbdf68b89923e1f85e8e18ee6e805ea333fe4849c790ffd2670bd80fec95cc8"))

    def test_derivedKeys(self):
        state, onionskin = ntor.clientCreate(ID, B_PK, X_SK)
        serverSeed, reply = ntor.serverRespond(onionskin, ID, _keys, Y_SK)
        clientSeed = ntor.clientFinish(state, reply)
        self.assertEqual(clientSeed, serverSeed)
        self.assertEqual(ntor.kdfRfc5869(clientSeed, len(KEYS)), KEYS)

    def test_keySeedIsTheSpecFormula(self):
        """KEY_SEED = H(secret_input, t_key), secret_input = EXP(X,y)|EXP(X,b)|ID|B|X|Y|PROTOID."""
        from nacl.bindings import crypto_scalarmult

        secretInput = crypto_scalarmult(Y_SK, X_PK) + crypto_scalarmult(B_SK, X_PK) + ID + B_PK + X_PK + Y_PK + ntor.PROTOID
        keySeed = hmac.new(b"ntor-curve25519-sha256-1:key_extract", secretInput, hashlib.sha256).digest()
        self.assertEqual(ntor.serverRespond(CLIENT_HANDSHAKE, ID, _keys, Y_SK)[0], keySeed)
        self.assertEqual(ntor.kdfRfc5869(keySeed, len(KEYS)), KEYS)

    def test_kdfRfc5869(self):
        def expand(seed):
            return ntor.kdfRfc5869(hmac.new(ntor.T_KEY, seed, hashlib.sha256).digest(), 100)

        self.assertEqual(expand(b"Tor"), KDF_TOR)
        self.assertEqual(expand(b"AN ALARMING ITEM TO FIND ON YOUR CREDIT-RATING STATEMENT"), KDF_BRUNNER)


class Failures(unittest.TestCase):
    def test_roundTripWith32ByteNodeId(self):
        nodeId = bytes(range(32))
        state, onionskin = ntor.clientCreate(nodeId, B_PK)
        self.assertEqual(len(onionskin), 96)
        seed, reply = ntor.serverRespond(onionskin, nodeId, _keys)
        self.assertEqual(ntor.clientFinish(state, reply), seed)

    def test_tamperedReply(self):
        state, onionskin = ntor.clientCreate(ID, B_PK, X_SK)
        reply = bytearray(SERVER_HANDSHAKE)
        reply[60] ^= 7
        self.assertRaises(ntor.HandshakeError, ntor.clientFinish, state, bytes(reply))

    def test_unknownOnionKey(self):
        state, onionskin = ntor.clientCreate(ID, b"\x11" * 32, X_SK)
        e = self.assertRaises(ntor.HandshakeError, ntor.serverRespond, onionskin, ID, _keys)
        self.assertIn("onion key", str(e))

    def test_wrongNodeId(self):
        state, onionskin = ntor.clientCreate(b"\x01" * 20, B_PK, X_SK)
        self.assertRaises(ntor.HandshakeError, ntor.serverRespond, onionskin, ID, _keys)

    def test_smallOrderPoint(self):
        onionskin = ID + B_PK + bytes(32)
        self.assertRaises(ntor.HandshakeError, ntor.serverRespond, onionskin, ID, _keys)

    def test_wrongLength(self):
        self.assertRaises(ntor.HandshakeError, ntor.serverRespond, CLIENT_HANDSHAKE[:-1], ID, _keys)
