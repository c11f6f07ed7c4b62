"""Signed per-epoch traffic reports: what one relay says it exchanged with each neighbour.

PeerFlow's idea without its directory authorities: every relay, once per
epoch, signs how many bytes it exchanged (both directions together) with
each relay it had a link to, and for how many epochs in a row it has seen
that neighbour carry traffic (its streak: the reporter's view of the
neighbour's uptime).  Clients never trust what a relay says about itself;
they read what the *others* say about it (L{meshvpn.measure.aggregate}).

A report is self-contained (the reporter's key and signature travel with
it), so it can be checked away from the DHT: by a client computing
weights, or by a relay checking what a payout was based on.  One report
may be cut into up to L{MAX_PARTS} parts of at most L{MAX_ENTRIES} entries
each, so every part fits one DHT record (1024 bytes of value).

Layout (network byte order), one encoding only:

    magic "MVB1" | identity key (32) | epoch u32 | epoch length u32 (s)
    | part u8 | parts u8 | count u8
    | count x ( neighbour id prefix (16) | bytes u64 | streak u16 )
    | Ed25519 signature (64) over "meshvpn-bw-report-v1\\0" + everything before it

Entries are sorted by neighbour prefix, strictly increasing (no duplicate),
never name the reporter itself, and never carry zero bytes; across parts,
every prefix of part k sorts after every prefix of part k-1.  The parser
rejects anything else with a L{ReportError} that says what was wrong.
The 16-byte prefix of a node id (a SHA-256) keeps entries small; making a
second identity share it with a victim costs about 2^128 work.
"""

import hashlib
import struct

import attrs
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

MAGIC = b"MVB1"
SIG_DOMAIN = b"meshvpn-bw-report-v1\x00"
PREFIX = 16
MAX_ENTRIES = 35  # 47 + 35 * 26 + 64 = 1021 bytes: one DHT record value
MAX_PARTS = 32  # up to 1120 neighbours per epoch
MAX_STREAK = 0xFFFF
MAX_EPOCH_LENGTH = 7 * 24 * 3600
_HEAD = struct.Struct("!4s32sIIBBB")
_ENTRY = struct.Struct("!16sQH")
SIG_LEN = 64
MAX_SIZE = _HEAD.size + MAX_ENTRIES * _ENTRY.size + SIG_LEN


class ReportError(ValueError):
    """A report is malformed, not canonical or badly signed; the text says which."""


# The signed-record code every measurement report shares (traffic reports
# here, probe reports in L{meshvpn.measure.probereports}): a body that
# starts with a 4-byte magic and the signer's 32-byte identity key, then an
# Ed25519 signature over a domain string and the body.


def signBody(identity, domain, body):
    """C{body} followed by C{identity}'s signature over C{domain + body}."""
    return body + identity.sign(domain + body)


def splitSigned(raw, error, what, minBody, maxSize):
    """
    The bounds every signed report checks before it is parsed.

    @return: C{raw} as bytes.
    @raise error: shorter than C{minBody} plus a signature, or longer than C{maxSize}.
    """
    raw = bytes(raw)
    if len(raw) < minBody + SIG_LEN:
        raise error(f"{what} too short")
    if len(raw) > maxSize:
        raise error(f"{what} longer than one record may be")
    return raw


def verifySigned(raw, domain, key, error, what):
    """
    @return: the signature (the last L{SIG_LEN} bytes of C{raw}).
    @raise error: not C{key}'s signature over C{domain} and the rest of C{raw}.
    """
    body, sig = raw[:-SIG_LEN], raw[-SIG_LEN:]
    try:
        VerifyKey(key).verify(domain + body, sig)
    except (BadSignatureError, ValueError, TypeError):
        raise error(f"bad {what} signature") from None
    return sig


def prefixOf(nodeId):
    """The part of a node id a report names it by."""
    return bytes(nodeId[:PREFIX])


@attrs.frozen
class Entry:
    neighbour: bytes  # 16-byte node id prefix
    bytes: int  # exchanged with that neighbour during the epoch, both directions
    streak: int  # epochs in a row (this one included) the reporter saw it carry traffic


@attrs.frozen
class ReportPart:
    """One signed part of a relay's report for one epoch."""

    identityKey: bytes
    epoch: int
    epochLength: int
    part: int
    parts: int
    entries: tuple
    signature: bytes = b""
    raw: bytes = attrs.field(default=b"", eq=False, repr=False)

    @property
    def reporter(self):
        """The reporter's node id (SHA-256 of its identity key)."""
        return hashlib.sha256(self.identityKey).digest()


