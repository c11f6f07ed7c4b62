"""Capacity probes end to end over a simulated DHT: relays probe each other in the slot, publish signed readings, a client's weights follow them.

Six relays throttled to different rates (each its own token bucket, as
--bandwidth-rate gives) run ProbeServices over in-memory links; their
publishers store the traffic and probe reports in a simulated DHT; a
client's weights service reads both.  The attack: the two slowest relays'
links show eight times the traffic their rates allow, confirmed at both
ends (junk they paid honest relays to exchange, or bursts outside the
slot: whatever it is, the reports cannot tell it from capacity); the
probes hold them to what they really forwarded.  (Two relays reporting
huge traffic only with each other gain nothing here even without probes:
the caps and the partners' reading hold them in a network this small and
this regular; doc/measurement.md.)

The read-back: each target signs what each measurer sent it in the slot.
A relay that skips measuring (its whole link for its own echoes, modelled
by a bucket twice its rate) is read twice its rate as a target and held
back to it; targets that claim an honest measurer sent nothing cut it by
at most half, and not at all while they hold less than half of its
targets' weight.  And probes cap the weights only past the deadline.
"""

import os

from twisted.internet import defer
from twisted.trial import unittest

from meshvpn.dht.test.test_rpc import Net
from meshvpn.measure.epoch import epochOf, lastComplete
from meshvpn.measure.probed import MEASURE_SHARE
from meshvpn.measure.probeservice import ProbeService
from meshvpn.measure.probesecrets import ProbeSecrets
from meshvpn.measure.publish import ReportPublisher
from meshvpn.measure.seedservice import SeedService
from meshvpn.measure.service import MeasuredWeights, weightsJSON
from meshvpn.measure.test.probefakes import Descriptor, linkPair
from meshvpn.measure.test.test_publish import FixedMeter
from meshvpn.ratelimit import TokenBucket

EPOCH = 60
PROBE_SECONDS = 5.0
RATES = [10_000, 20_000, 30_000, 40_000, 50_000, 60_000]


class FakeLinks:
    """An ILinkManager's probe side: one open link to every other relay."""

    def __init__(self):
        self.handler = None
        self.ends = {}

    def setProbeHandler(self, handler):
        self.handler = handler

    def getLink(self, descriptor):
        end = self.ends.get(descriptor.nodeId)
        return defer.succeed(end) if end is not None else defer.fail(ConnectionRefusedError("no link"))


