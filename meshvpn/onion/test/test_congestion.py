"""The Vegas congestion controller (L{meshvpn.onion.flow.VegasWindow}) on a
simulated path, driven by C{task.Clock}: the window grows to the
bandwidth-delay product, shrinks when a queue builds, and recovers after
its link stalls; forged or early SENDMEs are still refused."""

from twisted.internet import task
from twisted.trial import unittest

from meshvpn.onion.flow import FlowError, VegasParams, VegasWindow


class Path:
    """
    A bulk sender on a path with one bottleneck: a FIFO that serves
    C{rate} cells per second, then C{rtt} seconds of propagation for the
    cell and its SENDME together.  Every C{increment}-th cell's SENDME
    reaches the sender when that cell has left the bottleneck plus C{rtt}.
    """

    def __init__(self, rate, rtt):
        self.clock = task.Clock()
        self.rate, self.rtt = rate, rtt
        self.w = VegasWindow(self.clock)
        self.busyUntil = 0.0
        self.outage = None  # (start, end): the bottleneck serves nothing meanwhile
        self.sent = self.acked = 0
        self.maxQueue = 0

    def queue(self):
        """Cells waiting at the bottleneck now."""
        return max(0.0, self.busyUntil - self.clock.seconds()) * self.rate

    def _depart(self, now):
        start = max(self.busyUntil, now)
        if self.outage and self.outage[0] <= start < self.outage[1]:
            start = self.outage[1]
        self.busyUntil = start + 1.0 / self.rate
        return self.busyUntil

    def pump(self):
        now = self.clock.seconds()
        while self.w.window > 0:
            self.sent += 1
            tag = self.sent.to_bytes(8, "big")
            self.w.onSent(tag)
            leaves = self._depart(now)
            if self.sent % self.w.increment == 0:
                self.clock.callLater(self._sendmeAt(leaves) - now, self._sendme, tag)
        self.maxQueue = max(self.maxQueue, self.queue())

    def _sendmeAt(self, leaves):
        """When the SENDME of a cell leaving the bottleneck at C{leaves} reaches the sender."""
        return leaves + self.rtt

    def _sendme(self, tag):
        self.acked += self.w.increment
        self.w.onSendme(tag)
        self.pump()

    def run(self, seconds, step=0.001):
        self.pump()
        end = self.clock.seconds() + seconds
        while self.clock.seconds() < end:
            self.clock.advance(step)

    def bdp(self):
        return self.rate * self.rtt


