"""RSA blind signatures, RFC 9474 (RSABSSA), on C{cryptography}'s RSA keys.

Why: a buyer must get the issuer's signature on a token the issuer never
sees, so that the exit that later checks the token cannot be told, even by
the issuer, which purchase it came from.  RFC 9474's protocol does that
with plain RSA-PSS signatures: the client blinds the PSS-encoded message
with a random factor, the issuer signs the blinded value, the client
removes the factor and holds an ordinary RSASSA-PSS signature that anyone
verifies with the public key.

What comes from C{cryptography}: key generation and storage, the key
numbers, and RSASSA-PSS verification (used by L{finalize} and by every
token check, so the signatures we accept are exactly the ones a standard
verifier accepts).  What it does not expose is the raw RSA operation, so
RSAVP1 (for blinding) and RSASP1 (the blind signature) are Python modular
exponentiation on the key's numbers.  Python's C{pow} is not constant time:
the signer therefore blinds every request once more with its own random
factor before exponentiating (classic RSA blinding), so the time it takes
depends on a value nobody else knows, and it checks each signature before
returning it (RFC 9474, section 4.3, step 4; it also stops fault attacks).

The four named variants of RFC 9474 section 5 are here because the RFC's
test vectors cover them; MeshVPN's tokens use RSABSSA-SHA384-PSS-Deterministic
(RFC 9578 token type 0x0002).
"""

import hashlib
import math
import secrets

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from meshvpn.errors import MeshVPNError

HASH_LEN = 48  # SHA-384


class BlindSignatureError(MeshVPNError):
    """A blind signature step failed; the message is one of RFC 9474's error names."""


@attrs.frozen
class Variant:
    """One named RSABSSA variant (RFC 9474, section 5)."""

    name: str
    saltLength: int
    randomized: bool  # PrepareRandomize (32-byte prefix) rather than PrepareIdentity


PSS_RANDOMIZED = Variant("RSABSSA-SHA384-PSS-Randomized", 48, True)
PSSZERO_RANDOMIZED = Variant("RSABSSA-SHA384-PSSZERO-Randomized", 0, True)
PSS_DETERMINISTIC = Variant("RSABSSA-SHA384-PSS-Deterministic", 48, False)
PSSZERO_DETERMINISTIC = Variant("RSABSSA-SHA384-PSSZERO-Deterministic", 0, False)
VARIANTS = {v.name: v for v in (PSS_RANDOMIZED, PSSZERO_RANDOMIZED, PSS_DETERMINISTIC, PSSZERO_DETERMINISTIC)}


def _modulusLength(n):
    return (n.bit_length() + 7) // 8


def intToBytes(value, length):
    return value.to_bytes(length, "big")


def bytesToInt(data):
    return int.from_bytes(data, "big")


def mgf1(seed, length):
    """MGF1 with SHA-384 (RFC 8017, B.2.1)."""
    out = bytearray()
    counter = 0
    while len(out) < length:
        out += hashlib.sha384(seed + counter.to_bytes(4, "big")).digest()
        counter += 1
    return bytes(out[:length])


def emsaPssEncode(msg, emBits, salt):
    """
    EMSA-PSS-ENCODE (RFC 8017, 9.1.1) with SHA-384 and MGF1-SHA-384.

    @param emBits: the modulus length in bits minus one, as RSASSA-PSS-SIGN uses.
    @raise BlindSignatureError: "encoding error" when the modulus is too small.
    """
    emLen = (emBits + 7) // 8
    if emLen < HASH_LEN + len(salt) + 2:
        raise BlindSignatureError("encoding error")
    mHash = hashlib.sha384(msg).digest()
    h = hashlib.sha384(bytes(8) + mHash + salt).digest()
    db = bytes(emLen - len(salt) - HASH_LEN - 2) + b"\x01" + salt
    masked = bytearray(a ^ b for a, b in zip(db, mgf1(h, emLen - HASH_LEN - 1)))
    masked[0] &= 0xFF >> (8 * emLen - emBits)
    return bytes(masked) + h + b"\xbc"


def prepare(msg, variant=PSS_DETERMINISTIC, prefix=None):
    """
    PrepareIdentity or PrepareRandomize (RFC 9474, 4.1), as C{variant} says.

    @param prefix: the 32 random bytes of PrepareRandomize (tests); default random.
    """
    if not variant.randomized:
        return bytes(msg)
    prefix = secrets.token_bytes(32) if prefix is None else prefix
    if len(prefix) != 32:
        raise ValueError("the randomizing prefix is 32 bytes")
    return prefix + bytes(msg)


