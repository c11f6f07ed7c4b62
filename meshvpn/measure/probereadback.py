"""Signed read-backs: what each measurer really sent a target in the probe slot, as the target counted it.

In the one network-wide slot a relay is a target and a measurer at once.
A measurer's own report (L{meshvpn.measure.probereports}) says how much
each target echoed; nothing in it shows whether the measurer did its
share.  A hostile relay can skip measuring, keep its whole link for its
own echoes and be read up to twice its share as a target (the bench's
C{--probe-contention skip}: it takes over).  So each target also counts,
byte for byte, the PROBE records each measurer the plan gave it sent in
the slot, and signs the counts in its own record beside its probe report
(a new record, so that nodes that only know the probe report keep
reading it unchanged).  A client turns them into the measurer's reading
in its measurer role (L{meshvpn.measure.probed}).

Per measurer: the bytes of PROBE data received from it inside the slot,
how many of those the target did not echo because the target itself was
the bottleneck (its share of its bandwidth limit was spent, its link
blocked, or the measurer went past the sanity bound), and in how many
distinct seconds of the slot that happened.  A measurer that kept the
target its bottleneck for most of the slot (L{FILLED}) has shown all the
target could read of it; one burst at the slot's start does not (it
costs one window, not the duty).

Layout (network byte order), one encoding only:

    magic "MVR1" | identity key (32) | epoch u32 | epoch length u32 (s) | slot milliseconds u32 | count u8
    | count x ( measurer id prefix (16) | bytes received u64 | bytes not echoed, target-bound u64
                | seconds target-bound u32 )
    | Ed25519 signature (64) over "meshvpn-probe-readback-v1\\0" + everything before it

Sorted strictly by prefix, never the target itself, received at least 1
byte (a silent measurer is absent: the target read it at nothing) and
at least the bytes not echoed, seconds target-bound 0 exactly when no byte
was, and at most the epoch's, at most L{MAX_MEASURERS} entries; the
parser refuses anything else with a L{ReadBackError}.  The signed-record
code is the traffic report's (L{meshvpn.measure.reports}).
"""

import hashlib
import struct

import attrs

from meshvpn.measure.reports import MAX_EPOCH_LENGTH, PREFIX, SIG_LEN, prefixOf, signBody, splitSigned, verifySigned

MAGIC = b"MVR1"
SIG_DOMAIN = b"meshvpn-probe-readback-v1\x00"
MAX_MEASURERS = 25  # 49 + 25 * 36 + 64 = 1013 bytes: one DHT record value (a target echoes a team of 5 and 2 more)
FILLED = 0.75  # of the slot's seconds a target must have been the bottleneck in for its measurer to count as filling it
_HEAD = struct.Struct("!4s32sIIIB")
_ENTRY = struct.Struct("!16sQQI")
MAX_SIZE = _HEAD.size + MAX_MEASURERS * _ENTRY.size + SIG_LEN


class ReadBackError(ValueError):
    """A read-back is malformed, not canonical or badly signed; the text says which."""


@attrs.frozen
class Sent:
    measurer: bytes  # 16-byte node id prefix
    received: int  # bytes of PROBE data the target received from it in the slot
    targetBound: int  # of those, bytes the target did not echo because it could not (it was the bottleneck)
    boundSeconds: int = 0  # distinct seconds of the slot in which that happened

    def filled(self, millis):
        """
        Whether the measurer kept sending more than the target could take,
        in at least L{FILLED} of the C{millis} slot's seconds: it showed all
        the target could read of it.
        """
        return self.boundSeconds * 1000 >= FILLED * millis


@attrs.frozen
class ReadBack:
    identityKey: bytes
    epoch: int
    epochLength: int
    millis: int  # the slot's length as the target's plan had it
    sent: tuple  # of L{Sent}, sorted by measurer
    signature: bytes = b""
    raw: bytes = attrs.field(default=b"", eq=False, repr=False)

    @property
    def target(self):
        """The target's node id (SHA-256 of its identity key)."""
        return hashlib.sha256(self.identityKey).digest()

    def of(self, measurer):
        """The entry of C{measurer} (a node id or its prefix), or C{None}: it sent nothing."""
        want = prefixOf(measurer)
        for s in self.sent:
            if s.measurer == want:
                return s
        return None


