"""A relay's node-wide read limit pauses the links that overspend, then resumes them: no drops."""

from twisted.internet.task import Clock
from twisted.trial import unittest

from meshvpn.link.cellsize import CELL_SIZE
from meshvpn.onion.readlimit import LinkReadLimiter


class FakeChannel:
    def __init__(self):
        self.pausers = set()

    def pauseReading(self, by):
        self.pausers.add(by)

    def resumeReading(self, by):
        self.pausers.discard(by)


class ReadLimitTests(unittest.TestCase):
    def test_pausesThenResumesAtTheRate(self):
        clock = Clock()
        limiter = LinkReadLimiter(clock, rate=100 * CELL_SIZE, burst=100 * CELL_SIZE)
        a, b = FakeChannel(), FakeChannel()
        limiter.charge(a, 100)  # exactly the burst: no pause
        self.assertEqual(a.pausers, set())
        limiter.charge(a, 50)  # half a second of debt
        limiter.charge(b, 10)
        self.assertEqual(a.pausers, {limiter})
        self.assertEqual(b.pausers, {limiter})
        clock.advance(0.4)
        self.assertEqual(a.pausers, {limiter})  # debt of 60 cells takes 0.6 s
        clock.advance(0.25)
        self.assertEqual(a.pausers | b.pausers, set())
        self.assertEqual(limiter.status()["bytes_read"], 160 * CELL_SIZE)
        self.assertEqual(limiter.status()["pauses"], 2)

    def test_forgottenLinkIsNotResumed(self):
        clock = Clock()
        limiter = LinkReadLimiter(clock, rate=CELL_SIZE)
        a = FakeChannel()
        limiter.charge(a, 5)
        limiter.forget(a)
        clock.advance(10)
        self.assertEqual(a.pausers, {limiter})  # a closed link is left alone


class Circuit:
    """Stands in for a RelayCircuit (only its identity matters)."""


class PerCircuitTests(unittest.TestCase):
    def test_busyCircuitPausesItsLinkOthersUnlimited(self):
        clock = Clock()
        limiter = LinkReadLimiter(clock, rate=None, circuitRate=10 * CELL_SIZE, circuitBurst=10 * CELL_SIZE)
        link, busy, quiet = FakeChannel(), Circuit(), Circuit()
        limiter.charge(link, 12, {busy: 10, quiet: 2})
        self.assertEqual(link.pausers, set())  # both within their burst
        limiter.charge(link, 5, {busy: 5})
        self.assertEqual(link.pausers, {limiter})  # busy is 5 cells in debt: half a second
        clock.advance(0.49)
        self.assertEqual(link.pausers, {limiter})
        clock.advance(0.02)
        self.assertEqual(link.pausers, set())
        self.assertEqual(limiter.status()["circuit_bytes_read"], [15 * CELL_SIZE, 2 * CELL_SIZE])

    def test_forgottenCircuitsAreCollected(self):
        import gc

        limiter = LinkReadLimiter(Clock(), rate=None, circuitRate=CELL_SIZE * 100)
        limiter.charge(FakeChannel(), 1, {Circuit(): 1})
        gc.collect()
        self.assertEqual(len(limiter._circuits), 0)  # a destroyed circuit leaves no bucket behind
