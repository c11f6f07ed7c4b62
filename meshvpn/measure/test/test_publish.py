"""Reports through a real (simulated) DHT: a relay publishes each epoch, a client reads and weighs them."""

import os

from twisted.internet import defer
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from meshvpn.dht.records import makeRecord
from meshvpn.dht.test.test_rpc import Net
from meshvpn.interfaces import IRelayWeights
from meshvpn.measure.collect import ReportCollector
from meshvpn.measure.epoch import epochOf, lastComplete
from meshvpn.measure.publish import ReportPublisher, reportSalt
from meshvpn.measure.reports import MAX_ENTRIES, makeReport, prefixOf
from meshvpn.measure.aggregate import computeWeights
from meshvpn.measure.service import HISTORY_EPOCHS, MeasuredWeights, inThread, readHistory

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
        d, result = handedOver[0]
        d.callback(result)
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
        self.net.run(liar.put(makeRecord(liar.identity, reportSalt(0), stolen.raw, epoch + 1, (epoch + 3) * EPOCH)))
        collector = ReportCollector(lambda: self.client)
        self.assertIsNone(self.net.run(collector.fetch(liar.identity.nodeId, epoch), 30))
        self.assertEqual(collector.rejected, 1)

    def test_anOldEpochIsNotThisOne(self):
        self.nextEpoch()
        self.nextEpoch()
        collector = ReportCollector(lambda: self.client)
        now = self.net.clock.seconds()
        self.assertIsNone(self.net.run(collector.fetch(self.relays[0].identity.nodeId, epochOf(now, EPOCH) - 2), 30))
        self.assertIsNotNone(self.net.run(collector.fetch(self.relays[0].identity.nodeId, epochOf(now, EPOCH) - 1), 30))

    def test_garbageUnderTheReportKeyIsRefused(self):
        self.nextEpoch()
        node = self.relays[2]
        epoch = epochOf(self.net.clock.seconds(), EPOCH)
        self.net.run(node.put(makeRecord(node.identity, reportSalt(0), b"not a report", 2**40, self.net.clock.seconds() + 3600)))
        collector = ReportCollector(lambda: self.client)
        self.assertIsNone(self.net.run(collector.fetch(node.identity.nodeId, epoch - 1), 30))
        self.assertEqual(collector.rejected, 1)

    def test_eachEpochStartsFromTheHistoryKeptAcrossARestart(self):
        """The next epoch's computation is handed the last one's estimates, also after a restart (weights.json)."""
        self.nextEpoch()
        self.carry([1, 2, 3, 4, 5, 6])
        self.nextEpoch()
        priors = []

        def compute(*args, **kw):
            priors.append(kw.get("prior"))
            return computeWeights(*args, **kw)

        known = lambda: {n.identity.nodeId: frozenset({"middle"}) for n in self.relays}  # noqa: E731
        dataDir = self.mktemp()
        os.makedirs(dataDir)
        weights = MeasuredWeights(self.net.clock, lambda: self.client, known, EPOCH, dataDir=dataDir, compute=compute)
        weights.startService()
        weights.stopService()
        first = lastComplete(self.net.clock.seconds(), EPOCH)
        self.net.run(weights.refresh(), 30)
        self.assertEqual(priors, [None])  # no history yet: everyone starts equal
        self.carry([1, 2, 3, 4, 5, 6])
        self.nextEpoch()
        # a restarted client reads its history back
        again = MeasuredWeights(self.net.clock, lambda: self.client, known, EPOCH, dataDir=dataDir, compute=compute)
        again.startService()
        again.stopService()
        self.net.run(again.refresh(), 30)
        expected = {i: m.bandwidth for i, m in weights.measures.items()}
        self.assertEqual(set(priors[1]), set(expected))
        for i, b in expected.items():
            self.assertLess(abs(priors[1][i] - b), 0.1)  # weights.json rounds to 0.1 B/s
        # recomputing an epoch starts from the one before it, never from itself; a history too old is dropped
        self.assertIs(again.priorFor(first + 1), again.histories[first])
        self.assertIsNone(again.priorFor(first + 1 + HISTORY_EPOCHS + 1))

    def test_aBadHistoryFileCostsOnlyTheHistory(self):
        path = self.mktemp()
        for body in (b"{", b'{"epoch": 1}', b'{"epoch": 1, "epoch_length": 60, "relays": [{"node_id": "zz"}]}'):
            with open(path, "wb") as f:
                f.write(body)
            self.assertIsNone(readHistory(path))
        self.assertIsNone(readHistory(path + ".missing"))

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