def blind(publicKey, msg, variant=PSS_DETERMINISTIC, salt=None, r=None):
    """
    Blind (RFC 9474, 4.2): encode C{msg} (already prepared) and blind it.

    @param publicKey: a C{cryptography} RSA public key (the issuer's).
    @param salt: the PSS salt (tests); default random of the variant's length.
    @param r: the blinding factor (tests); default uniform in [1, n).
    @return: C{(blindedMsg, inv)}: bytes to send, the integer to keep for L{finalize}.
    @raise BlindSignatureError: "invalid input" or "blinding error".
    """
    numbers = publicKey.public_numbers()
    n, e = numbers.n, numbers.e
    if salt is None:
        salt = secrets.token_bytes(variant.saltLength)
    if len(salt) != variant.saltLength:
        raise ValueError(f"{variant.name} uses a {variant.saltLength}-byte salt")
    encoded = emsaPssEncode(msg, n.bit_length() - 1, salt)
    m = bytesToInt(encoded)
    if math.gcd(m, n) != 1:
        raise BlindSignatureError("invalid input")
    if r is None:
        r = 1 + secrets.randbelow(n - 1)
    try:
        inv = pow(r, -1, n)
    except ValueError:
        raise BlindSignatureError("blinding error") from None
    z = (m * pow(r, e, n)) % n
    return intToBytes(z, _modulusLength(n)), inv


class BlindSigner:
    """
    The issuer's side: BlindSign (RFC 9474, 4.3) with one private key.

    The key's numbers are read once; every signature is computed on a value
    blinded again by the signer (see the module docstring) and checked.
    """

    def __init__(self, privateKey):
        self.privateKey = privateKey
        self.publicKey = privateKey.public_key()
        priv = privateKey.private_numbers()
        pub = priv.public_numbers
        self._n, self._e = pub.n, pub.e
        self._p, self._q = priv.p, priv.q
        self._dp, self._dq, self._qinv = priv.dmp1, priv.dmq1, priv.iqmp
        self.modulusLength = _modulusLength(self._n)

    def _rsasp1(self, c):
        m1 = pow(c % self._p, self._dp, self._p)
        m2 = pow(c % self._q, self._dq, self._q)
        h = (self._qinv * (m1 - m2)) % self._p
        return m2 + self._q * h

    def blindSign(self, blindedMsg):
        """
        @return: the blind signature, C{modulusLength} bytes.
        @raise BlindSignatureError: "unexpected input size",
            "message representative out of range" or "signing failure".
        """
        if len(blindedMsg) != self.modulusLength:
            raise BlindSignatureError("unexpected input size")
        n, e = self._n, self._e
        m = bytesToInt(blindedMsg)
        if not 0 <= m < n:
            raise BlindSignatureError("message representative out of range")
        while True:
            t = 2 + secrets.randbelow(n - 3)
            if math.gcd(t, n) == 1:
                break
        s = (self._rsasp1((m * pow(t, e, n)) % n) * pow(t, -1, n)) % n
        if pow(s, e, n) != m:
            raise BlindSignatureError("signing failure")
        return intToBytes(s, self.modulusLength)


def finalize(publicKey, msg, blindSig, inv, variant=PSS_DETERMINISTIC):
    """
    Finalize (RFC 9474, 4.4): unblind and verify.

    @return: the RSASSA-PSS signature over C{msg} (prepared).
    @raise BlindSignatureError: "unexpected input size" or "invalid signature".
    """
    n = publicKey.public_numbers().n
    k = _modulusLength(n)
    if len(blindSig) != k:
        raise BlindSignatureError("unexpected input size")
    sig = intToBytes((bytesToInt(blindSig) * inv) % n, k)
    verify(publicKey, msg, sig, variant)
    return sig


def verify(publicKey, msg, sig, variant=PSS_DETERMINISTIC):
    """
    RSASSA-PSS-VERIFY with SHA-384, MGF1-SHA-384 and the variant's salt length
    (C{cryptography}'s verifier).

    @raise BlindSignatureError: "invalid signature".
    """
    try:
        publicKey.verify(
            sig,
            msg,
            padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=variant.saltLength),
            hashes.SHA384(),
        )
    except InvalidSignature:
        raise BlindSignatureError("invalid signature") from None
