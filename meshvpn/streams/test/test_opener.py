"""Tests for CircuitStreamOpener: circuits per isolation key, retry when a circuit dies, RESOLVED answers."""

from twisted.internet import defer
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from meshvpn.streams.opener import CircuitStreamOpener
from meshvpn.errors import NoPath, StreamRefused
from meshvpn.interfaces import IStreamOpener
from meshvpn.onion.endreasons import EndReason
from meshvpn.onion.streammsgs import AnswerType


class FakeMux:
    """The circuit's stream layer: RESOLVED answers for resolve()."""

    def __init__(self):
        self.asked = []

    def resolve(self, name):
        self.asked.append(name)
        if name.endswith(".in-addr.arpa"):
            return defer.succeed([(AnswerType.HOSTNAME, b"host.example", 60)])
        if name == "nx.example":
            return defer.succeed([(AnswerType.ERROR_NONTRANSIENT, b"", 0)])
        return defer.succeed([(AnswerType.IPV4, bytes([198, 18, 0, 1]), 60), (AnswerType.IPV6, bytes(15) + b"\x01", 60)])


class FakeCircuit:
    def __init__(self, outcomes):
        self.outcomes = outcomes
        self.opened = []
        self.streamHandler = FakeMux()

    def openStream(self, host, port, isolation=None):
        self.opened.append((host, port, isolation))
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            return defer.fail(outcome)
        return defer.succeed(outcome)


def Opener(manager, **kw):
    """The opener without multipath: these tests look at the stream it hands out."""
    return CircuitStreamOpener(manager, multipath=None, **kw)


class FakeManager:
    def __init__(self, circuits):
        self.circuits = circuits
        self.asked = []

    def getCircuit(self, target=None, isolation=None):
        self.asked.append((target, isolation))
        if not self.circuits:
            return defer.fail(NoPath())
        return defer.succeed(self.circuits.pop(0))


class CircuitStreamOpenerTests(unittest.TestCase):
    def test_interface(self):
        self.assertTrue(verifyObject(IStreamOpener, Opener(FakeManager([]))))

    def test_targetAndIsolationReachManager(self):
        m = FakeManager([FakeCircuit(["stream"])])
        self.assertEqual(self.successResultOf(Opener(m).openStream("example.com", 443, "k")), "stream")
        self.assertEqual(m.asked, [(("example.com", 443), "k")])

    def test_deadCircuitRetriedOnce(self):
        m = FakeManager([FakeCircuit([StreamRefused(EndReason.DESTROY)]), FakeCircuit(["stream"])])
        self.assertEqual(self.successResultOf(Opener(m).openStream("example.com", 443, "k")), "stream")

    def test_retriesBounded(self):
        m = FakeManager([FakeCircuit([StreamRefused(EndReason.DESTROY)]) for _ in range(3)])
        f = self.failureResultOf(Opener(m).openStream("example.com", 443, "k"), StreamRefused)
        self.assertEqual(f.value.reason, EndReason.DESTROY)
        self.assertEqual(len(m.asked), 2)

    def test_policyRefusalNotRetried(self):
        m = FakeManager([FakeCircuit([StreamRefused(EndReason.EXITPOLICY)]), FakeCircuit(["stream"])])
        f = self.failureResultOf(Opener(m).openStream("example.com", 25, "k"), StreamRefused)
        self.assertEqual(f.value.reason, EndReason.EXITPOLICY)

    def test_noPath(self):
        self.failureResultOf(Opener(FakeManager([])).openStream("example.com", 443, "k"), NoPath)

    def test_resolve(self):
        m = FakeManager([FakeCircuit([]), FakeCircuit([]), FakeCircuit([])])
        o = Opener(m)
        self.assertEqual(self.successResultOf(o.resolve("example.com", "k")), ["198.18.0.1", "::1"])
        self.assertEqual(self.successResultOf(o.resolvePTR("198.18.0.1", "k")), ["host.example"])
        self.assertEqual(m.asked[0], (None, "k"))
        f = self.failureResultOf(o.resolve("nx.example", "k"), StreamRefused)
        self.assertEqual(f.value.reason, EndReason.RESOLVEFAILED)


class BulkWrapping(unittest.TestCase):
    def test_streamsAreBulkStreamsByDefault(self):
        from meshvpn.streams.bulkstream import BulkStream

        m = FakeManager([FakeCircuit(["stream"])])
        got = self.successResultOf(CircuitStreamOpener(m).openStream("example.com", 443, "k"))
        self.assertIsInstance(got, BulkStream)
        self.assertEqual(got.inner, "stream")
        self.assertEqual(got.detector.threshold, 1 << 20)
