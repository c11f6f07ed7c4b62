"""Signed traffic reports: one encoding, every malformed or forged part refused with a reason."""

import hashlib
import random

from hypothesis import strategies as st
from nacl.public import PrivateKey
from nacl.signing import SigningKey
from twisted.trial import unittest

from meshvpn.identity import NodeIdentity
from meshvpn.measure.reports import (
    MAX_ENTRIES,
    Entry,
    ReportError,
    _body,
    joinParts,
    makeReport,
    parsePart,
    prefixOf,
    signPart,
)
from meshvpn.measure.test.parserfuzz import malformedRecordTests

_rng = random.Random(19)


def identity():
    return NodeIdentity(SigningKey(_rng.randbytes(32)), PrivateKey(_rng.randbytes(32)))


def nodeId():
    return _rng.randbytes(32)


ME = identity()


class RoundTripTests(unittest.TestCase):
    def test_oneSmallReport(self):
        a, b = nodeId(), nodeId()
        parts = makeReport(ME, 7, 3600, {a: (1000, 3), b: (5, 1), nodeId(): (0, 1)})
        self.assertEqual(len(parts), 1)
        p = parsePart(parts[0].raw)
        self.assertEqual(p, parts[0])
        self.assertEqual(p.reporter, ME.nodeId)
        report = joinParts([p])
        self.assertEqual(report.traffic, {prefixOf(a): (1000, 3), prefixOf(b): (5, 1)})  # zero bytes left out
        self.assertEqual((report.epoch, report.epochLength), (7, 3600))

    def test_emptyReportIsOnePart(self):
        parts = makeReport(ME, 1, 60, {})
        self.assertEqual([len(p.entries) for p in parts], [0])
        self.assertEqual(joinParts(parts).traffic, {})

    def test_everyPartFitsOneDHTRecord(self):
        traffic = {nodeId(): (_rng.randrange(1, 2**40), _rng.randrange(1, 100)) for _ in range(3 * MAX_ENTRIES + 5)}
        parts = makeReport(ME, 2, 600, traffic)
        self.assertEqual(len(parts), 4)
        self.assertTrue(all(len(p.raw) <= 1024 for p in parts))
        report = joinParts(list(reversed(parts)))
        self.assertEqual(report.traffic, {prefixOf(n): v for n, v in traffic.items()})

    def test_reporterNeverNamesItself(self):
        parts = makeReport(ME, 1, 60, {ME.nodeId: (100, 1)})
        self.assertEqual(parts[0].entries, ())


class RefusalTests(unittest.TestCase):
    def raw(self, entries, key=None, epoch=1, length=60, part=0, parts=1, signer=ME):
        body = _body(key or signer.identityPublicKey, epoch, length, part, parts, entries)
        return body + signer.sign(b"meshvpn-bw-report-v1\x00" + body)

    def assertRefused(self, raw, why):
        e = self.assertRaises(ReportError, parsePart, raw)
        self.assertIn(why, str(e))

    def test_unsortedOrDuplicate(self):
        a, b = sorted([prefixOf(nodeId()), prefixOf(nodeId())])
        self.assertRefused(self.raw([Entry(b, 1, 1), Entry(a, 1, 1)]), "sorted")
        self.assertRefused(self.raw([Entry(a, 1, 1), Entry(a, 2, 1)]), "sorted")

    def test_selfZeroAndStreak(self):
        self.assertRefused(self.raw([Entry(prefixOf(ME.nodeId), 1, 1)]), "its reporter")
        self.assertRefused(self.raw([Entry(prefixOf(nodeId()), 0, 1)]), "bytes")
        self.assertRefused(self.raw([Entry(prefixOf(nodeId()), 5, 0)]), "streak")

    def test_headerFields(self):
        self.assertRefused(self.raw([], length=0), "epoch length")
        self.assertRefused(self.raw([], part=1, parts=1), "part index")
        self.assertRefused(self.raw([], parts=0), "parts")
        self.assertRefused(b"MVB0" + self.raw([])[4:], "magic")
        self.assertRefused(self.raw([])[:-1], "too short")
        self.assertRefused(self.raw([]) + b"\x00", "length")
        self.assertRefused(self.raw([Entry(prefixOf(nodeId()), 1, 1)])[:-3], "length")
        self.assertRefused(b"", "too short")

    def test_forgedSignature(self):
        other = identity()
        # signed by another key than the one it names
        self.assertRefused(self.raw([], key=ME.identityPublicKey, signer=other), "signature")
        raw = bytearray(makeReport(ME, 3, 60, {nodeId(): (10, 1)})[0].raw)
        raw[60] ^= 1  # a byte of the entry
        self.assertRefused(bytes(raw), "signature")

    def test_joinRefusesMixedOrMissingParts(self):
        traffic = {nodeId(): (10, 1) for _ in range(MAX_ENTRIES + 1)}
        a = makeReport(ME, 3, 60, traffic)
        b = makeReport(ME, 4, 60, traffic)
        other = makeReport(identity(), 3, 60, traffic)
        self.assertRaises(ReportError, joinParts, a[:1])
        self.assertRaises(ReportError, joinParts, [a[0], b[1]])
        self.assertRaises(ReportError, joinParts, [a[0], other[1]])
        self.assertRaises(ReportError, joinParts, [a[0], a[0]])
        self.assertRaises(ReportError, joinParts, [])

    def test_signRefusesWhatItCannotEncode(self):
        self.assertRaises(ReportError, signPart, ME, 1, 60, 0, 1, [Entry(b"short", 1, 1)])
        self.assertRaises(ReportError, signPart, ME, 2**32, 60, 0, 1, [])


def signedPart(data):
    traffic = {hashlib.sha256(bytes([i])).digest(): (i + 1, 1 + i % 5) for i in range(data.draw(st.integers(0, 30)))}
    return makeReport(ME, 5, 600, traffic)[0].raw


class FuzzTests(malformedRecordTests(parsePart, ReportError, 1200, signedPart), unittest.TestCase):
    pass
