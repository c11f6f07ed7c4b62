"""The probe plan's seed record: a relay's reveal, its next commitment and the seed it last used, signed.

The plan of an epoch (L{meshvpn.measure.probeplan}) is drawn from a seed
nobody can choose: every probing relay commits to a random secret one
epoch ahead and reveals it when the epoch starts (L{planSeed}).  This is
what carries both, one owned DHT record per relay and epoch (a new record,
so nodes that know only the descriptor and the reports read those
unchanged, and a relay's descriptor keeps the layout every release parses).

Layout (network byte order), one encoding only, 204 bytes:

    magic "MVS1" | identity key (32) | epoch u32 | epoch length u32 (s)
    | secret of this epoch (32) | commitment to the secret of the next epoch (32)
    | the seed this relay's plan of the epoch before used (32; zeros: none)
    | Ed25519 signature (64) over "meshvpn-probe-seed-v1\\0" + everything before it

Published under C{ownedKey(nodeId, b"meshvpn-probe-seed:" + (epoch mod
14))} at the epoch's start, sequence number the epoch.  The parser refuses
anything else with a L{SeedRecordError} that says what was wrong.
"""

import hashlib
import struct

import attrs

from meshvpn.measure.probeplan import SECRET_BYTES
from meshvpn.measure.reports import MAX_EPOCH_LENGTH, SIG_LEN, signBody, splitSigned, verifySigned
from meshvpn.measure.window import SLOTS

MAGIC = b"MVS1"
SIG_DOMAIN = b"meshvpn-probe-seed-v1\x00"
SALT_PREFIX = b"meshvpn-probe-seed:"
NO_SEED = bytes(32)  # "used the epoch alone" (or knew nothing): planSeed never returns 32 zero bytes
_BODY = struct.Struct(f"!4s32sII{SECRET_BYTES}s32s32s")
SIZE = _BODY.size + SIG_LEN


class SeedRecordError(ValueError):
    """A seed record is malformed or badly signed; the text says which."""


@attrs.frozen
class SeedRecord:
    identityKey: bytes
    epoch: int
    epochLength: int
    secret: bytes  # revealed for this epoch's plan
    commitment: bytes  # to the secret of epoch + 1
    usedSeed: bytes  # the seed this relay's plan of epoch - 1 used (b"" for none / the epoch alone)
    signature: bytes = b""
    raw: bytes = attrs.field(default=b"", eq=False, repr=False)

    @property
    def publisher(self):
        """The relay's node id (SHA-256 of its identity key)."""
        return hashlib.sha256(self.identityKey).digest()


def seedSalt(epoch):
    """The salt of the seed record of C{epoch}."""
    return SALT_PREFIX + bytes([epoch % SLOTS])


def _check(identityKey, epoch, epochLength, secret, commitment, usedSeed):
    if len(identityKey) != 32:
        raise SeedRecordError("identity key must be 32 bytes")
    if not 0 <= epoch < 2**32 - 1:
        raise SeedRecordError("epoch out of range")
    if not 0 < epochLength <= MAX_EPOCH_LENGTH:
        raise SeedRecordError(f"epoch length must be 1..{MAX_EPOCH_LENGTH} s")
    if len(secret) != SECRET_BYTES or len(commitment) != 32:
        raise SeedRecordError(f"secret and commitment must be {SECRET_BYTES} and 32 bytes")
    if len(usedSeed) not in (0, 32) or usedSeed == NO_SEED:
        raise SeedRecordError("a used seed is 32 bytes, or none")


def signSeedRecord(identity, epoch, epochLength, secret, commitment, usedSeed=b""):
    """Sign C{identity}'s (an L{meshvpn.interfaces.INodeIdentity}) seed record of C{epoch}."""
    key = identity.identityPublicKey
    _check(key, epoch, epochLength, secret, commitment, usedSeed)
    body = _BODY.pack(MAGIC, key, epoch, epochLength, secret, commitment, usedSeed or NO_SEED)
    return parseSeedRecord(signBody(identity, SIG_DOMAIN, body))


def parseSeedRecord(raw, verify=True):
    """
    Parse (and by default verify the signature of) one seed record.

    @raise SeedRecordError: not exactly L{SIZE} bytes, bad magic, a field out
        of range, or a bad signature.
    """
    raw = splitSigned(raw, SeedRecordError, "seed record", _BODY.size, SIZE)
    if len(raw) != SIZE:
        raise SeedRecordError(f"a seed record is {SIZE} bytes")
    magic, key, epoch, length, secret, commitment, used = _BODY.unpack_from(raw)
    if magic != MAGIC:
        raise SeedRecordError("not a seed record (bad magic)")
    used = b"" if used == NO_SEED else used
    _check(key, epoch, length, secret, commitment, used)
    sig = verifySigned(raw, SIG_DOMAIN, key, SeedRecordError, "seed record") if verify else raw[-SIG_LEN:]
    return SeedRecord(key, epoch, length, secret, commitment, used, sig, raw)
