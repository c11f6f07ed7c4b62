"""Bandwidth tokens: Privacy Pass tokens of type 0x0002 (RFC 9578, publicly verifiable).

Why this shape: it is a published, reviewed format whose issuance is one
blind RSA round (L{meshvpn.payments.blindrsa}, RSABSSA-SHA384-PSS-Deterministic)
and whose tokens anyone holding the issuer's public key can check offline,
which is what an exit needs: no call to the issuer on the data path.

The byte layouts (RFC 9578 section 6, RFC 9577 section 2.1):

  TokenChallenge: u16 token_type | u16 len, issuer_name | u8 len (0 or 32),
                  redemption_context | u16 len, origin_info
  TokenRequest:   u16 token_type | u8 truncated_token_key_id | blinded_msg[256]
  TokenResponse:  blind_sig[256]
  Token:          u16 token_type | nonce[32] | challenge_digest[32] |
                  token_key_id[32] | authenticator[256]

The issuer key is a 2048-bit RSA key; its C{token_key_id} is SHA-256 of
its SubjectPublicKeyInfo with the id-RSASSA-PSS algorithm and explicit
parameters (SHA-384, MGF1-SHA-384, 48-byte salt), as RFC 9578 section 6.5
requires.

MeshVPN's challenge is the same for every token of an issuer: its name
derived from the issuer's node id, no redemption context (tokens are bought
ahead and spent anywhere) and no origin (any exit that accepts the issuer).
So two tokens of one issuer and epoch differ only in their random nonce
and their signature: nothing in a token points at the purchase it came from.
Every parser here rejects malformed input with L{TokenFormatError}.
"""

import hashlib
import secrets
import struct

import attrs
from cryptography.hazmat.primitives import serialization

from meshvpn.errors import MeshVPNError
from meshvpn.payments import blindrsa

TOKEN_TYPE = 0x0002
NK = 256  # authenticator and blinded message length: 2048-bit RSA
NONCE_LEN = 32
TOKEN_LEN = 2 + NONCE_LEN + 32 + 32 + NK  # 354
REQUEST_LEN = 2 + 1 + NK  # 259
RESPONSE_LEN = NK
MODULUS_BITS = 2048
VARIANT = blindrsa.PSS_DETERMINISTIC

# AlgorithmIdentifier { id-RSASSA-PSS, RSASSA-PSS-params { sha384, mgf1(sha384), saltLength 48 } }
_PSS_ALGORITHM = bytes.fromhex(
    "303d06092a864886f70d01010a3030a00d300b0609608648016503040202"
    "a11a301806092a864886f70d010108300b0609608648016503040202a203020130"
)


class TokenFormatError(MeshVPNError):
    """Bytes that are not a valid token, request, response, challenge or issuer key."""


def _derLength(n):
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _derTLV(tag, value):
    return bytes([tag]) + _derLength(len(value)) + value


def _readTLV(data, pos, tag):
    """@return: C{(value, end)} of the DER element of C{tag} at C{pos} (definite, minimal length)."""
    if pos + 2 > len(data) or data[pos] != tag:
        raise TokenFormatError("issuer key: unexpected DER element")
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if not 1 <= count <= 2 or pos + count > len(data):
            raise TokenFormatError("issuer key: bad DER length")
        length = int.from_bytes(data[pos:pos + count], "big")
        if length < 0x80 or (count == 2 and length < 0x100):
            raise TokenFormatError("issuer key: non-minimal DER length")
        pos += count
    if pos + length > len(data):
        raise TokenFormatError("issuer key: DER element truncated")
    return data[pos:pos + length], pos + length


def encodePublicKey(publicKey):
    """The issuer key as RFC 9578 publishes it: SPKI DER with id-RSASSA-PSS."""
    rsaKey = publicKey.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    return _derTLV(0x30, _PSS_ALGORITHM + _derTLV(0x03, b"\x00" + rsaKey))