class Flow(unittest.TestCase):
    """Six relays, their publishers and a client over a simulated DHT; the tests are in the classes below."""

    skipper = None  # a relay that skips measuring: it probes nobody and echoes with twice its rate
    seeded = False  # relays and the client draw the plans from the seed records (test_probeseedflow)
    rates = RATES

    def setUp(self):
        self.net = Net(self, n=len(self.rates) + 6)
        self.relays = self.net.nodes[:len(self.rates)]
        self.ids = [n.identity.nodeId for n in self.relays]
        self.directory = {i: Descriptor(i) for i in self.ids}
        self.meters, self.probes, self.seeds, managers = {}, [], [], []
        clock = self.net.clock
        for k, (node, rate) in enumerate(zip(self.relays, self.rates)):
            links = FakeLinks()
            echoRate = 2 * rate if k == self.skipper else rate
            seeds = None
            if self.seeded:
                seeds = SeedService(clock, lambda node=node: node, EPOCH, lambda: self.directory, node.identity,
                                    ProbeSecrets())
                seeds.startService()
                self.addCleanup(seeds.stopService)
                self.seeds.append(seeds)
            probes = ProbeService(clock, node.identity, links, lambda: self.directory, EPOCH, PROBE_SECONDS,
                                  bucket=TokenBucket(clock, echoRate, echoRate), seeds=seeds)
            if k == self.skipper:
                probes.probeEpoch = lambda epoch, probes=probes, links=links: self.skipSlot(probes, links, epoch)
            meter = FixedMeter()
            pub = ReportPublisher(clock, node.identity, lambda node=node: node, meter, EPOCH, probes=probes)
            for s in (probes, pub):
                s.startService()
                self.addCleanup(s.stopService)
            self.meters[node.identity.nodeId] = meter
            self.probes.append(probes)
            managers.append(links)
        for i, a in enumerate(self.ids):
            for j, b in enumerate(self.ids[i + 1 :], i + 1):
                ab, ba = linkPair(clock, a, b, managers[i].handler, managers[j].handler, delay=0.02)
                managers[i].ends[b], managers[j].ends[a] = ab, ba
        self.client = self.net.add(clientMode=True)

    def carry(self, inflated=()):
        """Every pair exchanges bytes in proportion to both rates; links of the C{inflated} relays carry 8 times that."""
        def rate(k):
            return self.rates[k] * (8 if k in inflated else 1)

        for i, a in enumerate(self.ids):
            self.meters[a].next = {b: rate(i) * rate(j) // 100 * EPOCH // 100 for j, b in enumerate(self.ids) if b != a}

    def nextEpoch(self):
        now = self.net.clock.seconds()
        self.net.pump((epochOf(now, EPOCH) + 1) * EPOCH - now + 15)

    def weights(self, probes=True, capFrom=0):
        seeds = SeedService(self.net.clock, lambda: self.client, EPOCH) if self.seeded and probes else None
        w = MeasuredWeights(self.net.clock, lambda: self.client, lambda: {i: frozenset({"middle"}) for i in self.ids},
                            EPOCH, directory=(lambda: self.directory) if probes else None, probesCapFrom=capFrom,
                            seeds=seeds)
        self.net.run(w.refresh(), 30)
        return w

    def share(self, w, k):
        total = sum(m.weight for m in w.measures.values())
        return sum(w.measures[self.ids[i]].weight for i in k) / total

    def assertEveryRelayReadAtItsRate(self, w):
        """
        C{w} read every relay at about its rate, in their order, and every
        relay probed 5 targets and echoed only what its plan assigned.

        @return: the probed capacities, in the order of C{self.ids}.
        """
        probed = [w.probedCapacity(i) for i in self.ids]
        self.assertNotIn(None, probed, w.probed)
        self.assertEqual(probed, sorted(probed))
        for got, rate in zip(probed, self.rates):
            # a team of 5 shares the rate, plus the burst each bucket held when the slot opened
            self.assertGreater(got, 0.8 * rate)
            self.assertLess(got, 1.4 * rate)
        for p in self.probes:
            s = p.status()
            self.assertEqual((s["last_targets"], s["echo_unassigned"], s["stray_echoes"]), (5, 0, 0))
        return probed

    def skipSlot(self, probes, links, epoch):
        """The skipper's slot: nothing for its targets."""
        return defer.succeed(None)


class ProbeFlowTests(Flow):
    def test_probesReadEveryRelayAtItsRate(self):
        self.nextEpoch()
        self.carry()
        self.nextEpoch()
        w = self.weights()
        self.assertEqual(w.epoch, lastComplete(self.net.clock.seconds(), EPOCH))
        probed = self.assertEveryRelayReadAtItsRate(w)
        # every target read each of its five measurers back as sending more than it could echo
        for t in self.ids:
            target, measurer = w.probeRoles[t]
            self.assertEqual(measurer, float("inf"))
        self.assertEqual(w.status()["readbacks_rejected"], 0)
        self.assertTrue(w.status()["probes_cap"])
        # the public summary shows it
        body = weightsJSON(w.epoch, EPOCH, w.measures, list(w.reports.values()), 0, w.probed, w.probeRoles, True)
        self.assertEqual({r["node_id"]: r["probed"] for r in body["relays"]},
                         {i.hex(): round(p, 1) for i, p in zip(self.ids, probed)})
        self.assertEqual({r["probed_as_measurer"] for r in body["relays"]}, {"not limiting"})
        self.assertEqual([r["probed_as_target"] for r in body["relays"]], [r["probed"] for r in body["relays"]])
        self.assertTrue(body["probes_cap"])

    def test_sameReportsSameWeights(self):
        self.nextEpoch()
        self.carry()
        self.nextEpoch()
        a, b = self.weights(), self.weights()
        self.assertEqual(a.probed, b.probed)
        self.assertEqual({i: m.weight for i, m in a.measures.items()}, {i: m.weight for i, m in b.measures.items()})

    def test_relaysWhoseLinksShowMoreThanTheyForwardAreHeldToTheirProbes(self):
        """The attack: the two slowest relays' links show 8 times what they can forward, confirmed at both ends."""
        self.nextEpoch()
        self.carry(inflated=(0, 1))
        self.nextEpoch()
        without, withProbes = self.weights(probes=False), self.weights()
        capacityShare = sum(RATES[:2]) / sum(RATES)
        liars, honest = self.share(without, [0, 1]), self.share(withProbes, [0, 1])
        print(f"\ninflated pair: capacity share {capacityShare:.3f}, weight share without probes {liars:.3f}, "
              f"with probes {honest:.3f}")
        # without probes the two take top weights; with them they hold about their capacity's share
        ranked = sorted(self.ids, key=lambda i: -without.measures[i].weight)
        self.assertEqual(set(ranked[:2]), set(self.ids[:2]))
        self.assertGreater(liars, 3 * capacityShare)
        self.assertLessEqual(honest, 1.25 * capacityShare)
        ranked = sorted(self.ids, key=lambda i: withProbes.measures[i].weight)
        self.assertEqual(ranked, self.ids)

    def test_probesCapWeightsOnlyPastTheDeadline(self):
        """Before the version deadline the probes are read and shown, but the weights are the reports' alone."""
        self.nextEpoch()
        self.carry(inflated=(0, 1))
        self.nextEpoch()
        epochStart = lastComplete(self.net.clock.seconds(), EPOCH) * EPOCH
        without, before, after = self.weights(probes=False), self.weights(capFrom=epochStart + 1), self.weights(
            capFrom=epochStart)
        self.assertEqual({i: m.weight for i, m in before.measures.items()},
                         {i: m.weight for i, m in without.measures.items()})
        self.assertEqual(before.probed, after.probed)
        self.assertEqual(len(before.probed), 6)
        self.assertFalse(before.status()["probes_cap"])
        self.assertTrue(after.status()["probes_cap"])
        self.assertLess(self.share(after, [0, 1]), self.share(before, [0, 1]) / 2)


class SkippedMeasuringTests(Flow):
    """The attack: the fastest relay skips measuring and gives its freed half to its echoes; its links show 8x."""

    skipper = 5

    def test_aRelayThatSkipsMeasuringIsHeldByTheReadBack(self):
        self.nextEpoch()
        self.carry(inflated=(5,))
        self.nextEpoch()
        w = self.weights()
        target, measurer = w.probeRoles[self.ids[5]]
        rate = RATES[5]
        # as a target it shows its whole link (twice its rate); every target read it back sending nothing
        self.assertGreater(target, 1.6 * rate)
        # (the burst: its 64 KB a target over the 5 s slot, times its 5 targets, and never "not limiting")
        self.assertLessEqual(measurer, 64_000 * 5 / PROBE_SECONDS)
        self.assertLess(measurer, target * (1 - MEASURE_SHARE))
        probed = w.probedCapacity(self.ids[5])
        self.assertEqual(probed, target * (1 - MEASURE_SHARE))
        self.assertLess(probed, 1.4 * rate)
        # the honest relays are read as before
        for k in range(5):
            self.assertEqual(w.probeRoles[self.ids[k]][1], float("inf"))
            self.assertGreater(w.probedCapacity(self.ids[k]), 0.8 * RATES[k])
        capacityShare = rate / sum(RATES)
        without, held = self.share(self.weights(probes=False), [5]), self.share(w, [5])
        # the same run with nobody reading back: what the skip is worth unchecked
        w.readBacks.clear()
        w.readBackCollector.fetchAll = lambda nodeIds, epoch: defer.succeed([])
        self.net.run(w.refresh(), 30)
        unchecked = self.share(w, [5])
        print(f"\n{type(self).__name__}: measurer role {measurer:.0f} B/s; skipper: capacity share {capacityShare:.3f}, weight share without probes {without:.3f}, "
              f"probes without read-back {unchecked:.3f}, read back {held:.3f}; target role {target / rate:.2f}x "
              f"its rate, probed {probed / rate:.2f}x")
        self.assertGreater(unchecked, held)
        self.assertLessEqual(held, 1.25 * capacityShare)


class BurstThenSkipTests(SkippedMeasuringTests):
    """The attack, refined: the skipper sends each target one window at the slot's start (more than its share), then nothing."""

    def skipSlot(self, probes, links, epoch):
        for t in probes.planOf(epoch).targetsOf(probes.identity.nodeId):
            for seq in range(64):
                links.ends[t].sendProbe(seq, os.urandom(1000))
        return defer.succeed(None)


class LyingTargetTests(Flow):
    """The attack: targets claim an honest measurer (relay 0) sent them nothing."""

    def lie(self, liars):
        for k in liars:
            echo = self.probes[k].echo
            honest = echo.readBackOf
            echo.readBackOf = lambda epoch, honest=honest: [s for s in honest(epoch) if s.measurer != self.ids[0][:16]]

    def test_oneLyingTargetOfFiveChangesNothing(self):
        self.lie([5])
        self.nextEpoch()
        self.carry()
        self.nextEpoch()
        w = self.weights()
        self.assertEqual(w.probeRoles[self.ids[0]][1], float("inf"))

    def test_lyingTargetsWithMostOfTheWeightCutItByAtMostItsMeasuringShare(self):
        self.lie([3, 4, 5])  # 40 + 50 + 60 of the 200 KB/s its targets hold
        self.nextEpoch()
        self.carry()
        self.nextEpoch()
        w = self.weights()
        target, measurer = w.probeRoles[self.ids[0]]
        self.assertEqual(measurer, 0.0)
        self.assertEqual(w.probedCapacity(self.ids[0]), target * (1 - MEASURE_SHARE))
        for k in range(1, 6):
            self.assertEqual(w.probeRoles[self.ids[k]][1], float("inf"))
