"""Payment and measurement records go into every family's DHT, so a client of either family finds them.

A dual-stack node runs an IPv4 and an IPv6 DHT (one per family, BEP 32).
Its payment records (issuer keys, exit terms) and bandwidth reports are
published through L{EveryFamilyDHT}; a client with one family reads its
one DHT and finds them.
"""

from twisted.internet import task
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from meshvpn.dht.everyfamily import EveryFamilyDHT
from meshvpn.dht.records import SHARED, makeRecord, sharedKey
from meshvpn.dht.service import DHTService
from meshvpn.errors import DHTError
from meshvpn.identity import NodeIdentity
from meshvpn.interfaces import IDHT
from meshvpn.measure.publish import ReportPublisher, reportSalt
from meshvpn.payments.records import UNLIMITED, ExitTerms, PaymentRecords
from meshvpn.payments.test.fakes import FakeDHT

T0 = 1_800_000_000


class EveryFamilyTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(T0)
        self.dht4, self.dht6 = FakeDHT(self.clock), FakeDHT(self.clock)
        self.both = EveryFamilyDHT(lambda: [self.dht4, self.dht6])
        self.exit, self.issuer = NodeIdentity.generate(), NodeIdentity.generate()

    def record(self, seq, value=b"v", who=None, kind=0):
        return makeRecord(who or self.exit, b"salt", value, seq, T0 + 600, kind=kind)

    def test_interface(self):
        verifyObject(IDHT, self.both)

    def test_exitTermsReachAnIPv6OnlyClient(self):
        """The exit publishes once; a client with only the IPv6 DHT (or only the IPv4 one) finds the terms."""
        terms = ExitTerms(1 << 20, 0, UNLIMITED)
        self.assertEqual(self.successResultOf(PaymentRecords(self.both, self.exit).publishExitTerms(
            self.issuer.nodeId, terms, 3600)), 2)
        for only in (self.dht6, self.dht4):
            self.assertEqual(self.successResultOf(PaymentRecords(only).fetchExits(self.issuer.nodeId)),
                             {self.exit.nodeId: terms})

    def test_bandwidthReportsInBothFamilies(self):
        class Meter:
            def drain(self):
                return {b"\x01" * 32: 5000}

        pub = ReportPublisher(self.clock, self.exit, lambda: self.both, Meter(), 60)
        epoch = int(self.clock.seconds() // 60)
        self.assertEqual(self.successResultOf(pub.publishEpoch(epoch)), 1)
        for only in (self.dht4, self.dht6):
            self.assertTrue(only.records, only)
        self.assertEqual(self.dht4.records.keys(), self.dht6.records.keys())
        self.assertTrue(all(r.salt == reportSalt(0, epoch) for d in self.dht6.records.values() for r in d.values()))

    def test_storedIfOneFamilyWorks(self):
        self.dht4.fail = True
        self.assertEqual(self.successResultOf(self.both.put(self.record(1))), 1)
        self.dht6.fail = True
        self.assertIn("not stored in any family's DHT", str(self.failureResultOf(self.both.put(self.record(2)),
                                                                                  DHTError).value))

    def test_getTakesTheNewestOfEither(self):
        old, new = self.record(5, b"old"), self.record(7, b"new")
        self.dht4.put(new)
        self.dht6.put(old)
        self.assertEqual(self.successResultOf(self.both.get(old.key)).value, b"new")
        self.assertIsNone(self.successResultOf(self.both.get(b"\x00" * 32)))

    def test_getAllMergesPublishers(self):
        a, b = self.record(1, b"a", kind=SHARED), self.record(1, b"b", who=self.issuer, kind=SHARED)
        newer = self.record(2, b"a2", kind=SHARED)
        self.dht4.put(a)
        self.dht4.put(b)
        self.dht6.put(newer)
        got = self.successResultOf(self.both.getAll(sharedKey(b"salt"), 10))
        self.assertEqual(sorted(r.value for r in got), [b"a2", b"b"])
        self.assertEqual(len(self.successResultOf(self.both.getAll(sharedKey(b"salt"), 1))), 1)

    def test_oneFamilyIsThatDHT(self):
        one = EveryFamilyDHT(lambda: [self.dht6])
        rec = self.record(1)
        self.successResultOf(one.put(rec))
        self.assertEqual(self.dht6.puts, 1)
        self.assertIs(self.successResultOf(one.get(rec.key)), rec)
        self.assertIs(one.clock, self.clock)

    def test_serviceHook(self):
        """The roles' hook: every overlay the node's DHT service runs, its first family first."""

        class Overlay:
            def __init__(self, dht):
                self.dht = dht

        service = DHTService.__new__(DHTService)
        service.overlays = [Overlay(self.dht4), Overlay(self.dht6)]
        self.assertEqual(self.successResultOf(service.everyFamily().put(self.record(1))), 2)
