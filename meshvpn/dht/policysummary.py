"""An exit's policy summary: what a client knows of an exit's policy before choosing it.

The summary is Tor's (the microdescriptor ``p`` line): C{"accept PORTS"}
or C{"reject PORTS"}, PORTS a comma-separated list of C{N} or C{N-M}, in
order; an exit computes it from its full policy
(L{meshvpn.exit.policy.ExitPolicy.summary}, Tor's C{policy_summarize}).
Here is only its format, shared by the exit that writes it, the descriptor
that carries it and the client that checks it:

  - L{formatSummary}: from the accepted port ranges to text, Tor's way:
    the shorter of the two lists (C{accept} on a tie), C{accept 1-65535} /
    C{reject 1-65535} for all or nothing, and when both lists are longer
    than L{MAX_SUMMARY_LEN} allows, the accept list cut at its last comma
    that fits (a client then believes a few accepted ports are refused,
    never the reverse);
  - L{parseSummary} (strict: the text came from a peer) and
    L{summaryAllows}, the client's check for one port;
  - L{encodeSummary} / L{decodeSummary}: the compact bytes a descriptor
    carries.  A 1000-character summary must fit a descriptor inside one DHT
    record (1024 bytes) next to keys, addresses and a signature, so the
    ranges are stored as varint gaps and lengths: at most 2/3 of the text's
    size, a few bytes for typical policies.  Exactly one encoding per
    summary (ranges sorted, merged, minimal varints), so a descriptor has
    one encoding too.
"""

from meshvpn.errors import MeshVPNError

MAX_SUMMARY_LEN = 1000  # Tor's MAX_EXITPOLICY_SUMMARY_LEN
ALL_PORTS = (1, 65535)
_ACCEPT, _REJECT = "accept", "reject"


class SummaryError(MeshVPNError, ValueError):
    """A policy summary is malformed, not canonical, or too long; the message says which."""


def _merge(ranges):
    merged = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return merged


def complement(ranges):
    """The ports in 1-65535 not in C{ranges} (sorted, merged)."""
    out, nxt = [], 1
    for lo, hi in _merge(ranges):
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = hi + 1
    if nxt <= 65535:
        out.append((nxt, 65535))
    return out


def formatRanges(ranges):
    return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ranges)


def formatSummary(accepted):
    """
    @param accepted: the accepted port ranges C{[(low, high), ...]}.
    @return: the summary text, at most L{MAX_SUMMARY_LEN} characters.
    """
    accepted = _merge(accepted)
    rejected = complement(accepted)
    if not accepted:
        return "reject 1-65535"
    if not rejected:
        return "accept 1-65535"
    acceptText, rejectText = formatRanges(accepted), formatRanges(rejected)
    room = MAX_SUMMARY_LEN - len("accept ")
    if len(acceptText) > room and len(rejectText) > room:
        return "accept " + acceptText[: acceptText.rfind(",", 0, room + 1)]
    if len(rejectText) < len(acceptText):
        return "reject " + rejectText
    return "accept " + acceptText


def _port(text, summary):
    if not (0 < len(text) <= 5 and text.isascii() and text.isdigit()):
        raise SummaryError(f"{summary[:80]!r}: bad port {text[:12]!r}")
    return int(text)


def parseSummary(summary):
    """
    @return: C{(accept: bool, [(low, high), ...])} from summary text.
    @raise SummaryError: malformed or longer than L{MAX_SUMMARY_LEN}.
    """
    if not isinstance(summary, str) or len(summary) > MAX_SUMMARY_LEN:
        raise SummaryError("policy summary missing or longer than 1000 characters")
    action, _, ports = summary.partition(" ")
    if action not in (_ACCEPT, _REJECT) or not ports:
        raise SummaryError(f"{summary[:80]!r}: expected 'accept|reject PORTLIST'")
    ranges = []
    for part in ports.split(","):
        lo, sep, hi = part.partition("-")
        a = _port(lo, summary)
        b = _port(hi, summary) if sep else a
        if not 1 <= a <= b <= 65535:
            raise SummaryError(f"{summary[:80]!r}: bad port range {part!r}")
        ranges.append((a, b))
    return action == _ACCEPT, ranges


def summaryAllows(summary, port):
    """
    The client's check when choosing an exit for C{port}: does the exit's
    summary accept it?  A malformed summary, or a port that is not an
    C{int} in 1-65535, allows nothing.
    """
    if type(port) is not int or not 1 <= port <= 65535:
        return False
    try:
        accept, ranges = parseSummary(summary)
    except SummaryError:
        return False
    inside = any(lo <= port <= hi for lo, hi in ranges)
    return inside if accept else not inside


def _varint(n):
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encodeSummary(summary):
    """
    The descriptor form: one byte (1 accept, 0 reject), then per range
    C{varint(gap << 1 | isRange)} and, for a range, C{varint(high - low - 1)};
    C{gap} is the number of ports between the previous range (port 0 for
    the first) and this one, at least 1 after the first (ranges merged).

    @raise SummaryError: malformed, or not canonical (unsorted, overlapping
        or touching ranges, leading zeros): two texts never encode alike.
    """
    accept, ranges = parseSummary(summary)
    out = [b"\x01" if accept else b"\x00"]
    prev = 0
    for i, (lo, hi) in enumerate(ranges):
        gap = lo - prev - 1
        if gap < (0 if i == 0 else 1):
            raise SummaryError(f"{summary[:80]!r}: ranges not sorted and merged")
        out.append(_varint(gap << 1 | (hi > lo)))
        if hi > lo:
            out.append(_varint(hi - lo - 1))
        prev = hi
    data = b"".join(out)
    if decodeSummary(data, _check=False) != summary:
        raise SummaryError(f"{summary[:80]!r}: not in canonical form")
    return data


def decodeSummary(data, _check=True):
    """
    @return: the summary text of descriptor bytes C{data}.
    @raise SummaryError: malformed, non-canonical or too long.
    """
    data = bytes(data)
    if not data or data[0] not in (0, 1):
        raise SummaryError("policy summary: bad action byte")

    pos = 1

    def varint():
        nonlocal pos
        value = shift = 0
        for _ in range(3):  # 3 bytes hold 21 bits: every gap and length fits
            if pos >= len(data):
                raise SummaryError("policy summary truncated")
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
        raise SummaryError("policy summary: varint too long")

    ranges, prev = [], 0
    while pos < len(data):
        head = varint()
        lo = prev + 1 + (head >> 1)
        hi = lo + 1 + varint() if head & 1 else lo
        if hi > 65535:
            raise SummaryError("policy summary: port beyond 65535")
        ranges.append((lo, hi))
        prev = hi
        if len(ranges) > MAX_SUMMARY_LEN:
            raise SummaryError("policy summary too long")
    if not ranges:
        raise SummaryError("policy summary lists no ports")
    text = ("accept " if data[0] else "reject ") + formatRanges(ranges)
    if len(text) > MAX_SUMMARY_LEN:
        raise SummaryError("policy summary longer than 1000 characters")
    if _check and encodeSummary(text) != data:
        raise SummaryError("policy summary not in canonical form")
    return text