def _check(identityKey, epoch, epochLength, millis, sent):
    if len(identityKey) != 32:
        raise ReadBackError("identity key must be 32 bytes")
    if not 0 <= epoch < 2**32:
        raise ReadBackError("epoch out of range")
    if not 0 < epochLength <= MAX_EPOCH_LENGTH:
        raise ReadBackError(f"epoch length must be 1..{MAX_EPOCH_LENGTH} s")
    if not 0 < millis <= epochLength * 1000:
        raise ReadBackError("a slot lasts 1 ms up to the epoch")
    if len(sent) > MAX_MEASURERS:
        raise ReadBackError(f"more than {MAX_MEASURERS} measurers")
    me = prefixOf(hashlib.sha256(identityKey).digest())
    last = None
    for s in sent:
        if len(s.measurer) != PREFIX:
            raise ReadBackError(f"measurer prefix must be {PREFIX} bytes")
        if s.measurer == me:
            raise ReadBackError("a target does not measure itself")
        if last is not None and s.measurer <= last:
            raise ReadBackError("measurers not sorted or duplicated")
        if not 0 < s.received < 2**64:
            raise ReadBackError("received bytes must be 1..2**64-1 (a silent measurer is left out)")
        if not 0 <= s.targetBound <= s.received:
            raise ReadBackError("more bytes not echoed than received")
        if (s.boundSeconds > 0) != (s.targetBound > 0) or s.boundSeconds > epochLength:
            raise ReadBackError("seconds target-bound must be 1..epoch length exactly when bytes were")
        last = s.measurer


def _body(identityKey, epoch, epochLength, millis, sent):
    return b"".join([_HEAD.pack(MAGIC, identityKey, epoch, epochLength, millis, len(sent))]
                    + [_ENTRY.pack(s.measurer, s.received, s.targetBound, s.boundSeconds) for s in sent])


def signReadBack(identity, epoch, epochLength, millis, sent):
    """
    Sign this epoch's read-back with C{identity} (an L{meshvpn.interfaces.INodeIdentity}).

    @param sent: L{Sent}s; sorted here by measurer.  Beyond
        L{MAX_MEASURERS} the ones that sent most are kept (more than a
        team and its slack never happens with agreeing directories).
    """
    sent = sorted(sent, key=lambda s: (-s.received, s.measurer))[:MAX_MEASURERS]
    sent = tuple(sorted(sent, key=lambda s: s.measurer))
    _check(identity.identityPublicKey, epoch, epochLength, millis, sent)
    body = _body(identity.identityPublicKey, epoch, epochLength, millis, sent)
    return parseReadBack(signBody(identity, SIG_DOMAIN, body))


def parseReadBack(raw, verify=True):
    """
    Parse (and by default verify the signature of) one read-back.

    @raise ReadBackError: malformed, not canonical, trailing bytes or bad signature.
    """
    raw = splitSigned(raw, ReadBackError, "read-back", _HEAD.size, MAX_SIZE)
    magic, key, epoch, length, millis, count = _HEAD.unpack_from(raw)
    if magic != MAGIC:
        raise ReadBackError("not a read-back (bad magic)")
    if len(raw) != _HEAD.size + count * _ENTRY.size + SIG_LEN:
        raise ReadBackError("read-back length does not match its count")
    sent = tuple(Sent(*_ENTRY.unpack_from(raw, _HEAD.size + i * _ENTRY.size)) for i in range(count))
    _check(key, epoch, length, millis, sent)
    sig = verifySigned(raw, SIG_DOMAIN, key, ReadBackError, "read-back") if verify else raw[-SIG_LEN:]
    return ReadBack(key, epoch, length, millis, sent, sig, raw)
