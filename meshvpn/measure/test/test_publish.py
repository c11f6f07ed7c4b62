"""Reports through a real (simulated) DHT: a relay publishes each epoch, a client reads and weighs them."""

from twisted.internet import defer
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from meshvpn.dht.records import makeRecord
from meshvpn.dht.test.test_rpc import Net
from meshvpn.interfaces import IRelayWeights
from meshvpn.measure.collect import ReportCollector
from meshvpn.measure.epoch import epochOf, lastComplete
from meshvpn.measure.publish import ReportPublisher, reportSalt
from meshvpn.measure.reports import MAX_ENTRIES, makeReport
from meshvpn.measure.aggregate import computeWeights
from meshvpn.measure.service import MeasuredWeights, inThread
from meshvpn.measure.window import SLOTS, WINDOW, anchorOf, chainWeights

EPOCH = 60


class FixedMeter:
    """Traffic to hand out at the next drain (the meter itself is tested on its own)."""

    def __init__(self):
        self.next = {}

    def drain(self):
        out, self.next = self.next, {}
        return out


class PublishTests(unittest.TestCase):
    def setUp(self):
        self.net = Net(self, n=12)
        self.relays = self.net.nodes[:6]  # each DHT node doubles as a relay with a report
        self.meters = {}
        self.publishers = []
        for node in self.relays:
            meter = FixedMeter()
            pub = ReportPublisher(self.net.clock, node.identity, lambda node=node: node, meter, EPOCH)
            pub.startService()
            self.addCleanup(pub.stopService)
            self.meters[node.identity.nodeId] = meter
            self.publishers.append(pub)
        self.client = self.net.add(clientMode=True)

    def carry(self, rates):
        """Every pair of relays exchanges bytes in proportion to both rates, as weighted paths make them."""
        ids = [n.identity.nodeId for n in self.relays]
        for i, a in enumerate(ids):
            self.meters[a].next = {b: rates[i] * rates[j] * 1000 for j, b in enumerate(ids) if b != a}

    def nextEpoch(self):
        now = self.net.clock.seconds()
        self.net.pump((epochOf(now, EPOCH) + 1) * EPOCH - now + 15)  # past the delay a client gives publishers

    def test_epochReportsReachTheClientAndRankTheRelays(self):
        rates = [1, 2, 3, 4, 5, 6]
        self.nextEpoch()  # the first, partial epoch
        self.carry(rates)
        self.nextEpoch()
        weights = MeasuredWeights(self.net.clock, lambda: self.client, lambda: {n.identity.nodeId: frozenset({"middle"}) for n in self.relays},
                                  EPOCH)
        verifyObject(IRelayWeights, weights)
        got = self.net.run(weights.refresh(), 30)
        self.assertEqual(got, 6)
        self.assertEqual(weights.epoch, lastComplete(self.net.clock.seconds(), EPOCH))
        order = sorted(self.relays, key=lambda n: weights.weightOf(n.identity.nodeId))
        self.assertEqual(order, self.relays)
        for n in self.relays:
            self.assertIn("measured", weights.measurement(n.identity.nodeId).flags)
            self.assertEqual(weights.report(n.identity.nodeId).reporter, n.identity.nodeId)
        self.assertEqual(self.publishers[0].status()["neighbours"], 5)

    def test_computedOffTheReactor(self):
        """The computation may be handed to a thread (roles do): the reactor goes on until its answer comes."""
        self.nextEpoch()
        self.carry([1, 2, 3, 4, 5, 6])
        self.nextEpoch()
        handedOver = []

        def compute(*args, **kw):
            d = defer.Deferred()
            handedOver.append((d, computeWeights(*args, **kw)))
            return d

        weights = MeasuredWeights(self.net.clock, lambda: self.client,
                                  lambda: {n.identity.nodeId: frozenset({"middle"}) for n in self.relays}, EPOCH,
                                  compute=compute)
        done = weights.refresh()
        self.net.pump(30)
        self.assertEqual(len(handedOver), 1)
        self.assertEqual(weights.measures, {})
        # (two chains: the one in use and the next; each waits for its answer)
        while handedOver:
            d, result = handedOver.pop(0)
            d.callback(result)
            self.net.pump(1)
        self.assertEqual(self.successResultOf(done), 6)
        self.assertEqual(sorted(self.relays, key=lambda n: weights.weightOf(n.identity.nodeId)), self.relays)
        self.assertIs(inThread(object()), computeWeights)

    def test_aBigReportTravelsInParts(self):
        self.nextEpoch()
        meter = self.meters[self.relays[0].identity.nodeId]
        meter.next = {bytes([i]) * 32: 1000 + i for i in range(2 * MAX_ENTRIES + 1)}
        self.nextEpoch()
        collector = ReportCollector(lambda: self.client)
        report = self.net.run(collector.fetch(self.relays[0].identity.nodeId, lastComplete(self.net.clock.seconds(), EPOCH)), 30)
        self.assertEqual(len(report.parts), 3)
        self.assertEqual(len(report.traffic), 2 * MAX_ENTRIES + 1)

    def test_anotherRelaysReportUnderMyKeyIsRefused(self):
        # a relay copies an honest relay's signed report into its own record
        self.nextEpoch()
        liar, honest = self.relays[0], self.relays[1]
        epoch = epochOf(self.net.clock.seconds(), EPOCH) - 1
        stolen = makeReport(honest.identity, epoch, EPOCH, {liar.identity.nodeId: (10**9, 1)})[0]
        self.net.run(liar.put(makeRecord(liar.identity, reportSalt(0, epoch), stolen.raw, epoch + 1, (epoch + 3) * EPOCH)))
        collector = ReportCollector(lambda: self.client)
        self.assertIsNone(self.net.run(collector.fetch(liar.identity.nodeId, epoch), 30))
        self.assertEqual(collector.rejected, 1)

    def test_anotherEpochInTheSameSlotIsNotThisOne(self):
        self.nextEpoch()
        self.nextEpoch()
        collector = ReportCollector(lambda: self.client)
        last = epochOf(self.net.clock.seconds(), EPOCH) - 1
        nodeId = self.relays[0].identity.nodeId
        self.assertIsNone(self.net.run(collector.fetch(nodeId, last - SLOTS), 30))
        self.assertIsNone(self.net.run(collector.fetch(nodeId, last + SLOTS), 30))
        self.assertIsNotNone(self.net.run(collector.fetch(nodeId, last), 30))
        self.assertIsNotNone(self.net.run(collector.fetch(nodeId, last - 1), 30))

    def test_garbageUnderTheReportKeyIsRefused(self):
        self.nextEpoch()
        node = self.relays[2]
        epoch = epochOf(self.net.clock.seconds(), EPOCH)
        self.net.run(node.put(makeRecord(node.identity, reportSalt(0, epoch - 1), b"not a report", 2**40, self.net.clock.seconds() + 3600)))
        collector = ReportCollector(lambda: self.client)
        self.assertIsNone(self.net.run(collector.fetch(node.identity.nodeId, epoch - 1), 30))
        self.assertEqual(collector.rejected, 1)

    def test_aNodeThatStartsLateComputesTheSameWeights(self):
        """The history is agreed: a node that was there every epoch and one that starts now compute the same."""
        known = lambda: {n.identity.nodeId: frozenset({"middle"}) for n in self.relays}  # noqa: E731
        computed = []

        def compute(*args, **kw):
            computed.append(kw.get("prior"))
            return computeWeights(*args, **kw)

        self.nextEpoch()
        there = MeasuredWeights(self.net.clock, lambda: self.client, known, EPOCH, compute=compute)
        rates = [1, 2, 3, 4, 5, 6]
        for k in range(2 * WINDOW + 2):
            rates = rates[1:] + rates[:1]  # the order changes every epoch: each epoch's start matters
            self.carry(rates)
            self.nextEpoch()
            self.net.run(there.refresh(), 30)
        epoch = there.epoch
        # once running, each epoch costs two computations (the chain in use and the next one)
        before = len(computed)
        self.carry(rates)
        self.nextEpoch()
        self.net.run(there.refresh(), 30)
        self.assertEqual(len(computed) - before, 2)
        self.assertIsNotNone(computed[-1])  # each starts from the epoch before
        epoch = there.epoch
        late = MeasuredWeights(self.net.clock, lambda: self.client, known, EPOCH)
        self.assertEqual(self.net.run(late.refresh(), 30), 6)
        self.assertEqual(late.epoch, epoch)
        self.assertEqual(late.measures, there.measures)
        # and both are the chain from the fixed start, computed from scratch
        collector = ReportCollector(lambda: self.client)
        byEpoch = {e: self.net.run(collector.fetchAll(list(known()), e), 30) for e in range(anchorOf(epoch), epoch + 1)}
        fresh = chainWeights(byEpoch.__getitem__, epoch, computeWeights, roles=known(), known=list(known()))
        self.assertEqual(fresh, there.measures)
        # recomputing the same epoch (reports may come late) steps back once, not from the anchor
        before = len(computed)
        self.net.run(there.refresh(epoch), 30)
        self.assertEqual(len(computed) - before, 2)
        self.assertEqual(there.measures, fresh)

    def test_reportsOfTheWholeWindowStayInTheDHT(self):
        self.nextEpoch()
        first = epochOf(self.net.clock.seconds(), EPOCH)
        for k in range(2 * WINDOW + 1):
            self.carry([1, 2, 3, 4, 5, 6])
            self.nextEpoch()
        collector = ReportCollector(lambda: self.client)
        nodeId = self.relays[0].identity.nodeId
        for e in range(first, first + 2 * WINDOW + 1):
            self.assertIsNotNone(self.net.run(collector.fetch(nodeId, e), 30), e)

    def test_relaysTheHistoryMeasuredAreReadEvenWhenTheSampleMovesOn(self):
        self.nextEpoch()
        self.carry([1, 2, 3, 4, 5, 6])
        self.nextEpoch()
        view = {n.identity.nodeId: frozenset({"middle"}) for n in self.relays}
        weights = MeasuredWeights(self.net.clock, lambda: self.client, lambda: dict(view), EPOCH)
        self.assertEqual(self.net.run(weights.refresh(), 30), 6)
        # the directory view now holds only half of them, one of them with its flags changed
        for n in self.relays[3:]:
            del view[n.identity.nodeId]
        self.carry([1, 2, 3, 4, 5, 6])
        self.nextEpoch()
        epoch = lastComplete(self.net.clock.seconds(), EPOCH)
        roles = weights.toRead(epoch)
        self.assertEqual(set(roles), {n.identity.nodeId for n in self.relays})
        self.assertEqual(self.net.run(weights.refresh(), 30), 6)
        self.assertEqual(sorted(self.relays, key=lambda n: weights.weightOf(n.identity.nodeId)), self.relays)
