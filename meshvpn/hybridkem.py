"""ML-KEM-768 and the one hybrid combiner every MeshVPN handshake uses.

Traffic recorded today can be decrypted once a large quantum computer
breaks X25519 ("harvest now, decrypt later").  Both of MeshVPN's key
exchanges (the onion circuit handshake, L{meshvpn.onion.circhandshake}, and
the datagram link handshake, L{meshvpn.link.datagram_crypto}) therefore add
an ephemeral ML-KEM-768 (FIPS 203) encapsulation to their ephemeral X25519
exchange and derive their keys from both secrets through L{combine}: the
keys stay secret as long as either X25519 or ML-KEM-768 does.

ML-KEM comes from the C{cryptography} package (version 47 and later) and
needs an OpenSSL with ML-KEM (3.5 and later).  L{available} checks that
once, at run time, and logs one clear line when it is missing; callers then
fall back to their classic handshake, and say so in their status.

The combiner (doc/protocol.md, "Hybrid combiner"):

    seed = SHA3-256(ENCAP(label) | ENCAP(classic) | ENCAP(ss) | ENCAP(SHA3-256(ek)) | ENCAP(SHA3-256(ct)))

C{classic} is the classic handshake's secret (already bound to both X25519
ephemerals and to the relay's or peer's identity), C{ss} the ML-KEM shared
secret, C{ek} and C{ct} the encapsulation key and ciphertext as they were
sent.  Binding C{ek} and C{ct} as X-Wing does keeps the combined secret
bound to the exact KEM transcript even if a future ML-KEM weakness allowed
two ciphertexts to decapsulate to one secret.  SHA3-256 over distinct,
length-prefixed inputs is a dual PRF here: the seed is pseudorandom when
either C{classic} or C{ss} is.  ENCAP(s) is the 8-byte big-endian length of
C{s}, then C{s}.
"""

import hashlib
import struct

from twisted.logger import Logger

log = Logger()

EK_LEN = 1184  # ML-KEM-768 encapsulation key
CT_LEN = 1088  # ML-KEM-768 ciphertext
SS_LEN = 32
SEED_LEN = 64  # d | z (FIPS 203 key generation seed)

_state = {"available": None}


class KEMError(ValueError):
    """An ML-KEM-768 key or ciphertext is malformed (wrong length or an invalid encapsulation key)."""


def _probe():
    try:
        from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey, MLKEM768PublicKey

        key = MLKEM768PrivateKey.generate()
        ss, ct = MLKEM768PublicKey.from_public_bytes(key.public_key().public_bytes_raw()).encapsulate()
        return key.decapsulate(ct) == ss, ""
    except ImportError:
        return False, "the installed cryptography package has no ML-KEM (version 47 or later needed)"
    except Exception as e:  # UnsupportedAlgorithm from an OpenSSL without ML-KEM, or anything odd
        return False, f"the OpenSSL backend does not provide ML-KEM-768 ({type(e).__name__}: {e})"


def available():
    """
    @return: whether ML-KEM-768 works here (checked once; a missing one is
        logged once, with the reason and the consequence).
    """
    if _state["available"] is None:
        ok, why = _probe()
        _state["available"] = ok
        if not ok:
            log.warn("post-quantum handshakes disabled: {why}; circuits and links fall back to classic X25519 "
                     "handshakes (not protected against later decryption by a quantum computer)", why=why)
    return _state["available"]


def setAvailableForTests(value):
    """Pretend ML-KEM is (C{True}), is not (C{False}) or re-probe (C{None}); tests only."""
    _state["available"] = value


class DecapsulationKey:
    """One ephemeral ML-KEM-768 key pair (or one from a 64-byte seed, for vectors)."""

    __slots__ = ("_key", "ek")

    def __init__(self, seed=None):
        from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey

        self._key = MLKEM768PrivateKey.generate() if seed is None else MLKEM768PrivateKey.from_seed_bytes(seed)
        self.ek = self._key.public_key().public_bytes_raw()

    def decapsulate(self, ct):
        """@return: the 32-byte shared secret (ML-KEM rejects implicitly: a bad C{ct} gives a random-looking one)."""
        if len(ct) != CT_LEN:
            raise KEMError(f"ML-KEM-768 ciphertext is {len(ct)} bytes, expected {CT_LEN}")
        return self._key.decapsulate(bytes(ct))


def encapsulate(ek):
    """
    @return: C{(sharedSecret, ciphertext)} for the encapsulation key C{ek}.
    @raise KEMError: C{ek} is not a valid ML-KEM-768 encapsulation key
        (FIPS 203's modulus check included).
    """
    from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PublicKey

    if len(ek) != EK_LEN:
        raise KEMError(f"ML-KEM-768 encapsulation key is {len(ek)} bytes, expected {EK_LEN}")
    try:
        return MLKEM768PublicKey.from_public_bytes(bytes(ek)).encapsulate()
    except ValueError as e:
        raise KEMError(f"invalid ML-KEM-768 encapsulation key: {e}") from None


def encap(s):
    return struct.pack(">Q", len(s)) + s


def combine(label, classic, ss, ek, ct):
    """The hybrid combiner (module docstring): a 32-byte seed from both secrets and the KEM transcript."""
    return hashlib.sha3_256(
        encap(label) + encap(classic) + encap(ss)
        + encap(hashlib.sha3_256(ek).digest()) + encap(hashlib.sha3_256(ct).digest())
    ).digest()


def expand(seed, label, length):
    """Key schedule: C{length} bytes of SHAKE-256(ENCAP(label) | seed)."""
    return hashlib.shake_256(encap(label) + seed).digest(length)