def decodePublicKey(spki):
    """
    Parse an issuer key published by L{encodePublicKey}: exactly the PSS
    algorithm above, a 2048-bit modulus, and the one canonical encoding.

    @return: a C{cryptography} RSA public key.
    @raise TokenFormatError: anything else.
    """
    spki = bytes(spki)
    body, end = _readTLV(spki, 0, 0x30)
    if end != len(spki):
        raise TokenFormatError("issuer key: trailing bytes")
    if not body.startswith(_PSS_ALGORITHM):
        raise TokenFormatError("issuer key: not an RSASSA-PSS (SHA-384, 48-byte salt) key")
    bits, end = _readTLV(body, len(_PSS_ALGORITHM), 0x03)
    if end != len(body) or not bits or bits[0] != 0:
        raise TokenFormatError("issuer key: bad public key bit string")
    try:
        key = serialization.load_der_public_key(bits[1:])
        numbers = key.public_numbers()
    except (ValueError, TypeError, AttributeError):
        raise TokenFormatError("issuer key: not an RSA public key") from None
    if numbers.n.bit_length() != MODULUS_BITS:
        raise TokenFormatError(f"issuer key: modulus of {numbers.n.bit_length()} bits, expected {MODULUS_BITS}")
    if numbers.e != 65537:
        raise TokenFormatError("issuer key: public exponent is not 65537")
    if encodePublicKey(key) != spki:
        raise TokenFormatError("issuer key: not canonically encoded")
    return key


def tokenKeyId(spki):
    """C{token_key_id}: SHA-256 of the issuer key's SPKI encoding."""
    return hashlib.sha256(spki).digest()


# ---- challenge


@attrs.frozen
class TokenChallenge:
    issuerName: bytes
    redemptionContext: bytes = b""
    originInfo: bytes = b""
    tokenType: int = TOKEN_TYPE

    def encode(self):
        if not 1 <= len(self.issuerName) < 1 << 16:
            raise TokenFormatError("issuer_name must be 1 to 65535 bytes")
        if len(self.redemptionContext) not in (0, 32):
            raise TokenFormatError("redemption_context must be 0 or 32 bytes")
        if len(self.originInfo) >= 1 << 16:
            raise TokenFormatError("origin_info longer than 65535 bytes")
        return (
            struct.pack("!HH", self.tokenType, len(self.issuerName)) + self.issuerName
            + bytes([len(self.redemptionContext)]) + self.redemptionContext
            + struct.pack("!H", len(self.originInfo)) + self.originInfo
        )

    @classmethod
    def decode(cls, data):
        data = bytes(data)
        try:
            tokenType, n = struct.unpack_from("!HH", data)
            name, pos = data[4:4 + n], 4 + n
            m = data[pos]
            context, pos = data[pos + 1:pos + 1 + m], pos + 1 + m
            (k,) = struct.unpack_from("!H", data, pos)
            origin, pos = data[pos + 2:pos + 2 + k], pos + 2 + k
        except (struct.error, IndexError):
            raise TokenFormatError("TokenChallenge truncated") from None
        if len(name) != n or len(context) != m or len(origin) != k or pos != len(data):
            raise TokenFormatError("TokenChallenge lengths do not match its size")
        if not n or m not in (0, 32):
            raise TokenFormatError("TokenChallenge: empty issuer_name or bad redemption_context length")
        return cls(name, context, origin, tokenType)

    def digest(self):
        return hashlib.sha256(self.encode()).digest()


def issuerName(issuerNodeId):
    """The issuer_name of MeshVPN's challenge: the issuer's node id, as a host name."""
    h = issuerNodeId.hex()
    return f"{h[:32]}.{h[32:]}.issuer.meshvpn".encode("ascii")


def meshChallenge(issuerNodeId):
    """The one challenge every token of this issuer answers (see the module docstring)."""
    return TokenChallenge(issuerName(issuerNodeId))


# ---- request / response / token


