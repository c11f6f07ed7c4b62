"""Payouts end to end: relays publish reports and addresses, the payer pays by the weights, each relay checks its pay.

The DHT is the in-memory one of the payments tests; the reports, the
probe reports, the weights, the records and the Monero transfers are the
real ones (a real monerod --regtest with wallet RPC servers).  Payer and
relays compute their weights as the roles build them
(L{meshvpn.roles.payouts.payoutWeights}): probes read and, the epochs being
past the version deadline, applied.
"""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from meshvpn.dht.records import makeRecord
from meshvpn.identity import NodeIdentity
from meshvpn.measure.probed import PROBES_CAP_FROM
from meshvpn.measure.probereports import Reading, signProbeReport
from meshvpn.measure.publish import probeSalt, reportSalt
from meshvpn.measure.reports import makeReport, prefixOf
from meshvpn.measure.test.probefakes import Descriptor
from meshvpn.payments.monero import MoneroDaemon, MoneroRPC, MoneroWallet
from meshvpn.payments.payoutaddress import PayoutAddressBook, PayoutAddressPublisher
from meshvpn.payments.payoutcheck import PayoutCheck
from meshvpn.payments.payoutepoch import EpochPayer
from meshvpn.payments.payouts import ADDRESS_SALT, PayoutError, Statement, parseStatement
from meshvpn.payments.test.fakes import FakeDHT
from meshvpn.roles.payouts import payoutWeights
from meshvpn.tools.moneroregtest import SharedRegtest

EPOCH = 600
ADDRESS = "4" + "A" * 94
FIRST_CAPPED = PROBES_CAP_FROM // EPOCH + 1  # an epoch whose weights the probes cap
PROBE_MILLIS = 5000
PROBE_UNIT = 10_000  # bytes/s of a probed capacity of 1


class Network:
    """
    Relays carrying traffic in proportion to both ends' rates, their signed
    reports of epoch C{epoch} in the DHT, and with C{probed} (a capacity
    per relay, in L{PROBE_UNIT}s) the probe reports of that epoch: every
    other relay (a team of 3 of 4) read each target at its share.
    """

    def __init__(self, rates, epoch=FIRST_CAPPED, probed=None):
        self.clock = task.Clock()
        self.clock.advance((epoch + 1) * EPOCH + 200)
        self.dht = FakeDHT(self.clock)
        self.epoch = epoch
        self.relays = [NodeIdentity.generate() for _ in rates]
        ids = [r.nodeId for r in self.relays]
        self.directory = {i: Descriptor(i) for i in ids}
        for i, identity in enumerate(self.relays):
            table = {ids[j]: (rates[i] * rates[j] * 10**6, 3) for j in range(len(ids)) if j != i}
            for part in makeReport(identity, epoch, EPOCH, table):
                self.dht.put(makeRecord(identity, reportSalt(part.part, epoch), part.raw, epoch, (epoch + 3) * EPOCH))
        if probed is not None:
            team = len(ids) - 1
            for i, identity in enumerate(self.relays):
                readings = [Reading(prefixOf(ids[j]), int(probed[j] * PROBE_UNIT / team * PROBE_MILLIS / 1000),
                                    PROBE_MILLIS) for j in range(len(ids)) if j != i]
                report = signProbeReport(identity, epoch, EPOCH, readings)
                self.dht.put(makeRecord(identity, probeSalt(epoch), report.raw, epoch, (epoch + 3) * EPOCH))

    def weights(self):
        """The weights the payer and each relay's check compute (the roles' construction)."""
        return payoutWeights(self.clock, lambda: self.dht, lambda: self.directory, EPOCH)


class FakeWallet:
    def __init__(self):
        self.sent = []

    def transfer(self, address, amount):
        self.sent.append((address, amount))
        return defer.succeed((f"tx{len(self.sent)}", 1))


class AddressTests(unittest.TestCase):
    def test_publishedAndReadBack(self):
        net = Network([1, 2])
        pub = PayoutAddressPublisher(net.clock, net.relays[0], lambda: net.dht, ADDRESS, 3600)
        pub.startService()
        self.addCleanup(pub.stopService)
        book = PayoutAddressBook(lambda: net.dht)
        self.assertEqual(self.successResultOf(book.addressOf(net.relays[0].nodeId)), ADDRESS)
        self.assertIsNone(self.successResultOf(book.addressOf(net.relays[1].nodeId)))
        self.assertEqual(pub.status()["published"], net.clock.seconds())

    def test_aMalformedAddressReadsAsNone(self):
        net = Network([1, 2])
        net.dht.put(makeRecord(net.relays[1], ADDRESS_SALT, b"not an address", 1, net.clock.seconds() + 100))
        book = PayoutAddressBook(lambda: net.dht)
        self.assertIsNone(self.successResultOf(book.addressOf(net.relays[1].nodeId)))
        self.assertEqual(book.rejected, 1)

    def test_aBadAddressIsRefusedAtStart(self):
        net = Network([1])
        self.assertRaises(PayoutError, PayoutAddressPublisher, net.clock, net.relays[0], lambda: net.dht, "0" * 95)


