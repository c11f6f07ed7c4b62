"""The whole loop on real Monero: buy, confirm, receive tokens, spend at an exit, and the refusals.

A real ``monerod --regtest --offline`` and two ``monero-wallet-rpc`` (the
issuer's, a funded user's), shared by this module
(L{meshvpn.tools.moneroregtest}).  The issuer service runs in this process
with its HTTP API on loopback and its real wallet; the buyer pays from the
user's wallet; blocks are mined while it waits for confirmations.  The exit
is the in-memory 3-hop circuit of test_gating with the real gate, its keys
read from the records the issuer published, and its spends reported to the
issuer over HTTP.

Skipped without Monero installed (bin/install adds it); fails instead under CI=true.
"""

import os
import time

from twisted.internet import defer, reactor, task
from twisted.logger import Logger
from twisted.trial import unittest

from meshvpn.exit.paygate import RedeemReporter
from meshvpn.identity import NodeIdentity
from meshvpn.payments import buy, paymsg, tokens
from meshvpn.payments.epochs import EpochSchedule
from meshvpn.payments.issuer import DOUBLE_SPENT, REDEEMED, IssuerService, IssuerTerms
from meshvpn.payments.issuerclient import IssuerClient
from meshvpn.payments.issuerhttp import IssuerAPI, QuietSite
from meshvpn.payments.issuerkeys import IssuerKeyStore
from meshvpn.payments.monero import MoneroDaemon, MoneroRPC, MoneroWallet
from meshvpn.payments.purchases import ISSUED, PurchaseBook
from meshvpn.payments.records import PaymentRecords
from meshvpn.payments.spentstore import SpentTokenStore
from meshvpn.payments.test.fakes import FakeDHT
from meshvpn.payments.test.test_gating import Net, received
from meshvpn.payments.tokens import Token
from meshvpn.payments.verifier import IssuerKeyCache
from meshvpn.payments.wallet import TokenWallet
from meshvpn.onion.cells import RelayCommand


log = Logger()
PRICE = 2_000_000_000  # 0.002 XMR a token
PER_TOKEN = 64 * 1024
from meshvpn.payments.test.regtest import SHARED  # noqa: E402


class IssuerProcess:
    """An issuer as its role runs it (service + HTTP API), here in this process; L{stop} is a crash or restart."""

    def __init__(self, dataDir, identity, walletURL, dht):
        self.dataDir = dataDir
        self.identity = identity
        self.service = IssuerService(
            reactor, identity.nodeId,
            keys=IssuerKeyStore(dataDir, EpochSchedule(3600, grace=1)),
            book=PurchaseBook(dataDir),
            wallet=MoneroWallet(MoneroRPC(reactor, walletURL)),
            spent=SpentTokenStore(os.path.join(dataDir, "spent")),
            terms=IssuerTerms(price=PRICE, packs=(3,), confirmations=2, pollInterval=0.3),
            records=PaymentRecords(dht, identity),
            apiAddress=lambda: f"127.0.0.1:{self.port.getHost().port}",
        )
        self.port = reactor.listenTCP(0, QuietSite(IssuerAPI(reactor, self.service)), interface="127.0.0.1")
        self.service.startService()
        self.url = f"http://127.0.0.1:{self.port.getHost().port}"

    @defer.inlineCallbacks
    def stop(self):
        yield self.service.stopService()
        yield self.port.stopListening()
        self.service.spent.close()