def _check(identityKey, epoch, epochLength, part, parts, entries):
    if len(identityKey) != 32:
        raise ReportError("identity key must be 32 bytes")
    if not 0 <= epoch < 2**32:
        raise ReportError("epoch out of range")
    if not 0 < epochLength <= MAX_EPOCH_LENGTH:
        raise ReportError(f"epoch length must be 1..{MAX_EPOCH_LENGTH} s")
    if not 0 < parts <= MAX_PARTS:
        raise ReportError(f"parts must be 1..{MAX_PARTS}")
    if not 0 <= part < parts:
        raise ReportError("part index not below parts")
    if len(entries) > MAX_ENTRIES:
        raise ReportError(f"more than {MAX_ENTRIES} entries in one part")
    me = prefixOf(hashlib.sha256(identityKey).digest())
    last = None
    for e in entries:
        if len(e.neighbour) != PREFIX:
            raise ReportError(f"neighbour prefix must be {PREFIX} bytes")
        if e.neighbour == me:
            raise ReportError("a report may not name its reporter")
        if last is not None and e.neighbour <= last:
            raise ReportError("entries not sorted by neighbour or duplicated")
        if not 0 < e.bytes < 2**64:
            raise ReportError("entry bytes must be 1..2^64-1")
        if not 0 < e.streak <= MAX_STREAK:
            raise ReportError(f"entry streak must be 1..{MAX_STREAK}")
        last = e.neighbour


def _body(identityKey, epoch, epochLength, part, parts, entries):
    out = [_HEAD.pack(MAGIC, identityKey, epoch, epochLength, part, parts, len(entries))]
    out += [_ENTRY.pack(e.neighbour, e.bytes, e.streak) for e in entries]
    return b"".join(out)


def signPart(identity, epoch, epochLength, part, parts, entries):
    """
    Sign one part with C{identity} (an L{meshvpn.interfaces.INodeIdentity}).

    @param entries: L{Entry}s, sorted by neighbour.
    @return: a L{ReportPart} (its C{raw} is what travels).
    """
    entries = tuple(entries)
    _check(identity.identityPublicKey, epoch, epochLength, part, parts, entries)
    body = _body(identity.identityPublicKey, epoch, epochLength, part, parts, entries)
    return parsePart(signBody(identity, SIG_DOMAIN, body))


def makeReport(identity, epoch, epochLength, traffic):
    """
    The signed parts of this epoch's report.

    @param traffic: C{{neighbourNodeId: (bytes, streak)}}; zero-byte
        neighbours are left out, and beyond L{MAX_PARTS} * L{MAX_ENTRIES}
        neighbours only the busiest are kept.
    @return: a list of L{ReportPart}s (one, empty, when there was no traffic).
    """
    me = prefixOf(hashlib.sha256(identity.identityPublicKey).digest())
    rows = [(prefixOf(n), int(b), max(1, min(int(s), MAX_STREAK))) for n, (b, s) in traffic.items() if b > 0]
    rows = [r for r in rows if r[0] != me]
    rows.sort(key=lambda r: (-r[1], r[0]))
    rows = sorted(rows[: MAX_PARTS * MAX_ENTRIES])
    entries = [Entry(p, min(b, 2**64 - 1), s) for p, b, s in rows]
    chunks = [entries[i : i + MAX_ENTRIES] for i in range(0, len(entries), MAX_ENTRIES)] or [[]]
    return [signPart(identity, epoch, epochLength, i, len(chunks), c) for i, c in enumerate(chunks)]


def parsePart(raw, verify=True):
    """
    Parse (and by default verify the signature of) one report part.

    @raise ReportError: malformed, not canonical, trailing bytes or bad signature.
    """
    raw = splitSigned(raw, ReportError, "report", _HEAD.size, MAX_SIZE)
    magic, key, epoch, length, part, parts, count = _HEAD.unpack_from(raw)
    if magic != MAGIC:
        raise ReportError("not a bandwidth report (bad magic)")
    if len(raw) != _HEAD.size + count * _ENTRY.size + SIG_LEN:
        raise ReportError("report length does not match its entry count")
    entries = tuple(Entry(*_ENTRY.unpack_from(raw, _HEAD.size + i * _ENTRY.size)) for i in range(count))
    _check(key, epoch, length, part, parts, entries)
    sig = verifySigned(raw, SIG_DOMAIN, key, ReportError, "report") if verify else raw[-SIG_LEN:]
    return ReportPart(key, epoch, length, part, parts, entries, sig, raw)


@attrs.frozen
class Report:
    """A relay's whole report for one epoch: its parts joined."""

    reporter: bytes  # node id
    identityKey: bytes
    epoch: int
    epochLength: int
    traffic: dict = attrs.field(eq=False)  # neighbour prefix -> (bytes, streak)
    parts: tuple = attrs.field(eq=False, repr=False)  # the signed ReportParts


def joinParts(parts):
    """
    One L{Report} from all the parts of one reporter's epoch.

    @raise ReportError: parts missing, duplicated, of different reporters
        or epochs, or out of order.
    """
    parts = sorted(parts, key=lambda p: p.part)
    if not parts:
        raise ReportError("no parts")
    first = parts[0]
    if [p.part for p in parts] != list(range(first.parts)):
        raise ReportError(f"report parts incomplete: have {[p.part for p in parts]} of {first.parts}")
    traffic = {}
    last = None
    for p in parts:
        if (p.identityKey, p.epoch, p.epochLength, p.parts) != (first.identityKey, first.epoch, first.epochLength,
                                                                first.parts):
            raise ReportError("report parts of different reporters or epochs")
        for e in p.entries:
            if last is not None and e.neighbour <= last:
                raise ReportError("report parts overlap or are out of order")
            traffic[e.neighbour] = (e.bytes, e.streak)
            last = e.neighbour
    return Report(first.reporter, first.identityKey, first.epoch, first.epochLength, traffic, tuple(parts))
