"""The probe stream end to end on in-memory links: a target echoes only its plan's measurers in the slot; a measurer counts only exact echoes."""

import hashlib

from twisted.internet import task
from twisted.trial import unittest

from meshvpn.measure.probeecho import GRACE, MAX_RATE, ProbeEcho
from meshvpn.measure.probeplan import Plan
from meshvpn.measure.prober import EXPIRE, RECORD, WINDOW, ProbeStream
from meshvpn.measure.test.probefakes import Echoes, linkPair
from meshvpn.ratelimit import TokenBucket

EPOCH = 100


def nid(name):
    return hashlib.sha256(name.encode()).digest()


TARGET, MEASURER, STRANGER = nid("target"), nid("measurer"), nid("stranger")


def plan(epoch=0, start=30.0, length=10.0, team=(MEASURER,)):
    return Plan(epoch, start, length, {TARGET: tuple(team)})


class EchoTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(30)  # epoch 0, the slot just opened
        self.plans = {0: plan()}
        self.echo = ProbeEcho(self.clock, TARGET, self.plans.get, EPOCH)
        self.back = []
        self.here, _ = self.pair(MEASURER)

    def pair(self, peer):
        back = self.back

        class Catch:
            def probeReceived(self, link, seq, data, echo):
                back.append((link.peerId, seq, data, echo))

        # the target's end has the peer as peer; what it sends arrives at the peer's end
        atTarget, atPeer = linkPair(self.clock, TARGET, peer, None, Catch())
        return atTarget, atPeer

    def send(self, link, n=1, size=100):
        return [self.echo.probeReceived(link, i, bytes([i % 256]) * size) for i in range(n)]

    def test_echoesItsMeasurerByteForByte(self):
        self.assertEqual(self.send(self.here), [True])
        self.clock.advance(1)
        self.assertEqual(self.back, [(TARGET, 0, bytes(100), True)])
        self.assertEqual(self.echo.counters["echoed_bytes"], 100)

    def test_neverAReflectorForAnyoneElse(self):
        """The attack: a relay not in the target's team (or a client) makes it send: nothing is echoed."""
        stranger, _ = self.pair(STRANGER)
        self.assertEqual(self.send(stranger, 50), [False] * 50)
        anonymous = self.pair(STRANGER)[0]
        anonymous.peerId = None
        self.assertEqual(self.send(anonymous, 5), [False] * 5)
        self.clock.advance(1)
        self.assertEqual(self.back, [])
        self.assertEqual(self.echo.counters["unassigned"], 55)
        # a measurer of another epoch's plan is a stranger in this one
        self.plans[0] = plan(team=(STRANGER,))
        self.assertEqual(self.send(self.here), [False])

    def test_onlyInsideTheSlot(self):
        self.clock.advance(10 + GRACE - 0.1)  # the slot's end, within the grace
        self.assertEqual(self.send(self.here), [True])
        self.clock.advance(0.2)
        self.assertEqual(self.send(self.here), [False])
        self.assertEqual(self.echo.counters["outside_slot"], 1)
        self.clock.advance(EPOCH)  # the next epoch has no plan known here
        self.assertEqual(self.send(self.here), [False])

    def test_boundedPerMeasurer(self):
        budget = MAX_RATE * (10 + 2 * GRACE)
        self.echo._drawn[MEASURER] = budget - 100
        self.echo._epoch = 0
        self.assertEqual(self.send(self.here, 2), [True, False])
        self.assertEqual(self.echo.counters["over_budget"], 1)

    def test_withinTheNodesBandwidthLimitAheadOfItsCells(self):
        self.echo.bucket = bucket = TokenBucket(self.clock, 1000, 1000)
        bucket.consume(1000)  # the cells took it all
        self.assertEqual(self.send(self.here, 12), [True] * 10 + [False] * 2)
        self.assertEqual(self.echo.counters["no_capacity"], 2)
        # the probe went first: the cells now wait for the debt to be paid
        self.assertLess(bucket.available(), -900)
        self.clock.advance(0.5)
        self.assertEqual(self.send(self.here, 6), [True] * 5 + [False])

    def test_eachMeasurerGetsItsShare(self):
        self.plans[0] = plan(team=(MEASURER, STRANGER))
        self.echo.bucket = TokenBucket(self.clock, 1000, 1000)
        other, _ = self.pair(STRANGER)
        self.assertEqual(self.send(self.here, 6), [True] * 5 + [False])
        self.assertEqual(self.send(other, 6), [True] * 5 + [False])

    def test_neverQueued(self):
        self.here.blocked = True
        self.assertEqual(self.send(self.here), [False])
        self.assertEqual(self.echo.counters["blocked"], 1)