class RegtestPaymentTests(unittest.TestCase):
    timeout = 600

    def setUp(self):
        self.net = SHARED.get(self)
        self.daemon = MoneroDaemon(MoneroRPC(reactor, self.net.daemonURL()))
        self.user = MoneroWallet(MoneroRPC(reactor, self.net.walletURL("user")))
        self.identity = NodeIdentity.loadOrCreate(self.mktemp())
        self.dht = FakeDHT(reactor)
        self.issuerDir = self.mktemp()
        os.makedirs(self.issuerDir)
        self.issuer = IssuerProcess(self.issuerDir, self.identity, self.net.walletURL("issuer"), self.dht)
        self.addCleanup(lambda: self.issuer.stop())
        self.wallet = TokenWallet(self.mktemp())
        self.lines = []

    def out(self, line):
        self.lines.append(line)
        log.info("{line}", line=line)

    @defer.inlineCallbacks
    def mineWhile(self, d, every=0.5):
        """Mine a block to the user every C{every} seconds until C{d} fires (confirmations on demand)."""
        address = self.net.addresses["user"]
        mined = 0
        while not d.called:
            yield self.daemon.generateBlocks(1, address)
            mined += 1
            yield task.deferLater(reactor, every, lambda: None)
        return mined

    @defer.inlineCallbacks
    def buyTokens(self, client=None):
        started = time.monotonic()
        d = defer.Deferred.fromCoroutine(buy.buy(
            reactor, client or IssuerClient(reactor, self.issuer.url), self.wallet, 3, self.out, payer=self.user,
            pollInterval=0.3, spendDelay=0, check=self.check(),
        ))
        mined = yield self.mineWhile(d)
        count = yield d
        log.info("bought {n} tokens in {s:.1f}s, {m} blocks mined meanwhile", n=count, s=time.monotonic() - started, m=mined)
        return count

    def check(self):
        """The buyer checks the issuer's key against its records in the (fake) DHT."""
        return buy.OfferCheck(reactor, buy.RecordsKeySource(PaymentRecords(self.dht)))

    def exitNet(self, keys, reporter):
        return Net(self, keys=keys, issuerId=self.identity.nodeId, wallet=self.wallet, reporter=reporter,
                   now=reactor.seconds(), bytesPerToken=PER_TOKEN)

    @defer.inlineCallbacks
    def test_buyConfirmReceiveSpendAndRefusals(self):
        # -- buy with real XMR: the amount and a fresh subaddress, the payment, the confirmations.
        count = yield self.buyTokens()
        self.assertEqual(count, 3)
        text = "\n".join(self.lines)
        self.assertIn(f"pay 0.006 XMR ({3 * PRICE} atomic units) to ", text)
        self.assertIn("paid from the local Monero wallet: transaction", text)
        self.assertIn("2 of 2 confirmations: paid", text)
        self.assertIn("received 3 tokens", text)
        self.assertEqual(self.wallet.pending(), [])
        self.assertEqual(self.wallet.usable(self.identity.nodeId, reactor.seconds()), 3)
        purchases = list(self.issuer.service.book.purchases.values())
        self.assertEqual([(p.state, p.received >= p.amount) for p in purchases], [(ISSUED, True)])
        # The subaddress is the purchase's own, and nothing printed holds a secret.
        self.assertIn(purchases[0].address, text)
        for token in os.listdir(os.path.join(self.wallet.directory, "tokens", self.identity.nodeId.hex())):
            self.assertNotIn(token.split("-")[-1].split(".")[0], text)

        # -- the exit reads the issuer's keys from what it published, and reports spends to it.
        keys = IssuerKeyCache(reactor, PaymentRecords(self.dht), [self.identity.nodeId])
        yield keys.refresh()
        self.assertEqual(keys.apiOf(self.identity.nodeId), self.issuer.url[len("http://"):])
        reporter = RedeemReporter(reactor, keys.apiOf, interval=0.05)
        self.addCleanup(reporter.stop)
        net = self.exitNet(keys, reporter)
        circ = net.circuit()
        collect, _ = net.fetch(circ, int(1.5 * PER_TOKEN))
        self.assertEqual(received(collect), int(1.5 * PER_TOKEN))
        self.assertEqual(net.gate.counters["tokens_accepted"], 2)
        self.assertEqual(self.wallet.usable(self.identity.nodeId, reactor.seconds()), 1)
        yield reporter.flush()
        self.assertEqual(self.issuer.service.counters["redeemed"], 2)  # the issuer's spent list has them

        # -- double spend: a spent token again, at this exit and at the issuer.
        spentDir = os.path.join(self.wallet.directory, "spent", self.identity.nodeId.hex())
        with open(os.path.join(spentDir, sorted(os.listdir(spentDir))[0]), "rb") as f:
            spentToken = Token.decode(f.read())
        again = net.circuit(paying=False)
        again.sendRelay(RelayCommand.PAYMENT, 0, paymsg.TokenMessage(spentToken).encode())
        # -- a forged token: the signature of another token input.
        forged = Token(os.urandom(32), spentToken.challengeDigest, spentToken.tokenKeyId, spentToken.authenticator)
        again.sendRelay(RelayCommand.PAYMENT, 0, paymsg.TokenMessage(forged).encode())
        statuses = [m.status for m in self.receipts(net, again)]
        self.assertEqual(statuses, [paymsg.DOUBLE_SPENT, paymsg.INVALID])
        verdicts = yield defer.Deferred.fromCoroutine(IssuerClient(reactor, self.issuer.url).redeem([spentToken.encode()]))
        self.assertEqual(list(verdicts), [DOUBLE_SPENT])

        # -- an expired epoch: the same real key, two epochs later.
        later = reactor.seconds() + 3 * 3600
        status, _ = net.gate.verifier.check(spentToken, later, spend=False)
        self.assertEqual(status, paymsg.EXPIRED)

    def receipts(self, net, circ):
        got = []

        class Tap:
            def relayReceived(self, command, streamId, data):
                if command == RelayCommand.PAYMENT:
                    got.append(paymsg.parsePayment(data))

        circ.streamHandler = Tap()
        net.net.pump()
        return got

    @defer.inlineCallbacks
    def test_issuerRestartLosesNothing(self):
        # A purchase paid and confirmed while the issuer is down is collected after it restarts.
        client = IssuerClient(reactor, self.issuer.url)
        offeredAt = reactor.seconds()
        offer = yield defer.Deferred.fromCoroutine(client.offer())
        answer = yield defer.Deferred.fromCoroutine(client.purchase(3))
        txid, _ = yield self.user.transfer(answer["address"], answer["amount"])
        yield self.issuer.stop()  # down before it saw the payment
        yield self.daemon.generateBlocks(3, self.net.addresses["user"])
        self.issuer = IssuerProcess(self.issuerDir, self.identity, self.net.walletURL("issuer"), self.dht)
        # The restarted issuer still holds the key it offered (asked for the offer's
        # time: an hourly epoch boundary may fall inside this test).
        self.assertEqual(self.issuer.service.keys.current(offeredAt).tokenKeyId, offer.signing.tokenKeyId)
        client = IssuerClient(reactor, self.issuer.url)
        state = {"version": 1, "issuer_url": self.issuer.url, "issuer_id": offer.issuerId.hex(),
                 "purchase": answer["purchase"], "tokens": 3, "amount": answer["amount"], "address": answer["address"],
                 "created": reactor.seconds(), "spend_delay": 0}
        path = self.wallet.pendingPath("restart")
        got = yield defer.Deferred.fromCoroutine(buy.complete(reactor, client, self.wallet, path, state, self.out, 0.3,
                                                                 check=self.check()))
        self.assertEqual(got, 3)
        # Spend one (reported to the issuer), restart again: spent stays spent, sold-but-unspent stays valid.
        first = self.wallet.take(self.identity.nodeId, reactor.seconds())
        second = self.wallet.take(self.identity.nodeId, reactor.seconds())
        verdicts = yield defer.Deferred.fromCoroutine(client.redeem([first.encode()]))
        self.assertEqual(list(verdicts), [REDEEMED])
        yield self.issuer.stop()
        self.issuer = IssuerProcess(self.issuerDir, self.identity, self.net.walletURL("issuer"), self.dht)
        client = IssuerClient(reactor, self.issuer.url)
        verdicts = yield defer.Deferred.fromCoroutine(client.redeem([first.encode(), second.encode()]))
        self.assertEqual(list(verdicts), [DOUBLE_SPENT, REDEEMED])
        self.assertEqual(self.issuer.service.status(answer["purchase"])["state"], ISSUED)
        # The exit checks the restarted issuer's tokens with the keys it published before the restart.
        keys = IssuerKeyCache(reactor, PaymentRecords(self.dht), [self.identity.nodeId])
        yield keys.refresh()
        third = self.wallet.take(self.identity.nodeId, reactor.seconds())
        tokens.verifyToken(third, keys.lookup(third.tokenKeyId).publicKey)
