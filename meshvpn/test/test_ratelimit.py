"""Tests for meshvpn.ratelimit: token buckets and hierarchical, pausing throttles on task.Clock."""

from twisted.internet import task
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from meshvpn.interfaces import IStatusSource, ITokenBucket
from meshvpn.ratelimit import BandwidthLimiter, BucketTable, TokenBucket


class Producer:
    def __init__(self):
        self.paused = False
        self.events = []

    def pauseProducing(self):
        self.paused = True
        self.events.append("pause")

    def resumeProducing(self):
        self.paused = False
        self.events.append("resume")

    def stopProducing(self):
        self.events.append("stop")


class TokenBucketTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()

    def test_interface(self):
        self.assertTrue(verifyObject(ITokenBucket, TokenBucket(self.clock, 100, 10)))

    def test_burstThenRate(self):
        b = TokenBucket(self.clock, rate=1000, burst=500)
        self.assertEqual(b.consume(500), 0)
        # 250 bytes of debt at 1000 B/s: a quarter second.
        self.assertAlmostEqual(b.consume(250), 0.25)
        self.clock.advance(0.25)
        self.assertAlmostEqual(b.available(), 0)
        self.clock.advance(10)
        self.assertEqual(b.available(), 500)  # never more than the burst

    def test_unlimited(self):
        b = TokenBucket(self.clock, None)
        self.assertEqual(b.consume(10**12), 0)

    def test_badParameters(self):
        self.assertRaises(ValueError, TokenBucket, self.clock, 0)
        self.assertRaises(ValueError, TokenBucket, self.clock, -5, 10)

    def test_longRunAverageIsRate(self):
        b = TokenBucket(self.clock, rate=10_000, burst=1000)
        sent = 0
        while self.clock.seconds() < 100:
            wait = b.consume(1500)
            sent += 1500
            self.clock.advance(wait)
        # 100 s at 10 kB/s plus the initial burst.
        self.assertLess(abs(sent / self.clock.seconds() - 10_000), 100)


    def test_tryConsumeTakesAllOrNothing(self):
        b = TokenBucket(self.clock, rate=1, burst=2)
        self.assertTrue(b.tryConsume())
        self.assertTrue(b.tryConsume())
        self.assertFalse(b.tryConsume())
        self.assertEqual(b.available(), 0)  # a refusal costs nothing: no debt
        self.clock.advance(1)
        self.assertTrue(b.tryConsume())


class BucketTableTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()

    def test_perKey(self):
        t = BucketTable(self.clock, rate=1, burst=2, maxKeys=10)
        self.assertEqual([t.tryConsume("a") for _ in range(3)], [True, True, False])
        self.assertTrue(t.tryConsume("b"))  # another key has its own bucket
        self.clock.advance(1)
        self.assertTrue(t.tryConsume("a"))
        self.assertFalse(t.tryConsume("a"))

    def test_boundedLeastRecentForgotten(self):
        t = BucketTable(self.clock, rate=1, burst=1, maxKeys=2)
        t.tryConsume("a")
        t.tryConsume("b")
        self.assertFalse(t.tryConsume("a"))  # "a" is now the most recent
        t.tryConsume("c")  # forgets "b"
        self.assertEqual(len(t), 2)
        self.assertFalse(t.tryConsume("a"))
        self.assertTrue(t.tryConsume("b"))  # forgotten, so full again
        for i in range(1000):
            t.tryConsume(i)
        self.assertEqual(len(t), 2)


class ThrottleTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()

    def test_circuitLimitPausesThenResumes(self):
        limiter = BandwidthLimiter(self.clock, circuitRate=1000, circuitBurst=1000)
        c = limiter.circuit(7)
        p = Producer()
        c.addProducer(p)
        self.assertEqual(c.account(1000), 0)
        self.assertFalse(p.paused)
        wait = c.account(500)
        self.assertAlmostEqual(wait, 0.5)
        self.assertTrue(p.paused)  # backpressure, not a drop
        self.clock.advance(0.49)
        self.assertTrue(p.paused)
        self.clock.advance(0.01)
        self.assertFalse(p.paused)
        self.assertEqual(p.events, ["pause", "resume"])

    def test_nodeLimitAppliesAcrossCircuits(self):
        limiter = BandwidthLimiter(self.clock, rate=1000, burst=1000, circuitRate=10_000, circuitBurst=10_000)
        a, b = limiter.circuit(1), limiter.circuit(2)
        pa, pb = Producer(), Producer()
        a.addProducer(pa)
        b.addProducer(pb)
        a.account(800)
        self.assertFalse(pa.paused)
        # b's own bucket is full, but the node's is not: a byte must pass both.
        self.assertAlmostEqual(b.account(700), 0.5)
        self.assertTrue(pb.paused)
        self.assertFalse(pa.paused)
        self.assertGreater(a.account(1), 0)
        self.assertTrue(pa.paused)
        self.clock.advance(0.6)
        self.assertFalse(pa.paused or pb.paused)

    def test_resumeWaitsForNodeDebt(self):
        limiter = BandwidthLimiter(self.clock, rate=1000, burst=1000, circuitRate=1000, circuitBurst=1000)
        a, b = limiter.circuit(1), limiter.circuit(2)
        pa = Producer()
        a.addProducer(pa)
        a.account(1100)  # paused 0.1 s
        b.account(2000)  # the node now owes 2.1 s worth more
        self.clock.advance(0.1)
        self.assertTrue(pa.paused)
        self.clock.advance(2.0)
        self.assertFalse(pa.paused)

    def test_pauseExtendsNotStacks(self):
        limiter = BandwidthLimiter(self.clock, circuitRate=1000, circuitBurst=100)
        c = limiter.circuit(1)
        p = Producer()
        c.addProducer(p)
        c.account(600)
        c.account(500)  # while paused: the resume moves later, one pause only
        self.assertEqual(p.events, ["pause"])
        self.clock.advance(0.5)
        self.assertTrue(p.paused)
        self.clock.advance(0.5)
        self.assertEqual(p.events, ["pause", "resume"])

    def test_producerAddedWhilePausedIsPaused(self):
        limiter = BandwidthLimiter(self.clock, circuitRate=100, circuitBurst=100)
        c = limiter.circuit(1)
        c.account(200)
        p = Producer()
        c.addProducer(p)
        self.assertTrue(p.paused)

    def test_statusAccounting(self):
        limiter = BandwidthLimiter(self.clock, rate=10**6, burst=10**6)
        self.assertTrue(verifyObject(IStatusSource, limiter))
        c = limiter.circuit(42)
        c.account(100, "in")
        c.account(30, "out")
        limiter.circuit(43).account(5, "in")
        st = limiter.status()
        self.assertEqual(st["circuits"]["42"], {"bytes_in": 100, "bytes_out": 30, "paused": False, "pauses": 0})
        self.assertEqual((st["bytes_in"], st["bytes_out"]), (105, 30))
        c.close()
        self.assertNotIn("42", limiter.status()["circuits"])

    def test_closeCancelsResume(self):
        limiter = BandwidthLimiter(self.clock, circuitRate=100, circuitBurst=100)
        c = limiter.circuit(1)
        p = Producer()
        c.addProducer(p)
        c.account(500)
        c.close()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_circuitTableBounded(self):
        limiter = BandwidthLimiter(self.clock, maxCircuits=2)
        limiter.circuit(1)
        limiter.circuit(2)
        limiter.circuit(2)
        self.assertRaises(OverflowError, limiter.circuit, 3)

    def test_unlimitedNeverPauses(self):
        limiter = BandwidthLimiter(self.clock)
        c = limiter.circuit(1)
        p = Producer()
        c.addProducer(p)
        self.assertEqual(c.account(10**9), 0)
        self.assertEqual(p.events, [])


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


class TokenBucketPropertyTests(unittest.TestCase):
    @settings(max_examples=300, deadline=None)
    @given(
        st.integers(1, 10**7),
        st.integers(1, 10**7),
        st.lists(st.tuples(st.integers(1, 10**6), st.floats(0, 2)), min_size=1, max_size=50),
    )
    def test_honouredWaitsNeverExceedRatePlusBurst(self, rate, burst, sends):
        clock = task.Clock()
        bucket = TokenBucket(clock, rate, burst)
        sent = 0
        for size, idle in sends:
            clock.advance(idle)
            wait = bucket.consume(size)
            self.assertGreaterEqual(wait, 0)
            sent += size
            clock.advance(wait)
            # Whoever waits as told sends at most burst + rate * time.
            self.assertLessEqual(sent, burst + rate * clock.seconds() + 1e-6 * sent + 1)


class SourceKeyTests(unittest.TestCase):
    """Per-source limits: an IPv6 host is its /64, IPv4-mapped is IPv4, anything else passes through unchanged."""

    def test_keys(self):
        from meshvpn.ratelimit import sourceKey

        self.assertEqual(sourceKey("198.18.0.1"), "198.18.0.1")
        self.assertEqual(sourceKey("2001:2:66:1::1"), "2001:2:66:1::/64")
        self.assertEqual(sourceKey("2001:2:66:1:ffff:ffff:ffff:ffff"), "2001:2:66:1::/64")
        self.assertNotEqual(sourceKey("2001:2:66:2::1"), sourceKey("2001:2:66:1::1"))
        self.assertEqual(sourceKey("::ffff:198.18.0.1"), "198.18.0.1")
        self.assertIsNone(sourceKey(None))

    @given(st.one_of(st.text(max_size=60), st.ip_addresses().map(str)))
    def test_anyTextNeverRaises(self, text):
        from meshvpn.ratelimit import sourceKey

        self.assertIsInstance(sourceKey(text), str)
