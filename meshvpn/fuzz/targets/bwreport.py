"""Fuzz target: a relay's signed traffic report (measure/reports.py, "MVB1"), its parts parsed and joined as a client does.

An input is a run of parts, each a u16 length and that many bytes; every
part goes through C{parsePart}, and the parts that parse through
C{joinParts}.  A joined report names each neighbour once, in order, never
its reporter, and never with zero bytes.
"""

import struct

from meshvpn.fuzz import realmsgs
from meshvpn.fuzz.target import FuzzTarget
from meshvpn.measure.reports import ReportError, joinParts, makeReport, parsePart, prefixOf

_LEN = struct.Struct("!H")


def _run(data):
    parts, pos = [], 0
    while pos + _LEN.size <= len(data):
        (n,) = _LEN.unpack_from(data, pos)
        part = parsePart(data[pos + _LEN.size : pos + _LEN.size + n])
        if part.raw != bytes(data[pos + _LEN.size : pos + _LEN.size + n]):
            raise AssertionError("an accepted part is not the bytes it came in")
        parts.append(part)
        pos += _LEN.size + n
    report = joinParts(parts)
    names = list(report.traffic)
    if names != sorted(set(names)) or prefixOf(report.reporter) in report.traffic:
        raise AssertionError("a joined report names a neighbour twice, out of order, or its reporter")
    if any(b <= 0 for b, _ in report.traffic.values()):
        raise AssertionError("a joined report carries a neighbour with no bytes")


def _frame(parts):
    return b"".join(_LEN.pack(len(p.raw)) + p.raw for p in parts)


def _seeds():
    me = realmsgs.identity(31)
    few = {realmsgs.identity(32 + i).nodeId: (1_000_000 * (i + 1), i + 1) for i in range(3)}
    many = {bytes([i, 7]) * 16: (2**40 + i, 24) for i in range(40)}  # two parts of 35 and 5
    return [_frame(makeReport(me, 493333, 3600, few)), _frame(makeReport(me, 493334, 20, many)),
            _frame(makeReport(me, 0, 1, {}))]


TARGET = FuzzTarget("bw-report", "measure/reports.py parsePart + joinParts (MVB1: a relay's signed traffic report, from the DHT)",
                    (ReportError,), _run, _seeds)
