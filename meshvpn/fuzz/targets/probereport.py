"""Fuzz target: a measurer's signed probe report (measure/probereports.py, "MVQ1"), as a client reads it from the DHT.

The parser must refuse anything but the one canonical encoding: what it
accepts is sorted, bounded and exactly the bytes it was given, and every
reading's rate is a finite number a client can take a median of.
"""

import math

from meshvpn.fuzz import realmsgs
from meshvpn.fuzz.target import FuzzTarget
from meshvpn.measure.probereports import MAX_TARGETS, ProbeReportError, Reading, parseProbeReport, probedCapacity, signProbeReport


def _run(data):
    report = parseProbeReport(data)
    if report.raw != bytes(data):
        raise AssertionError("an accepted probe report is not the bytes it came in")
    targets = [r.target for r in report.readings]
    if targets != sorted(set(targets)) or len(targets) > MAX_TARGETS:
        raise AssertionError(f"accepted {len(targets)} targets, unsorted or duplicated")
    rates = [r.rate for r in report.readings]
    if not all(math.isfinite(x) and x >= 0 for x in rates):
        raise AssertionError(f"a reading's rate is {rates}")
    probedCapacity([(x, None) for x in rates], 5)


def _seeds():
    me = realmsgs.identity(21)
    targets = [realmsgs.identity(22 + i).nodeId[:16] for i in range(3)]
    full = [Reading(bytes([i]) * 16, 2**64 - 1 - i, 3_600_000) for i in range(MAX_TARGETS)]
    return [
        signProbeReport(me, 493333, 3600, [Reading(t, 1_000_000 * (i + 1), 20_000) for i, t in enumerate(targets)]).raw,
        signProbeReport(me, 0, 1, []).raw,
        signProbeReport(me, 2**32 - 1, 3600, full).raw,
    ]


TARGET = FuzzTarget("probe-report", "measure/probereports.py parseProbeReport (MVQ1: a measurer's signed readings, from the DHT)",
                    (ProbeReportError,), _run, _seeds)
