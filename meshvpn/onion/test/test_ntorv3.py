"""
ntor v3 (Tor proposal 332) against Tor's published vector.

The vector is Tor's test_ntor3_testvecs (src/test/test_ntor_v3.c: "Test
vectors from python implementation, confirmed with rust implementation"),
run with Tor's PROTOID; MeshVPN's own PROTOIDs are checked in test_hybrid.
"""

from twisted.trial import unittest

from meshvpn.onion import ntorv3
from meshvpn.onion.ntor import HandshakeError

h = bytes.fromhex

B_SK = h("4051daa5921cfa2a1c27b08451324919538e79e788a81b38cbed097a5dff454a")
B_PK = h("f8307a2bc1870b00b828bb74dbb8fd88e632a6375ab3bcd1ae706aaa8b6cdd1d")
RELAY_ID = h("9fad2af287ef942632833d21f946c6260c33fae6172b60006e86e4a6911753a2")
X_SK = h("b825a3719147bcbe5fb1d0b0fcb9c09e51948048e2e3283d2ab7b45b5ef38b49")
Y_SK = h("4865a5b7689dafd978f529291c7171bc159be076b92186405d13220b80e2a053")
CLIENT_MESSAGE = h("68656c6c6f20776f726c64")  # "hello world"
VERIFICATION = h("78797a7a79")  # "xyzzy"
SERVER_MESSAGE = h("486f6c61204d756e646f")  # "Hola Mundo"
CLIENT_HANDSHAKE = h(
    "9fad2af287ef942632833d21f946c6260c33fae6172b60006e86e4a6911753a2f8307a2bc1870b00b828bb74dbb8fd88e632a6375"
    "ab3bcd1ae706aaa8b6cdd1d252fe9ae91264c91d4ecb8501f79d0387e34ad8ca0f7c995184f7d11d5da4f463bebd9151fd3b47c18"
    "0abc9e044d53565f04d82bbb3bebed3d06cea65db8be9c72b68cd461942088502f67"
)
SERVER_HANDSHAKE = h(
    "4bf4814326fdab45ad5184f5518bd7fae25dc59374062698201a50a22954246d2fc5f8773ca824542bc6cf6f57c7c29bbf4e54764"
    "61ab130c5b18ab0a91276651202c3e1e87c0d32054c"
)
KEYS = h(
    "9c19b631fd94ed86a817e01f6c80b0743a43f5faebd39cfaa8b00fa8bcc65c3bfeaa403d91acbd68a821bf6ee8504602b094a2543"
    "92a07737d5662768c7a9fb1b2814bb34780eaee6e867c773e28c212ead563e98a1cd5d5b4576f5ee61c59bde025ff2851bb19b72"
    "1421694f263818e3531e43a9e4e3e2c661e2ad547d8984caa28ebecd3e4525452299be26b9185a20a90ce1eac20a91f2832d731b5"
    "4502b09749b5a2a2949292f8cfcbeffb790c7790ed935a9d251e7e336148ea83b063a5618fcff674a44581585fd22077ca0e52c59"
    "a24347a38d1a1ceebddbf238541f226b8f88d0fb9c07a1bcd2ea764bbbb5dacdaf5312a14c0b9e4f06309b0333b4a"
)
TOR = ntorv3.Tweaks(ntorv3.TOR_PROTOID)


def findKey(B):
    return B_SK if B == B_PK else None


class TorVectorTests(unittest.TestCase):
    def test_clientHandshake(self):
        _, skin = ntorv3.clientCreate(TOR, RELAY_ID, B_PK, CLIENT_MESSAGE, VERIFICATION, x=X_SK)
        self.assertEqual(skin, CLIENT_HANDSHAKE)

    def test_relayAnswer(self):
        state, cm = ntorv3.serverReceive(TOR, CLIENT_HANDSHAKE, RELAY_ID, findKey, VERIFICATION)
        self.assertEqual(cm, CLIENT_MESSAGE)
        _, keys, reply = ntorv3.serverRespond(state, SERVER_MESSAGE, 256, y=Y_SK)
        self.assertEqual(reply, SERVER_HANDSHAKE)
        self.assertEqual(keys, KEYS)

    def test_clientFinish(self):
        state, _ = ntorv3.clientCreate(TOR, RELAY_ID, B_PK, CLIENT_MESSAGE, VERIFICATION, x=X_SK)
        _, keys, sm = ntorv3.clientFinish(state, SERVER_HANDSHAKE, 256)
        self.assertEqual((keys, sm), (KEYS, SERVER_MESSAGE))


class TamperTests(unittest.TestCase):
    """Every byte of both messages is covered: one flipped bit fails the handshake."""

    def test_clientMessageTamper(self):
        for i in range(0, len(CLIENT_HANDSHAKE)):
            bad = bytearray(CLIENT_HANDSHAKE)
            bad[i] ^= 1
            self.assertRaises(HandshakeError, ntorv3.serverReceive, TOR, bytes(bad), RELAY_ID, findKey, VERIFICATION)

    def test_serverMessageTamper(self):
        for i in range(len(SERVER_HANDSHAKE)):
            state, _ = ntorv3.clientCreate(TOR, RELAY_ID, B_PK, CLIENT_MESSAGE, VERIFICATION, x=X_SK)
            bad = bytearray(SERVER_HANDSHAKE)
            bad[i] ^= 1
            self.assertRaises(HandshakeError, ntorv3.clientFinish, state, bytes(bad), 32)

    def test_verificationMismatch(self):
        self.assertRaises(HandshakeError, ntorv3.serverReceive, TOR, CLIENT_HANDSHAKE, RELAY_ID, findKey, b"other")

    def test_short(self):
        self.assertRaises(HandshakeError, ntorv3.serverReceive, TOR, CLIENT_HANDSHAKE[:127], RELAY_ID, findKey)