class StatementTests(unittest.TestCase):
    def test_roundTrip(self):
        s = Statement(7, 3600, 10**11)
        self.assertEqual(parseStatement(s.encode()), s)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=40))
    def test_anyBytesParseOrRefuse(self, raw):
        try:
            parseStatement(raw)
        except PayoutError:
            pass


class EpochLoopTests(unittest.TestCase):
    def test_eachMeasuredEpochIsStatedAndPaidOnce(self):
        net = Network([1, 2, 3, 4])
        weights = net.weights()
        wallet = FakeWallet()
        payer = EpochPayer(net.clock, NodeIdentity.generate(), lambda: net.dht, weights, wallet,
                           lambda nodeId: defer.succeed(ADDRESS), 6000)
        payer.startService()
        self.addCleanup(payer.stopService)
        self.successResultOf(weights.refresh(net.epoch))
        epoch, plan = self.successResultOf(payer.whenIdle())
        self.assertEqual(epoch, net.epoch)
        self.assertEqual(sum(a for _, a in wallet.sent), 6000)
        self.assertEqual(len(wallet.sent), 4)
        self.successResultOf(weights.refresh(net.epoch))  # the same epoch again: nothing more is paid
        self.successResultOf(payer.whenIdle())
        self.assertEqual(len(wallet.sent), 4)
        self.assertEqual(payer.status()["paid"], 6000)


class ProbedPayTests(unittest.TestCase):
    """Payer and relays read the probes alike: a relay whose links show more than it forwards when probed is paid less."""

    def plan(self, net):
        weights = net.weights()
        wallet = FakeWallet()
        payer = EpochPayer(net.clock, NodeIdentity.generate(), lambda: net.dht, weights, wallet,
                           lambda nodeId: defer.succeed(ADDRESS), 10**6)
        payer.startService()
        self.addCleanup(payer.stopService)
        self.successResultOf(weights.refresh(net.epoch))
        epoch, plan = self.successResultOf(payer.whenIdle())
        self.assertEqual(epoch, net.epoch)
        return payer, weights, {p.nodeId: p.amount for p in plan}

    def test_payerAndRelaysAgreeWithProbes(self):
        # relay 3's links show rate 8, its probe 3: it is held to its probe, below relay 2 (rate 4, probe 4)
        net = Network([1, 2, 4, 8], probed=[1, 2, 4, 3])
        payer, weights, amounts = self.plan(net)
        ids = [r.nodeId for r in net.relays]
        self.assertEqual([round(weights.probedCapacity(i) / PROBE_UNIT, 2) for i in ids], [1, 2, 4, 3])
        self.assertTrue(weights.status()["probes_cap"])
        self.assertLess(amounts[ids[3]], amounts[ids[2]])
        self.assertEqual(sorted(amounts, key=amounts.get), [ids[0], ids[1], ids[3], ids[2]])
        # without probes the same reports pay relay 3 the most
        blind = Network([1, 2, 4, 8])
        unprobed = self.plan(blind)[2]
        self.assertEqual(max(unprobed, key=unprobed.get), blind.relays[3].nodeId)
        # each relay's check, computing its own weights from the same records, expects exactly its line
        payerId = payer.identity.nodeId
        for identity in net.relays:
            check = PayoutCheck(identity.nodeId, lambda: net.dht, net.weights(), payerId,
                                lambda nodeId: defer.succeed(ADDRESS), FakeWallet())
            self.successResultOf(check.weights.refresh(net.epoch))
            self.assertEqual(self.successResultOf(check.expectedFor(net.epoch)), amounts[identity.nodeId])


REGTEST = SharedRegtest(wallets=("payer", "relays"), fund="payer", expected=1)


