"""RFC 9474 blind RSA: the RFC's own test vectors (Appendix A), then the properties tokens rely on.

C{rfc9474_vectors.json} holds the four vectors of RFC 9474 Appendix A as
the RFC prints them (hex strings; C{msg_prefix} empty for the
deterministic variants).
"""

import json
import os

from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings, strategies as st
from twisted.trial import unittest

from meshvpn.payments import blindrsa
from meshvpn.payments.blindrsa import BlindSignatureError, BlindSigner

HERE = os.path.dirname(__file__)


def loadVectors():
    with open(os.path.join(HERE, "rfc9474_vectors.json")) as f:
        return json.load(f)


def keyFromVector(v):
    p, q, d, e, n = (int(v[k], 16) for k in ("p", "q", "d", "e", "n"))
    numbers = rsa.RSAPrivateNumbers(
        p, q, d, rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q), rsa.rsa_crt_iqmp(p, q), rsa.RSAPublicNumbers(e, n)
    )
    return numbers.private_key()


_KEY = None


def smallKey():
    """One 2048-bit key for the property tests (generation is the slow part)."""
    global _KEY
    if _KEY is None:
        _KEY = rsa.generate_private_key(65537, 2048)
    return _KEY


class RFC9474VectorTests(unittest.TestCase):
    """Every step of every named variant reproduces Appendix A byte for byte."""

    def test_allFourVariants(self):
        vectors = loadVectors()
        self.assertEqual(sorted(v["name"] for v in vectors), sorted(blindrsa.VARIANTS))
        for v in vectors:
            self.checkVector(v)  # each assertion names the variant

    def checkVector(self, v):
        variant = blindrsa.VARIANTS[v["name"]]
        key = keyFromVector(v)
        pub = key.public_key()
        n = int(v["n"], 16)
        msg = bytes.fromhex(v["msg"])
        prefix = bytes.fromhex(v["msg_prefix"]) or None
        prepared = blindrsa.prepare(msg, variant, prefix=prefix)
        self.assertEqual(prepared.hex(), v["prepared_msg"], v["name"])
        salt = bytes.fromhex(v["salt"])
        self.assertEqual(len(salt), variant.saltLength)
        encoded = blindrsa.emsaPssEncode(prepared, n.bit_length() - 1, salt)
        self.assertEqual(encoded.hex(), v["encoded_msg"], v["name"])
        inv = int(v["inv"], 16)
        r = pow(inv, -1, n)
        blinded, gotInv = blindrsa.blind(pub, prepared, variant, salt=salt, r=r)
        self.assertEqual(gotInv, inv)
        self.assertEqual(blinded.hex(), v["blinded_msg"], v["name"])
        blindSig = BlindSigner(key).blindSign(blinded)
        self.assertEqual(blindSig.hex(), v["blind_sig"], v["name"])
        sig = blindrsa.finalize(pub, prepared, blindSig, inv, variant)
        self.assertEqual(sig.hex(), v["sig"], v["name"])
        blindrsa.verify(pub, prepared, sig, variant)


class BlindSignatureTests(unittest.TestCase):
    def test_roundTripIsAPlainPSSSignature(self):
        key = smallKey()
        msg = b"token input"
        blinded, inv = blindrsa.blind(key.public_key(), msg)
        sig = blindrsa.finalize(key.public_key(), msg, BlindSigner(key).blindSign(blinded), inv)
        blindrsa.verify(key.public_key(), msg, sig)  # what an exit runs

    def test_blindedMessageHidesTheMessage(self):
        """The same message blinds to a different value each time (fresh r and salt)."""
        pub = smallKey().public_key()
        a, _ = blindrsa.blind(pub, b"m")
        b, _ = blindrsa.blind(pub, b"m")
        self.assertNotEqual(a, b)

    def test_wrongMessageRefused(self):
        key = smallKey()
        blinded, inv = blindrsa.blind(key.public_key(), b"one")
        blindSig = BlindSigner(key).blindSign(blinded)
        with self.assertRaisesRegex(BlindSignatureError, "invalid signature"):
            blindrsa.finalize(key.public_key(), b"two", blindSig, inv)

    def test_otherKeyRefused(self):
        key = smallKey()
        other = rsa.generate_private_key(65537, 2048)
        blinded, inv = blindrsa.blind(key.public_key(), b"m")
        # Under the other modulus the value may not even be below n: either refusal is right.
        with self.assertRaisesRegex(BlindSignatureError, "invalid signature|out of range"):
            blindrsa.finalize(key.public_key(), b"m", BlindSigner(other).blindSign(blinded), inv)

    def test_blindSignChecksSizeAndRange(self):
        signer = BlindSigner(smallKey())
        with self.assertRaisesRegex(BlindSignatureError, "unexpected input size"):
            signer.blindSign(b"\x01" * 255)
        with self.assertRaisesRegex(BlindSignatureError, "out of range"):
            signer.blindSign(b"\xff" * 256)

    def test_finalizeChecksSize(self):
        key = smallKey()
        with self.assertRaisesRegex(BlindSignatureError, "unexpected input size"):
            blindrsa.finalize(key.public_key(), b"m", b"\x00" * 10, 1)

    def test_saltLengthOfVariant(self):
        with self.assertRaises(ValueError):
            blindrsa.blind(smallKey().public_key(), b"m", blindrsa.PSS_DETERMINISTIC, salt=b"short")

    @settings(max_examples=25, deadline=None)
    @given(st.binary(min_size=256, max_size=256))
    def test_blindSignNeverCrashesOnHostileInput(self, data):
        """Any 256 bytes either sign (then the check holds) or fail with a named error."""
        signer = BlindSigner(smallKey())
        try:
            out = signer.blindSign(data)
        except BlindSignatureError as e:
            self.assertIn(str(e), ("message representative out of range",))
        else:
            self.assertEqual(len(out), 256)
