"""Relay payouts: the plan sums to the budget and follows measured traffic; real regtest transfers reach each relay."""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, reactor
from twisted.trial import unittest

from meshvpn.measure.aggregate import RelayMeasure
from meshvpn.payments.monero import MoneroDaemon, MoneroRPC, MoneroWallet
from meshvpn.payments.payouts import PayoutError, parseAddress, payoutPlan, verifyReceived
from meshvpn.payments.payoutservice import PayoutService
from meshvpn.tools.moneroregtest import SharedRegtest

ADDRESS = "4" + "A" * 94


def measure(i, bandwidth, flags=("measured",)):
    nodeId = bytes([i]) * 32
    return nodeId, RelayMeasure(nodeId, float(bandwidth), int(bandwidth), 3, 30, frozenset(flags))


class PlanTests(unittest.TestCase):
    def test_proportionalToCarriedTraffic(self):
        measures = dict([measure(1, 100), measure(2, 300), measure(3, 600)])
        plan = payoutPlan(1000, measures, {n: ADDRESS for n in measures}, 10)
        self.assertEqual([p.amount for p in plan], [100, 300, 600])
        self.assertEqual([p.traffic for p in plan], [1000, 3000, 6000])

    def test_onlyMeasuredRelaysWithAnAddress(self):
        measures = dict([measure(1, 100), measure(2, 300, flags=()), measure(3, 600)])
        plan = payoutPlan(90, measures, {bytes([1]) * 32: ADDRESS, bytes([2]) * 32: ADDRESS}, 10)
        self.assertEqual([(p.nodeId[0], p.amount) for p in plan], [(1, 90)])
        self.assertEqual(payoutPlan(90, {}, {}, 10), [])

    @settings(max_examples=200, deadline=None)
    @given(st.integers(0, 10**13), st.lists(st.integers(1, 10**9), min_size=1, max_size=30))
    def test_sumsToTheBudgetWithinOneUnitOfFair(self, budget, bandwidths):
        measures = dict(measure(i, b) for i, b in enumerate(bandwidths))
        plan = payoutPlan(budget, measures, {n: ADDRESS for n in measures}, 1)
        self.assertEqual(sum(p.amount for p in plan), budget)
        total = sum(p.traffic for p in plan)
        for p in plan:
            self.assertLessEqual(abs(p.amount - budget * p.traffic / total), 1)
        self.assertEqual(plan, payoutPlan(budget, dict(reversed(list(measures.items()))),
                                          {n: ADDRESS for n in measures}, 1))

    def test_verifyReceived(self):
        measures = dict([measure(1, 100), measure(2, 300)])
        plan = payoutPlan(400, measures, {n: ADDRESS for n in measures}, 1)
        self.assertEqual(verifyReceived(plan, bytes([2]) * 32, 300), (300, 300, True))
        self.assertEqual(verifyReceived(plan, bytes([2]) * 32, 299), (300, 299, False))
        self.assertEqual(verifyReceived(plan, bytes([9]) * 32, 0), (0, 0, True))

    def test_negativeBudgetRefused(self):
        self.assertRaises(PayoutError, payoutPlan, -1, {}, {}, 1)


class AddressTests(unittest.TestCase):
    def test_shapes(self):
        self.assertEqual(parseAddress(ADDRESS.encode()), ADDRESS)
        for bad in (b"", ADDRESS[:-1].encode(), (ADDRESS[:-1] + "0").encode(), ADDRESS.encode() + b"\xff", "x" * 95):
            self.assertRaises(PayoutError, parseAddress, bad)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=120))
    def test_anyBytesParseOrRefuse(self, raw):
        try:
            parseAddress(raw)
        except PayoutError:
            pass


REGTEST = SharedRegtest(wallets=("payer", "relays"), fund="payer", expected=1)


class RegtestPayoutTests(unittest.TestCase):
    """A real monerod --regtest: one epoch's budget reaches each relay's own address, as the plan says."""

    timeout = 900

    @defer.inlineCallbacks
    def test_epochPayoutReachesEachRelay(self):
        net = REGTEST.get(self)
        payer = MoneroWallet(MoneroRPC(reactor, net.walletURL("payer")))
        relays = MoneroWallet(MoneroRPC(reactor, net.walletURL("relays")))
        daemon = MoneroDaemon(MoneroRPC(reactor, net.daemonURL()))
        measures = dict([measure(1, 50_000), measure(2, 150_000), measure(3, 300_000), measure(4, 10**6, flags=())])
        indices, addresses = {}, {}
        for nodeId in sorted(measures):
            index, address = yield relays.createAddress(f"relay-{nodeId[0]}")
            indices[nodeId], addresses[nodeId] = index, address
        service = PayoutService(payer, lambda nodeId: defer.succeed(addresses.get(nodeId)), budget=10**11)
        plan = yield service.payEpoch(7, measures, 3600)
        self.assertEqual([p.amount for p in plan], [10**10, 3 * 10**10, 6 * 10**10])  # 1 : 3 : 6 of 0.1 XMR
        self.assertEqual(len(service.paid[7]), 3)
        again = yield service.payEpoch(7, measures, 3600)  # an epoch is paid once
        self.assertEqual(again, plan)
        yield daemon.generateBlocks(2, net.addresses["payer"])
        yield relays.refresh()
        for line in plan:
            seen = yield relays.incoming([indices[line.nodeId]])
            received = sum(i.amount for i in seen if not i.inPool)
            self.assertEqual(verifyReceived(plan, line.nodeId, received), (line.amount, line.amount, True))
        unmeasured = yield relays.incoming([indices[bytes([4]) * 32]])
        self.assertEqual(unmeasured, [])