class RegtestFlowTests(unittest.TestCase):
    """Real Monero regtest transfers reach each relay's published address, in proportion to its measured weight."""

    timeout = 900

    @defer.inlineCallbacks
    def test_paidByTheWeightsAndCheckedByEachRelay(self):
        regtest = REGTEST.get(self)
        payerWallet = MoneroWallet(MoneroRPC(reactor, regtest.walletURL("payer")))
        relayWallet = MoneroWallet(MoneroRPC(reactor, regtest.walletURL("relays")))
        daemon = MoneroDaemon(MoneroRPC(reactor, regtest.daemonURL()))
        # probed in the order of the rates (relay 3 at 6, below its links' 8): the probes apply, the order holds
        net = Network([1, 2, 4, 8], probed=[1, 2, 4, 6])
        indices = {}
        for identity in net.relays:
            index, address = yield relayWallet.createAddress(identity.nodeId.hex()[:16])
            indices[identity.nodeId] = index
            pub = PayoutAddressPublisher(net.clock, identity, lambda: net.dht, address, 3600)
            pub.startService()
            self.addCleanup(pub.stopService)
        payerIdentity = NodeIdentity.generate()
        weights = net.weights()
        payer = EpochPayer(net.clock, payerIdentity, lambda: net.dht, weights, payerWallet,
                           PayoutAddressBook(lambda: net.dht).addressOf, budget=10**11)
        payer.startService()
        self.addCleanup(payer.stopService)
        yield weights.refresh(net.epoch)
        epoch, plan = yield payer.whenIdle()
        self.assertEqual(epoch, net.epoch)
        self.assertEqual(len(plan), 4)
        self.assertEqual(sum(p.amount for p in plan), 10**11)
        self.assertEqual(len(payer.payouts.paid[epoch]), 4)
        # the amounts follow the measured bytes, bandwidth x epoch length in whole bytes (within one atomic unit)
        measured = {p.nodeId: int(weights.measurement(p.nodeId).bandwidth * EPOCH) for p in plan}
        total = sum(measured.values())
        for p in plan:
            self.assertLessEqual(abs(p.amount - 10**11 * measured[p.nodeId] / total), 1)
        ranked = [p.nodeId for p in sorted(plan, key=lambda p: p.amount)]
        self.assertEqual(ranked, [r.nodeId for r in net.relays])  # rates 1 < 2 < 4 < 8
        yield daemon.generateBlocks(2, regtest.addresses["payer"])
        for identity in net.relays:
            # each relay recomputes the plan from the reports, the addresses and the statement
            check = PayoutCheck(identity.nodeId, lambda: net.dht, net.weights(), payerIdentity.nodeId,
                                PayoutAddressBook(lambda: net.dht).addressOf, relayWallet, indices[identity.nodeId])
            yield check.weights.refresh(net.epoch)
            state = yield check.checkEpoch(net.epoch)
            line = next(p.amount for p in plan if p.nodeId == identity.nodeId)
            self.assertEqual((state["expected"], state["received"], state["ok"]), (line, line, True))


class RoleWiringTests(unittest.TestCase):
    """The roles build the payout services from their settings (and none without them)."""

    def test_relayPublishesAndChecks(self):
        from zope.interface.verify import verifyObject

        from meshvpn.interfaces import IStatusSource
        from meshvpn.roles import relay

        def build(*extra):
            options = relay.Options()
            options.parseOptions(["--data-dir", self.mktemp(), "--udp", "127.0.0.1:0", "--listen",
                                  "tcp:0:interface=127.0.0.1", *extra])
            return relay.makeService(options).getServiceNamed("dht")

        dht = build("--payout-address", ADDRESS, "--payout-payer", "ab" * 32, "--payout-wallet-rpc",
                    "http://127.0.0.1:18088/json_rpc", "--payout-address-index", "3")
        for name in ("payout-address", "payout-check"):
            verifyObject(IStatusSource, dht.getServiceNamed(name))
        self.assertEqual(dht.getServiceNamed("payout-check").addressIndex, 3)
        # the check reads probes, planned from the directory it reads; the relay probes by default (auto: 20 s
        # of an hourly epoch)
        self.assertIsNotNone(dht.getServiceNamed("payout-weights").directory)
        self.assertEqual(dht.getServiceNamed("probes").probeSeconds, 20.0)
        plain = build()
        self.assertRaises(KeyError, plain.getServiceNamed, "payout-address")
        self.assertRaises(KeyError, build("--probe-seconds", "0").getServiceNamed, "probes")

    def test_issuerPaysOnlyWithABudget(self):
        from meshvpn.roles import issuer

        def build(*extra):
            options = issuer.Options()
            options.parseOptions(["--data-dir", self.mktemp(), "--udp", "127.0.0.1:0", "--listen",
                                  "tcp:0:interface=127.0.0.1", *extra])
            return issuer.makeService(options).getServiceNamed("dht")

        payer = build("--payout-budget", "1000000")
        self.assertEqual(payer.getServiceNamed("payouts").budget, 1000000)
        self.assertIsNotNone(payer.getServiceNamed("payout-weights").directory)  # it reads probes as the checks do
        self.assertRaises(KeyError, build().getServiceNamed, "payouts")

    def test_badSettingsRefused(self):
        from twisted.python.usage import UsageError

        from meshvpn.roles import relay

        for args in (["--payout-address", "4" * 94], ["--payout-payer", "xyz"], ["--payout-address-index", "-1"]):
            self.assertRaises((UsageError, SystemExit, ValueError), relay.Options().parseOptions, args)
