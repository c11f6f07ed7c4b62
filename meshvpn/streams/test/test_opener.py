"""Tests for CircuitStreamOpener: circuits per isolation key, retry when a circuit dies."""

from twisted.internet import defer
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from meshvpn.streams.opener import CircuitStreamOpener
from meshvpn.errors import NoPath, StreamRefused
from meshvpn.interfaces import IStreamOpener
from meshvpn.onion.endreasons import EndReason


class FakeCircuit:
    def __init__(self, outcomes):
        self.outcomes = outcomes
        self.opened = []

    def openStream(self, host, port, isolation=None):
        self.opened.append((host, port, isolation))
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            return defer.fail(outcome)
        return defer.succeed(outcome)

    def resolve(self, name):
        return defer.succeed(["198.18.0.1"])

    def resolvePTR(self, address):
        return defer.fail(StreamRefused(EndReason.RESOLVEFAILED))


class OnFakeCircuit:
    """Stands in for meshvpn.streams.circuitstream: calls the fake circuit directly."""

    openStreamOn = staticmethod(lambda c, host, port: c.openStream(host, port))
    resolveOn = staticmethod(lambda c, name: c.resolve(name))
    resolvePTROn = staticmethod(lambda c, address: c.resolvePTR(address))


def Opener(manager):
    return CircuitStreamOpener(manager, onCircuit=OnFakeCircuit)


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
        m = FakeManager([FakeCircuit([]), FakeCircuit([])])
        o = Opener(m)
        self.assertEqual(self.successResultOf(o.resolve("example.com", "k")), ["198.18.0.1"])
        self.failureResultOf(o.resolvePTR("198.18.0.1", "k"), StreamRefused)
        self.assertEqual(m.asked[0], (None, "k"))