class StreamTests(unittest.TestCase):
    def probe(self, seconds=5.0, delay=0.01, mangle=None):
        clock = task.Clock()
        clock.advance(30)
        echo = ProbeEcho(clock, TARGET, {0: plan()}.get, EPOCH)
        handler = Echoes(echo=echo)
        toTarget, atTarget = linkPair(clock, MEASURER, TARGET, handler, handler, delay=delay)
        # (linkPair's first end is the measurer's: its peer is the target; the target's end has the measurer)
        toTarget.peerId, atTarget.peerId = TARGET, MEASURER
        toTarget.handler, atTarget.handler = handler, handler
        atTarget.mangle = mangle
        stream = ProbeStream(clock, atTarget.other, seconds)
        handler.stream = stream
        d = stream.start()
        for _ in range(int(seconds / 0.01) + 10):
            clock.advance(0.01)
        self.assertTrue(d.called)
        return self.successResultOf(d), stream

    def test_anUnlimitedTargetIsReadAtWindowOverRoundTrip(self):
        (echoed, millis), stream = self.probe(seconds=2.0, delay=0.05)
        self.assertEqual(millis, 2000)
        # one window per 0.1 s round trip (whole records only)
        self.assertAlmostEqual(echoed / 2.0, WINDOW / 0.1, delta=0.15 * WINDOW / 0.1)
        self.assertEqual(stream.mismatched, 0)

    def test_aThrottledTargetIsReadAtItsRate(self):
        rate = 20_000
        clock = task.Clock()
        clock.advance(30)
        echo = ProbeEcho(clock, TARGET, {0: plan()}.get, EPOCH, TokenBucket(clock, rate, rate))
        handler = Echoes(echo=echo)
        toTarget, atTarget = linkPair(clock, MEASURER, TARGET, handler, handler)
        toTarget.peerId, atTarget.peerId = TARGET, MEASURER
        stream = ProbeStream(clock, atTarget.other, 8.0)
        handler.stream = stream
        d = stream.start()
        for _ in range(820):
            clock.advance(0.01)
        echoed, millis = self.successResultOf(d)
        read = echoed * 1000 / millis
        # the rate, plus the one burst the bucket held when the slot opened
        self.assertGreater(read, 0.9 * rate)
        self.assertLess(read, 1.25 * rate)
        self.assertGreater(stream.expired, 0)  # what the target dropped was given up, freeing the window

    def test_changedBytesAreNotCounted(self):
        """The attack: a target that echoes what it did not receive (here: zeros) reads 0."""
        (echoed, _), stream = self.probe(seconds=1.0, mangle=lambda data: bytes(len(data)))
        self.assertEqual(echoed, 0)
        self.assertGreater(stream.mismatched, 0)

    def test_boundedInFlight(self):
        clock = task.Clock()

        class Sink:
            peerId, version, sent = TARGET, 5, 0

            def sendProbe(self, seq, data, echo=False):
                self.sent += 1
                return True

        sink = Sink()
        stream = ProbeStream(clock, sink, 3.0)
        d = stream.start()
        self.assertEqual(sink.sent, WINDOW // RECORD)
        clock.advance(EXPIRE + 0.1)
        self.assertLessEqual(sink.sent, 2 * WINDOW // RECORD)
        self.assertLessEqual(len(stream._outstanding) * RECORD, WINDOW)
        clock.pump([0.05] * 60)
        self.assertEqual(self.successResultOf(d), (0, 3000))
        stream.echoReceived(0, b"late")  # after the end: dropped
        self.assertEqual(stream.echoed, 0)
