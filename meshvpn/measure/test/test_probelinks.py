"""A busy target still echoes: the measurer's probe-only link is not paused with the target's cell links.

Two real link managers over in-memory TLS (task.Clock).  The target's read
limiter is deep in debt from a batch of cells on the shared link, so that
link's reading is paused, as in a relay busy forwarding.  Probed on the
shared link (a manager without probe-only links: the fallback), the probe
reads 0; on its own link, it reads the measurer's share of the target.
"""

from twisted.python.failure import Failure
from twisted.trial import unittest

from meshvpn.link.protocol import LinkSettings, State
from meshvpn.link.test.test_manager import Harness, RecordingHandler, result
from meshvpn.measure.probeecho import GRACE
from meshvpn.measure.probeplan import Plan
from meshvpn.measure.probeservice import ProbeService
from meshvpn.onion.readlimit import LinkReadLimiter

EPOCH = 100
RATE = 20_000
PROBE_SECONDS = 4.0
START, LENGTH = 30.0, PROBE_SECONDS


class PausingChannel:
    """What the onion layer's channel does for the limiter: pause and resume its link's reading."""

    def __init__(self, link):
        self.link = link

    def pauseReading(self, by):
        self.link.pauseProducing()

    def resumeReading(self, by):
        self.link.resumeProducing()


class SharedLinksOnly:
    """A link manager of a release without probe-only links: only getLink."""

    def __init__(self, manager):
        self._m = manager

    def getLink(self, descriptor):
        return self._m.getLink(descriptor)

    def setProbeHandler(self, handler):
        self._m.setProbeHandler(handler)


class BusyTargetTests(unittest.TestCase):
    def setUp(self):
        self.h = h = Harness(2)
        h.clock.advance(START)  # epoch 0, the slot just opened
        self.measurerId, self.targetId = h.ids[0].nodeId, h.ids[1].nodeId
        plan = Plan(0, START, LENGTH, {self.targetId: (self.measurerId,)})
        directory = {self.targetId: h.target(1), self.measurerId: h.target(0)}
        for m in h.managers:
            m.setCellHandler(RecordingHandler())
        self.limiter = LinkReadLimiter(h.clock, RATE, RATE)
        self.target = self.service(h.managers[1], 1, directory, plan, self.limiter.bucket)
        self.directory, self.plan = directory, plan

    def service(self, links, index, directory, plan, bucket=None):
        svc = ProbeService(self.h.clock, self.h.ids[index], links, lambda: directory, EPOCH, PROBE_SECONDS,
                           bucket=bucket)
        svc.planOf = svc.echo.planOf = {0: plan}.get
        return svc

    def busyTarget(self):
        """The shared link exists and the target's limiter paused its reading: cells put its bucket in debt."""
        h = self.h
        d = h.managers[0].getLink(h.target(1))
        h.net.flush()
        result(d)
        shared = h.managers[1].linkTo(self.measurerId)
        self.limiter.charge(PausingChannel(shared), 2000)  # ~1 MB at 20 KB/s: paused for the whole slot
        self.assertTrue(shared._readPaused)
        return shared

    def probe(self, links):
        measurer = self.service(links, 0, self.directory, self.plan)
        d = measurer.probeEpoch(0)
        done = []
        d.addBoth(done.append)
        for _ in range(int((PROBE_SECONDS + 1) / 0.05)):
            self.h.clock.advance(0.05)
            self.h.net.flush()
            if done:
                break
        self.assertEqual(len(done), 1)
        self.assertNotIsInstance(done[0], Failure)
        (reading,) = measurer.readingsOf(0)
        return measurer, reading

    def test_aBusyTargetEchoesOnTheProbeLink(self):
        shared = self.busyTarget()
        measurer, reading = self.probe(self.h.managers[0])
        rate = reading.rate
        # the measurer's share of the target (a team of 1: all of it), charged into the target's debt
        self.assertGreater(rate, 0.5 * RATE)
        self.assertLess(rate, 1.5 * RATE + RATE / PROBE_SECONDS)
        self.assertEqual((measurer.counters["dedicated"], measurer.counters["shared_fallback"]), (1, 0))
        self.assertGreater(self.target.echo.counters["echoed"], 0)
        self.assertTrue(shared._readPaused)  # the cell link stayed paused all along
        # the probe link is gone at both ends once the probe is over
        self.h.net.flush()
        self.assertEqual(self.h.managers[0].status()["probe_links_open"], 0)
        self.assertEqual(self.h.managers[1].status()["probe_links_open"], 0)

    def test_onTheSharedLinkItReadsZero(self):
        """The failure this mends, and the fallback: a measurer that cannot open a probe link uses the shared one."""
        self.busyTarget()
        measurer, reading = self.probe(SharedLinksOnly(self.h.managers[0]))
        self.assertEqual(reading.bytes, 0)
        self.assertEqual((measurer.counters["dedicated"], measurer.counters["shared_fallback"]), (0, 1))
        self.assertEqual(measurer.status()["shared_fallback"], 1)

    def test_aTargetThatRefusesProbeLinksIsProbedOnTheSharedLink(self):
        """Fallback: the target takes no probe-only link (below version 5 for it); the shared link is used, counted."""
        d = self.h.managers[0].getLink(self.h.target(1))
        self.h.net.flush()
        result(d)
        # new links to the target fail the probe-only mark (they would be below version 5)
        self.h.managers[1].settings = LinkSettings(versions=(1, 2, 3, 4))
        measurer, reading = self.probe(self.h.managers[0])
        self.assertEqual((measurer.counters["dedicated"], measurer.counters["shared_fallback"]), (0, 1))
        self.assertGreater(reading.bytes, 0)  # idle target: the shared link echoes

    def test_aStrangerGetsNoProbeLink(self):
        """A node outside the target's team opens no probe-only link to it (the plan decides, as for the echo)."""
        h = self.h
        plan = Plan(0, START, LENGTH, {self.targetId: (b"\x01" * 32,)})
        self.target.planOf = self.target.echo.planOf = {0: plan}.get
        d = h.managers[0].openLink(h.target(1))
        h.net.flush()
        link = result(d)
        self.assertIs(link.state, State.CLOSED)
        self.assertEqual(h.managers[1].counters["probe_links_unassigned"], 1)
        self.assertEqual(self.target.echo.counters["links_unassigned"], 1)

    def test_aProbeLinkLivesOnlyInTheSlot(self):
        """The target's own rule: admitted from a team member inside the slot, until its end and the grace."""
        echo = self.target.echo
        self.assertEqual(echo.linkUntil(self.measurerId), START + LENGTH + GRACE)
        self.assertIsNone(echo.linkUntil(None))
        self.assertIsNone(echo.linkUntil(self.targetId))
        self.h.clock.advance(LENGTH + GRACE + 0.1)
        self.assertIsNone(echo.linkUntil(self.measurerId))
        self.assertEqual(echo.counters["links_outside_slot"], 1)