@attrs.frozen
class TokenRequest:
    truncatedKeyId: int
    blindedMsg: bytes

    def encode(self):
        return struct.pack("!HB", TOKEN_TYPE, self.truncatedKeyId) + self.blindedMsg

    @classmethod
    def decode(cls, data):
        if len(data) != REQUEST_LEN:
            raise TokenFormatError(f"TokenRequest of {len(data)} bytes, expected {REQUEST_LEN}")
        tokenType, truncated = struct.unpack_from("!HB", data)
        if tokenType != TOKEN_TYPE:
            raise TokenFormatError(f"token type {tokenType:#06x} not supported")
        return cls(truncated, bytes(data[3:]))


@attrs.frozen
class Token:
    nonce: bytes
    challengeDigest: bytes
    tokenKeyId: bytes
    authenticator: bytes

    def tokenInput(self):
        """What the authenticator signs (RFC 9578, 6.4)."""
        return struct.pack("!H", TOKEN_TYPE) + self.nonce + self.challengeDigest + self.tokenKeyId

    def encode(self):
        return self.tokenInput() + self.authenticator

    def nullifier(self):
        """What double spending is checked on: one value per token input, whatever its signature."""
        return hashlib.sha256(b"meshvpn-token-spent\x00" + self.tokenInput()).digest()

    @classmethod
    def decode(cls, data):
        if len(data) != TOKEN_LEN:
            raise TokenFormatError(f"token of {len(data)} bytes, expected {TOKEN_LEN}")
        (tokenType,) = struct.unpack_from("!H", data)
        if tokenType != TOKEN_TYPE:
            raise TokenFormatError(f"token type {tokenType:#06x} not supported")
        data = bytes(data)
        return cls(data[2:34], data[34:66], data[66:98], data[98:])


@attrs.frozen
class PendingToken:
    """What a client keeps between sending a request and finalizing its token (secret: C{inv})."""

    nonce: bytes
    challengeDigest: bytes
    tokenKeyId: bytes
    inv: int

    def tokenInput(self):
        return struct.pack("!H", TOKEN_TYPE) + self.nonce + self.challengeDigest + self.tokenKeyId


def requestToken(publicKey, challenge, nonce=None, salt=None, r=None):
    """
    The client's first step (RFC 9578, 6.1).

    @param nonce, salt, r: fixed values for test vectors; random by default.
    @return: C{(TokenRequest, PendingToken)}.
    """
    spki = encodePublicKey(publicKey)
    keyId = tokenKeyId(spki)
    nonce = secrets.token_bytes(NONCE_LEN) if nonce is None else nonce
    pending = PendingToken(nonce, challenge.digest(), keyId, 0)
    blinded, inv = blindrsa.blind(publicKey, pending.tokenInput(), VARIANT, salt=salt, r=r)
    return TokenRequest(keyId[-1], blinded), attrs.evolve(pending, inv=inv)


def signRequest(signer, keyId, request):
    """
    The issuer's step (RFC 9578, 6.2), for a request already decoded.

    @param signer: a L{blindrsa.BlindSigner} with the key C{keyId} names.
    @return: the TokenResponse bytes.
    @raise TokenFormatError: the request names another key.
    """
    if request.truncatedKeyId != keyId[-1]:
        raise TokenFormatError("TokenRequest names another issuer key")
    return signer.blindSign(request.blindedMsg)


def finishToken(publicKey, pending, response):
    """
    The client's last step (RFC 9578, 6.3).

    @return: the L{Token}.
    @raise TokenFormatError: a response of the wrong size.
    @raise blindrsa.BlindSignatureError: the issuer's signature does not verify.
    """
    if len(response) != RESPONSE_LEN:
        raise TokenFormatError(f"TokenResponse of {len(response)} bytes, expected {RESPONSE_LEN}")
    sig = blindrsa.finalize(publicKey, pending.tokenInput(), bytes(response), pending.inv, VARIANT)
    return Token(pending.nonce, pending.challengeDigest, pending.tokenKeyId, sig)


def verifyToken(token, publicKey):
    """
    Offline verification (RFC 9578, 6.4): the authenticator is a valid
    RSASSA-PSS signature by C{publicKey} over the token input.

    @raise blindrsa.BlindSignatureError: it is not.
    """
    blindrsa.verify(publicKey, token.tokenInput(), token.authenticator, VARIANT)
