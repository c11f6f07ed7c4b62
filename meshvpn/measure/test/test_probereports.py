"""Signed probe readings: one encoding, every malformed or forged report refused with a reason; the clipped median."""

import hashlib
import random

from hypothesis import strategies as st
from nacl.public import PrivateKey
from nacl.signing import SigningKey
from twisted.trial import unittest

from meshvpn.identity import NodeIdentity
from meshvpn.measure.probereports import (
    MAX_SIZE,
    MAX_TARGETS,
    ProbeReportError,
    Reading,
    _body,
    parseProbeReport,
    probedCapacity,
    signProbeReport,
)
from meshvpn.measure.reports import prefixOf
from meshvpn.measure.test.parserfuzz import malformedRecordTests

_rng = random.Random(141)


def identity():
    return NodeIdentity(SigningKey(_rng.randbytes(32)), PrivateKey(_rng.randbytes(32)))


ME = identity()


def target(i):
    return prefixOf(hashlib.sha256(bytes([i])).digest())


class RoundTripTests(unittest.TestCase):
    def test_readingsRoundTrip(self):
        readings = [Reading(target(i), 1000 * (i + 1), 20_000) for i in range(5)]
        r = signProbeReport(ME, 7, 3600, readings)
        again = parseProbeReport(r.raw)
        self.assertEqual(again, r)
        self.assertEqual(again.measurer, hashlib.sha256(ME.identityPublicKey).digest())
        self.assertEqual(sorted(x.target for x in again.readings), [x.target for x in again.readings])
        self.assertEqual(again.readings[0].rate, again.readings[0].bytes / 20)

    def test_theMostTargetsFitOneDHTRecord(self):
        r = signProbeReport(ME, 1, 3600, [Reading(target(i), 2**63, 1) for i in range(MAX_TARGETS)])
        self.assertEqual(len(r.raw), MAX_SIZE)
        self.assertLessEqual(len(r.raw), 1024)


class RefusalTests(unittest.TestCase):
    def refused(self, readings, epoch=1, length=3600, why=""):
        e = self.assertRaises(ProbeReportError, signProbeReport, ME, epoch, length, readings)
        self.assertIn(why, str(e))

    def test_whatItCannotSign(self):
        self.refused([Reading(target(1), 1, 1)] * 2, why="duplicated")
        self.refused([Reading(prefixOf(ME.nodeId), 1, 1)], why="itself")
        self.refused([Reading(target(1), 1, 0)], why="1 ms")
        self.refused([Reading(target(1), 1, 3601 * 1000)], why="1 ms")
        self.refused([Reading(target(i), 1, 1) for i in range(MAX_TARGETS + 1)], why="more than")
        self.refused([Reading(b"short", 1, 1)], why="prefix")
        self.refused([], length=0, why="epoch length")

    def test_unsortedOnTheWire(self):
        a, b = sorted([target(1), target(2)])
        body = _body(ME.identityPublicKey, 1, 3600, (Reading(b, 1, 1), Reading(a, 1, 1)))
        raw = body + ME.sign(b"meshvpn-probe-report-v1\x00" + body)
        e = self.assertRaises(ProbeReportError, parseProbeReport, raw)
        self.assertIn("sorted", str(e))

    def test_forgedOrAnotherKind(self):
        raw = signProbeReport(ME, 1, 3600, [Reading(target(1), 5, 5)]).raw
        self.assertIn("signature", str(self.assertRaises(ProbeReportError, parseProbeReport, raw[:-1] + b"\0")))
        self.assertIn("magic", str(self.assertRaises(ProbeReportError, parseProbeReport, b"MVB1" + raw[4:])))
        self.assertIn("length", str(self.assertRaises(ProbeReportError, parseProbeReport, raw + b"\0")))


def signedReport(data):
    n = data.draw(st.integers(0, 10))
    return signProbeReport(ME, 5, 600, [Reading(target(i), i, 1 + i) for i in range(n)]).raw


class FuzzTests(malformedRecordTests(parseProbeReport, ProbeReportError, 1100, signedReport), unittest.TestCase):
    pass


class ProbedCapacityTests(unittest.TestCase):
    def test_theLowerMedianScaledToTheTeam(self):
        self.assertEqual(probedCapacity([(10.0, 100.0), (30.0, 100.0), (20.0, 100.0), (40.0, 100.0)], 5), 100.0)
        self.assertIsNone(probedCapacity([], 5))

    def test_colludingReadingsAreClippedToTheirMeasurer(self):
        # two colluding measurers of small capacity read their colluder at 10**12: clipped, and the median is
        # the honest three's
        readings = [(10**12, 2.0), (10**12, 2.0), (10.0, 50.0), (11.0, 50.0), (12.0, 50.0)]
        self.assertEqual(probedCapacity(readings, 5), 50.0)
        # a majority of them decides, up to their own capacity
        self.assertEqual(probedCapacity(readings[:2] * 2 + readings[2:], 5), 10.0)