class Controller(unittest.TestCase):
    def test_growsToBandwidthDelayProduct(self):
        """200 Mbit/s (50,000 cells/s) at 80 ms: the window climbs from 1000 to the BDP of 4000 and the path is full."""
        p = Path(50_000, 0.080)
        p.run(3.0)
        acked = p.acked
        p.run(5.0)
        rate = (p.acked - acked) / 5.0
        self.assertGreater(rate, 0.95 * p.rate)
        self.assertGreaterEqual(p.w.cwnd, p.bdp())
        # The standing queue stays within a quarter of the round trip (plus one increment).
        self.assertLessEqual(p.w.cwnd, p.bdp() * 1.25 + p.w.increment)
        self.assertLess(p.queue(), p.bdp() * 0.25 + p.w.increment)

    def test_smallPipeNeverLoadsAQueue(self):
        """A path whose BDP is below the initial window: the window comes down to it, the queue stays short."""
        p = Path(5_000, 0.040)  # BDP 200 cells
        p.run(10.0)
        self.assertLessEqual(p.w.cwnd, p.bdp() + VegasParams.beta + 2 * p.w.increment)
        self.assertLess(p.queue(), VegasParams.beta + 2 * p.w.increment)

    def test_shrinksWhenAQueueBuilds(self):
        """The bottleneck halves (another flow took half): the window follows it down, the queue drains."""
        p = Path(50_000, 0.080)
        p.run(6.0)
        before = p.w.cwnd
        p.rate = 25_000
        p.run(10.0)
        self.assertLess(p.w.cwnd, before * 0.75)
        self.assertLessEqual(p.w.cwnd, p.bdp() * 1.25 + p.w.increment)
        self.assertLess(p.queue(), p.bdp() * 0.25 + p.w.increment)
        acked = p.acked
        p.run(3.0)
        self.assertGreater((p.acked - acked) / 3.0, 0.9 * p.rate)

    def test_slowPathKeepsAShortQueue(self):
        """
        A circuit a busy CPU holds to 6,000 cells/s (24 Mbit/s) over 3 ms:
        an interactive stream's cell sharing the circuit with a download
        waits behind the download's standing queue.  With fixed queue
        thresholds (alpha 200, beta 400 cells) it waited 62 ms on average;
        capped at what the path drains in C{queueTime}, under 35 ms, and
        the download still fills the path.
        """
        p = Path(6_000, 0.003)
        p.run(5.0)
        acked, waits = p.acked, []
        for _ in range(500):
            p.run(0.01)
            waits.append(p.queue() / p.rate)
        self.assertGreater((p.acked - acked) / 5.0, 0.95 * p.rate)
        self.assertLess(sum(waits) / len(waits), 0.035)
        self.assertLess(max(waits), 0.045)

    def test_queueCapLeavesFastPathsAlone(self):
        """Above about 40,000 cells/s the drained-in-queueTime cap is above the fixed thresholds: the same window as without it."""
        class Uncapped(VegasParams):
            queueTime = 0.0

        windows = []
        for params in (VegasParams, Uncapped):
            p = Path(100_000, 0.040)
            p.w = VegasWindow(p.clock, params)
            p.run(6.0)
            windows.append(p.w.cwnd)
        self.assertEqual(windows[0], windows[1])

    def test_slowStartEndsAtTheQueue(self):
        """
        Slow start on a short path ends within a few round trips of the
        queue showing, not a whole window later (the window overshot to
        2,500 cells on a 128-cell path); on a long one the window stops
        near the path instead of at the 10,000-cell maximum and the path
        carries more in its first 1.5 s.
        """
        class Lagging(VegasParams):
            slowStartSamples = 0

        for rate, rtt, step, most in ((85_000, 0.0015, 0.0001, 1300), (50_000, 0.080, 0.001, 6500)):
            carried = {}
            for params in (VegasParams, Lagging):
                p = Path(rate, rtt)
                p.w = VegasWindow(p.clock, params)
                largest = 0
                for _ in range(150):
                    p.run(0.01, step)
                    largest = max(largest, p.w.cwnd)
                carried[params] = p.acked / 1.5
                if params is VegasParams:
                    self.assertLess(largest, most)
                else:
                    self.assertGreater(largest, most)
            self.assertGreaterEqual(carried[VegasParams], 0.97 * carried[Lagging])
            if rtt > 0.01:
                self.assertGreater(carried[VegasParams], 0.85 * rate)

    def test_slowStartRidesOutLateSendmes(self):
        """
        Every tenth SENDME 8 ms late (a relay's batch, a busy CPU) on an
        80 ms path: no three samples in a row show a queue, so slow start
        runs on to the path's BDP instead of ending at the first late one.
        """
        class Jittery(Path):
            lastAck = 0.0

            def _sendmeAt(self, leaves):
                late = 0.008 if self.sent % (10 * self.w.increment) == 0 else 0.0
                # a late SENDME is not overtaken by the next one
                self.lastAck = max(self.lastAck, leaves + self.rtt + late)
                return self.lastAck

        p = Jittery(50_000, 0.080)
        ended = None
        while ended is None and p.clock.seconds() < 2.0:
            p.run(0.01)
            if not p.w.slowStart:
                ended = p.w.cwnd
        self.assertGreaterEqual(ended, p.bdp())

    def test_recoversAfterLinkStall(self):
        """The bottleneck serves nothing for 2 s (a link lost and re-made): afterwards the path is full again within seconds."""
        p = Path(50_000, 0.080)
        p.run(6.0)
        now = p.clock.seconds()
        p.outage = (now, now + 2.0)
        p.run(2.5)
        self.assertLess(p.w.cwnd, p.bdp())  # the round trip exploded: the window came down
        p.run(6.0)
        acked = p.acked
        p.run(3.0)
        self.assertGreater((p.acked - acked) / 3.0, 0.9 * p.rate)
        self.assertGreaterEqual(p.w.cwnd, p.bdp() * 0.95)

    def test_windowIsBounded(self):
        """However fast the acknowledgements, the window stops at the maximum (what a receiver may have to hold)."""
        p = Path(10_000_000, 0.100)
        p.run(5.0)
        self.assertEqual(p.w.cwnd, VegasParams.maximum)
        self.assertLessEqual(p.w.inflight, VegasParams.maximum)

    def test_appLimitedDoesNotGrow(self):
        """A sender that uses a tenth of its window does not grow it (no credit for capacity never tested)."""
        clock = task.Clock()
        w = VegasWindow(clock)
        for round in range(50):
            tag = round.to_bytes(8, "big")
            for i in range(100):
                w.onSent(tag)
            clock.advance(0.05)
            w.onSendme(tag)
        self.assertEqual(w.cwnd, VegasParams.initial)


class Authenticated(unittest.TestCase):
    def test_forgedTagRefused(self):
        clock = task.Clock()
        w = VegasWindow(clock)
        for i in range(100):
            w.onSent(b"realtag!")
        self.assertRaises(FlowError, w.onSendme, b"\0" * 8)

    def test_sendmeForNothingRefused(self):
        """An acknowledgement before 100 cells went out (an early SENDME to fake a short round trip) is refused."""
        w = VegasWindow(task.Clock())
        for i in range(99):
            w.onSent(b"realtag!")
        self.assertRaises(FlowError, w.onSendme, b"realtag!")

    def test_sendPastWindowRefused(self):
        w = VegasWindow(task.Clock())
        for i in range(VegasParams.initial):
            w.onSent(bytes(8))
        self.assertEqual(w.window, 0)
        self.assertRaises(FlowError, w.onSent, bytes(8))

