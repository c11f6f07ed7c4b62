"""Signed probe readings: what a measurer saw each relay it probed forward.

Each epoch a measurer probes the targets the plan gives it
(L{meshvpn.measure.probeplan}) with the link's probe stream
(L{meshvpn.measure.prober}) and signs what each echoed back; the report
goes into the DHT beside its traffic report (L{meshvpn.measure.publish}),
and a client turns a relay's readings into its probed capacity
(L{probedCapacity}).  The signed-record code is the traffic report's
(L{meshvpn.measure.reports}).

Layout (network byte order), one encoding only:

    magic "MVQ1" | identity key (32) | epoch u32 | epoch length u32 (s) | count u8
    | count x ( target id prefix (16) | bytes echoed u64 | milliseconds u32 )
    | Ed25519 signature (64) over "meshvpn-probe-report-v1\\0" + everything before it

At most L{MAX_TARGETS} targets (a measurer is drawn into a few teams an
epoch), sorted strictly by prefix, never the measurer itself, a duration of
1 ms up to the epoch's length; the parser refuses anything else with a
L{ProbeReportError} that says what was wrong.
"""

import hashlib
import struct

import attrs

from meshvpn.measure.reports import MAX_EPOCH_LENGTH, PREFIX, SIG_LEN, prefixOf, signBody, splitSigned, verifySigned

MAGIC = b"MVQ1"
SIG_DOMAIN = b"meshvpn-probe-report-v1\x00"
MAX_TARGETS = 32  # 45 + 32 * 28 + 64 = 1005 bytes: one DHT record value
_HEAD = struct.Struct("!4s32sIIB")
_ENTRY = struct.Struct("!16sQI")
MAX_SIZE = _HEAD.size + MAX_TARGETS * _ENTRY.size + SIG_LEN


class ProbeReportError(ValueError):
    """A probe report is malformed, not canonical or badly signed; the text says which."""


@attrs.frozen
class Reading:
    target: bytes  # 16-byte node id prefix
    bytes: int  # echoed back by the target during the probe
    millis: int  # how long the probe ran

    @property
    def rate(self):
        """Bytes per second the target forwarded to this measurer."""
        return self.bytes * 1000 / self.millis


@attrs.frozen
class ProbeReport:
    identityKey: bytes
    epoch: int
    epochLength: int
    readings: tuple
    signature: bytes = b""
    raw: bytes = attrs.field(default=b"", eq=False, repr=False)

    @property
    def measurer(self):
        """The measurer's node id (SHA-256 of its identity key)."""
        return hashlib.sha256(self.identityKey).digest()


def _check(identityKey, epoch, epochLength, readings):
    if len(identityKey) != 32:
        raise ProbeReportError("identity key must be 32 bytes")
    if not 0 <= epoch < 2**32:
        raise ProbeReportError("epoch out of range")
    if not 0 < epochLength <= MAX_EPOCH_LENGTH:
        raise ProbeReportError(f"epoch length must be 1..{MAX_EPOCH_LENGTH} s")
    if len(readings) > MAX_TARGETS:
        raise ProbeReportError(f"more than {MAX_TARGETS} targets")
    me = prefixOf(hashlib.sha256(identityKey).digest())
    last = None
    for r in readings:
        if len(r.target) != PREFIX:
            raise ProbeReportError(f"target prefix must be {PREFIX} bytes")
        if r.target == me:
            raise ProbeReportError("a measurer may not probe itself")
        if last is not None and r.target <= last:
            raise ProbeReportError("targets not sorted or duplicated")
        if not 0 <= r.bytes < 2**64:
            raise ProbeReportError("bytes out of range")
        if not 0 < r.millis <= epochLength * 1000:
            raise ProbeReportError("a probe lasts 1 ms up to the epoch")
        last = r.target


def _body(identityKey, epoch, epochLength, readings):
    return b"".join([_HEAD.pack(MAGIC, identityKey, epoch, epochLength, len(readings))]
                    + [_ENTRY.pack(r.target, r.bytes, r.millis) for r in readings])


def signProbeReport(identity, epoch, epochLength, readings):
    """
    Sign this epoch's readings with C{identity} (an L{meshvpn.interfaces.INodeIdentity}).

    @param readings: L{Reading}s; sorted here by target.
    """
    readings = tuple(sorted(readings, key=lambda r: r.target))
    _check(identity.identityPublicKey, epoch, epochLength, readings)
    body = _body(identity.identityPublicKey, epoch, epochLength, readings)
    return parseProbeReport(signBody(identity, SIG_DOMAIN, body))


def parseProbeReport(raw, verify=True):
    """
    Parse (and by default verify the signature of) one probe report.

    @raise ProbeReportError: malformed, not canonical, trailing bytes or bad signature.
    """
    raw = splitSigned(raw, ProbeReportError, "probe report", _HEAD.size, MAX_SIZE)
    magic, key, epoch, length, count = _HEAD.unpack_from(raw)
    if magic != MAGIC:
        raise ProbeReportError("not a probe report (bad magic)")
    if len(raw) != _HEAD.size + count * _ENTRY.size + SIG_LEN:
        raise ProbeReportError("probe report length does not match its count")
    readings = tuple(Reading(*_ENTRY.unpack_from(raw, _HEAD.size + i * _ENTRY.size)) for i in range(count))
    _check(key, epoch, length, readings)
    sig = verifySigned(raw, SIG_DOMAIN, key, ProbeReportError, "probe report") if verify else raw[-SIG_LEN:]
    return ProbeReport(key, epoch, length, readings, sig, raw)


def probedCapacity(readings, teamSize):
    """
    A relay's probed capacity from its teams' readings over a window of epochs.

    @param readings: C{[(rate, measurerCapacity)]}: each reading's rate
        (bytes/s the relay forwarded to one measurer of its team) and that
        measurer's own probed capacity, or C{None} if it has none yet.
    @param teamSize: measurers per team: each saw about that fraction of
        the relay's capacity.
    @return: the lower median of the readings scaled to the team, each
        first clipped to the team's size times its measurer's capacity (a
        measurer cannot take in more than that; unclipped, colluders read
        a colluder at any size: doc/measurement.md); C{None} without
        readings.
    """
    scaled = sorted(teamSize * (rate if cap is None else min(rate, cap)) for rate, cap in readings)
    return scaled[(len(scaled) - 1) // 2] if scaled else None
