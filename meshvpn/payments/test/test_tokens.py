"""RFC 9578 tokens (type 0x0002): the RFC's issuance test vectors, then every parser under hypothesis.

C{rfc9578_vectors.json} holds the five vectors of RFC 9578 Appendix A.2
("Issuance Protocol 2 - Blind RSA, 2048") as printed (hex strings; skS is
the hex of a PEM PKCS#8 key).
"""

import json
import os

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings, strategies as st
from twisted.trial import unittest

from meshvpn.payments import tokens
from meshvpn.payments.blindrsa import BlindSignatureError, BlindSigner
from meshvpn.payments.test.test_blindrsa import smallKey
from meshvpn.payments.tokens import Token, TokenChallenge, TokenFormatError, TokenRequest

HERE = os.path.dirname(__file__)


def loadVectors():
    with open(os.path.join(HERE, "rfc9578_vectors.json")) as f:
        return json.load(f)


class RFC9578VectorTests(unittest.TestCase):
    def test_issuanceVectors(self):
        vectors = loadVectors()
        self.assertEqual(len(vectors), 5)
        for i, v in enumerate(vectors):
            key = serialization.load_pem_private_key(bytes.fromhex(v["skS"]), None)
            pub = key.public_key()
            spki = tokens.encodePublicKey(pub)
            self.assertEqual(spki.hex(), v["pkS"], f"vector {i + 1}: issuer key encoding")
            self.assertEqual(tokens.encodePublicKey(tokens.decodePublicKey(spki)), spki)
            challenge = TokenChallenge.decode(bytes.fromhex(v["token_challenge"]))
            self.assertEqual(challenge.encode().hex(), v["token_challenge"])
            request, pending = tokens.requestToken(
                pub, challenge, nonce=bytes.fromhex(v["nonce"]), salt=bytes.fromhex(v["salt"]), r=int(v["blind"], 16)
            )
            self.assertEqual(request.encode().hex(), v["token_request"], f"vector {i + 1}: TokenRequest")
            keyId = tokens.tokenKeyId(spki)
            response = tokens.signRequest(BlindSigner(key), keyId, TokenRequest.decode(request.encode()))
            self.assertEqual(response.hex(), v["token_response"], f"vector {i + 1}: TokenResponse")
            token = tokens.finishToken(pub, pending, response)
            self.assertEqual(token.encode().hex(), v["token"], f"vector {i + 1}: Token")
            tokens.verifyToken(Token.decode(token.encode()), pub)


def issue(key, challenge):
    request, pending = tokens.requestToken(key.public_key(), challenge)
    keyId = tokens.tokenKeyId(tokens.encodePublicKey(key.public_key()))
    return tokens.finishToken(key.public_key(), pending, tokens.signRequest(BlindSigner(key), keyId, request))


class TokenTests(unittest.TestCase):
    def test_meshChallengeIsAHostName(self):
        name = tokens.issuerName(bytes(range(32)))
        self.assertTrue(name.endswith(b".issuer.meshvpn"))
        self.assertTrue(all(len(label) <= 63 for label in name.split(b".")))
        self.assertEqual(TokenChallenge.decode(tokens.meshChallenge(bytes(32)).encode()), tokens.meshChallenge(bytes(32)))

    def test_issuedTokenVerifies(self):
        key = smallKey()
        token = issue(key, tokens.meshChallenge(b"\x01" * 32))
        tokens.verifyToken(token, key.public_key())
        self.assertEqual(len(token.encode()), tokens.TOKEN_LEN)

    def test_forgedTokenRefused(self):
        """Changing any byte of the signed input, or the signature, breaks verification."""
        key = smallKey()
        token = issue(key, tokens.meshChallenge(b"\x01" * 32))
        raw = bytearray(token.encode())
        for pos in (5, 40, 70, 200):
            bad = bytearray(raw)
            bad[pos] ^= 1
            with self.assertRaises(BlindSignatureError):
                tokens.verifyToken(Token.decode(bytes(bad)), key.public_key())

    def test_nullifierIgnoresTheSignature(self):
        """Double spending is checked on the token input, so a second valid signature is no new token."""
        a = Token(b"n" * 32, b"c" * 32, b"k" * 32, b"\x01" * 256)
        b = Token(b"n" * 32, b"c" * 32, b"k" * 32, b"\x02" * 256)
        self.assertEqual(a.nullifier(), b.nullifier())
        self.assertNotEqual(a.nullifier(), Token(b"m" * 32, b"c" * 32, b"k" * 32, b"\x01" * 256).nullifier())

    def test_requestForAnotherKeyRefused(self):
        key = smallKey()
        request, _ = tokens.requestToken(key.public_key(), tokens.meshChallenge(bytes(32)))
        keyId = tokens.tokenKeyId(tokens.encodePublicKey(key.public_key()))
        other = bytes(31) + bytes([(keyId[-1] + 1) % 256])
        with self.assertRaisesRegex(TokenFormatError, "another issuer key"):
            tokens.signRequest(BlindSigner(key), other, request)

    def test_keyOfOtherSizeRefused(self):
        small = rsa.generate_private_key(65537, 1024).public_key()
        with self.assertRaisesRegex(TokenFormatError, "1024 bits"):
            tokens.decodePublicKey(tokens.encodePublicKey(small))

    def test_plainRSAKeyRefused(self):
        """An ordinary rsaEncryption SPKI is not an RFC 9578 issuer key."""
        spki = smallKey().public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        with self.assertRaises(TokenFormatError):
            tokens.decodePublicKey(spki)

    def test_wrongTypeRefused(self):
        raw = bytearray(Token(b"n" * 32, b"c" * 32, b"k" * 32, b"\x01" * 256).encode())
        raw[1] = 1
        with self.assertRaisesRegex(TokenFormatError, "not supported"):
            Token.decode(bytes(raw))


class ParserPropertyTests(unittest.TestCase):
    """Random bytes are parsed into something that encodes back to them, or refused with TokenFormatError."""

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=400))
    def test_token(self, data):
        try:
            token = Token.decode(data)
        except TokenFormatError:
            return
        self.assertEqual(token.encode(), data)

    @settings(max_examples=300, deadline=None)
    @given(st.one_of(st.binary(max_size=300), st.binary(min_size=259, max_size=259).map(lambda b: b"\x00\x02" + b[2:])))
    def test_request(self, data):
        try:
            request = TokenRequest.decode(data)
        except TokenFormatError:
            return
        self.assertEqual(request.encode(), data)

    @settings(max_examples=500, deadline=None)
    @given(st.binary(max_size=120))
    def test_challenge(self, data):
        try:
            challenge = TokenChallenge.decode(data)
        except TokenFormatError:
            return
        self.assertEqual(challenge.encode(), data)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=400), st.integers(min_value=0, max_value=337), st.integers(min_value=0, max_value=255))
    def test_publicKey(self, junk, pos, byte):
        """Junk, and a real key with one byte changed: refused unless it is the same key again."""
        spki = tokens.encodePublicKey(smallKey().public_key())
        mutated = spki[:pos] + bytes([byte]) + spki[pos + 1:]
        for data in (junk, mutated):
            try:
                key = tokens.decodePublicKey(data)
            except TokenFormatError:
                continue
            self.assertEqual(tokens.encodePublicKey(key), data)
