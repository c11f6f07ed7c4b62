"""The issuer service, its HTTP API and the buying flow, with a fake Monero wallet.

The same flows run against real monerod and monero-wallet-rpc in
test_regtest_payments.py; here every case is deterministic and quick:
payments arrive when a test says so, time is a C{task.Clock}.
"""

import json
import os

from twisted.internet import defer, reactor, task
from twisted.trial import unittest
from zope.interface import implementer

from nacl.public import PrivateKey
from nacl.signing import SigningKey

from meshvpn.identity import NodeIdentity
from meshvpn.interfaces import IMoneroWallet
from meshvpn.payments import buy, tokens
from meshvpn.payments.epochs import EpochSchedule
from meshvpn.payments.issuer import DOUBLE_SPENT, EXPIRED_KEY, INVALID, REDEEMED, IssuerService, IssuerTerms, PurchaseError
from meshvpn.payments.issuerclient import IssuerClient, IssuerError
from meshvpn.payments.issuerhttp import IssuerAPI, QuietSite
from meshvpn.payments.issuerkeys import IssuerKeyStore
from meshvpn.payments.monero import Incoming, MoneroRPCError
from meshvpn.payments.purchases import AWAITING, EXPIRED, ISSUED, PAID, PurchaseBook
from meshvpn.payments.spentstore import SpentTokenStore
from meshvpn.payments.records import PaymentRecords
from meshvpn.payments.test.fakes import FakeDHT, KeyPool
from meshvpn.payments.tokens import Token, TokenRequest
from meshvpn.payments.wallet import TokenWallet

# A fixed node identity: the issuer's records in the (fake) DHT are signed by it.
ISSUER_IDENTITY = NodeIdentity(SigningKey(b"\x07" * 32), PrivateKey(b"\x08" * 32))
ISSUER_ID = ISSUER_IDENTITY.nodeId
HOUR = 3600


@implementer(IMoneroWallet)
class FakeMoneroWallet:
    def __init__(self):
        self.next = 1
        self.transfers = {}  # subaddress index -> [Incoming]
        self.byAddress = {}
        self.broken = False

    def createAddress(self, label):
        if self.broken:
            return defer.fail(MoneroRPCError("create_address: cannot reach"))
        i = self.next
        self.next += 1
        address = f"8fakeaddress{i:04d}"
        self.byAddress[address] = i
        return defer.succeed((i, address))

    def pay(self, address, amount, confirmations=0, unlockTime=0):
        i = self.byAddress[address]
        txid = f"tx{len(self.transfers.get(i, [])):02d}{i:04d}"
        self.transfers.setdefault(i, []).append(
            Incoming(txid, amount, i, confirmations, 100 if confirmations else 0, unlockTime, confirmations == 0))
        return txid

    def confirm(self, blocks):
        for i, items in self.transfers.items():
            self.transfers[i] = [
                Incoming(x.txid, x.amount, i, x.confirmations + blocks, 100, x.unlockTime, False) for x in items
            ]

    def incoming(self, indices):
        if self.broken:
            return defer.fail(MoneroRPCError("get_transfers: cannot reach"))
        return defer.succeed([x for i in indices for x in self.transfers.get(i, [])])

    def refresh(self):
        return defer.succeed({})

    def transfer(self, address, amount):
        return defer.succeed((self.pay(address, amount), 30_000))


def makeIssuer(test, dataDir=None, clock=None, wallet=None, confirmations=2):
    dataDir = dataDir or test.mktemp()
    os.makedirs(dataDir, exist_ok=True)
    clock = clock or task.Clock()
    if clock.seconds() == 0:
        clock.advance(100 * HOUR + 5)
    schedule = EpochSchedule(HOUR, grace=1)
    issuer = IssuerService(
        clock, ISSUER_ID, IssuerKeyStore(dataDir, schedule, KeyPool()), PurchaseBook(dataDir),
        wallet or FakeMoneroWallet(), SpentTokenStore(os.path.join(dataDir, "spent")),
        IssuerTerms(price=1_000_000, packs=(1, 3, 10), confirmations=confirmations, pollInterval=1.0),
        identity=ISSUER_IDENTITY,
    )
    issuer.tick()
    return issuer, dataDir, clock


def publishIssuer(issuer, clock, api):
    """Publish C{issuer}'s info and keys, signed by L{ISSUER_IDENTITY}, in a fresh fake DHT. @return: the DHT."""
    dht = FakeDHT(clock)
    issuer.records = PaymentRecords(dht, ISSUER_IDENTITY)
    issuer.apiAddress = lambda: api
    issuer._canPublish = True
    issuer.publish()
    return dht


def issueAll(test, issuer, purchaseId, count):
    """The client's part, in process: requests for the signing key, signed, finished."""
    key = issuer.keys.current(issuer.reactor.seconds())
    challenge = tokens.meshChallenge(ISSUER_ID)
    pairs = [tokens.requestToken(key.publicKey, challenge) for _ in range(count)]
    body = b"".join(r.encode() for r, _ in pairs)
    out = issuer.sign(purchaseId, body)
    responses = [out[i:i + 256] for i in range(0, len(out), 256)]
    return [tokens.finishToken(key.publicKey, p, resp) for (_, p), resp in zip(pairs, responses)], body


class IssuerServiceTests(unittest.TestCase):
    def paidPurchase(self, issuer, count=3):
        purchaseId, p = self.successResultOf(issuer.quote(count))
        issuer.wallet.pay(p.address, p.amount)
        issuer.wallet.confirm(2)
        self.successResultOf(issuer.poll())
        return purchaseId, p

    def test_quoteGivesEachPurchaseItsOwnSubaddress(self):
        issuer, _, _ = makeIssuer(self)
        a, pa = self.successResultOf(issuer.quote(3))
        b, pb = self.successResultOf(issuer.quote(3))
        self.assertNotEqual(a, b)
        self.assertNotEqual(pa.address, pb.address)
        self.assertEqual(pa.amount, 3_000_000)
        self.assertEqual(issuer.status(a)["state"], AWAITING)

    def test_onlyPackSizesAreSold(self):
        issuer, _, _ = makeIssuer(self)
        self.failureResultOf(issuer.quote(4), PurchaseError)
        self.failureResultOf(issuer.quote(0), PurchaseError)

    def test_waitsForConfirmationsAndFullAmount(self):
        issuer, _, _ = makeIssuer(self)
        purchaseId, p = self.successResultOf(issuer.quote(3))
        wallet = issuer.wallet
        wallet.pay(p.address, 2_000_000)
        self.successResultOf(issuer.poll())
        st = issuer.status(purchaseId)
        self.assertEqual((st["state"], st["seen"], st["received"], st["confirmations"]), (AWAITING, 2_000_000, 0, 0))
        self.assertRaises(PurchaseError, issuer.sign, purchaseId, b"x" * (3 * 259))
        wallet.confirm(2)
        self.successResultOf(issuer.poll())
        self.assertEqual(issuer.status(purchaseId)["state"], AWAITING)  # 2 of 3 paid
        wallet.pay(p.address, 1_000_000)
        wallet.confirm(1)
        self.successResultOf(issuer.poll())
        st = issuer.status(purchaseId)
        self.assertEqual((st["state"], st["received"], st["confirmations"]), (AWAITING, 2_000_000, 1))
        wallet.confirm(1)
        self.successResultOf(issuer.poll())
        self.assertEqual(issuer.status(purchaseId)["state"], PAID)

    def test_lockedTransfersNeverCount(self):
        issuer, _, _ = makeIssuer(self)
        purchaseId, p = self.successResultOf(issuer.quote(1))
        issuer.wallet.pay(p.address, p.amount, confirmations=50, unlockTime=10**9)
        self.successResultOf(issuer.poll())
        self.assertEqual(issuer.status(purchaseId)["state"], AWAITING)

    def test_signOnceForTheRequestsPaidFor(self):
        issuer, _, _ = makeIssuer(self)
        purchaseId, _ = self.paidPurchase(issuer, 3)
        got, body = issueAll(self, issuer, purchaseId, 3)
        key = issuer.keys.current(issuer.reactor.seconds())
        for t in got:
            tokens.verifyToken(t, key.publicKey)
        self.assertEqual(issuer.status(purchaseId)["state"], ISSUED)
        # The same requests again (a lost answer): signed again, same answers.
        self.assertEqual(len(issuer.sign(purchaseId, body)), 3 * 256)
        # New requests: refused, so a purchase never yields more tokens than paid for.
        with self.assertRaisesRegex(PurchaseError, "already signed"):
            issueAll(self, issuer, purchaseId, 3)
        self.assertEqual(issuer.counters["tokens_signed"], 3)

    def test_wrongCountOrKeyRefused(self):
        issuer, _, _ = makeIssuer(self)
        purchaseId, _ = self.paidPurchase(issuer, 3)
        with self.assertRaisesRegex(PurchaseError, "expected 3"):
            issueAll(self, issuer, purchaseId, 2)
        key = issuer.keys.current(issuer.reactor.seconds())
        request, _ = tokens.requestToken(key.publicKey, tokens.meshChallenge(ISSUER_ID))
        other = TokenRequest((request.truncatedKeyId + 1) % 256, request.blindedMsg)
        with self.assertRaisesRegex(PurchaseError, "signing key"):
            issuer.sign(purchaseId, request.encode() * 2 + other.encode())

    def test_redeemStatuses(self):
        issuer, _, clock = makeIssuer(self)
        purchaseId, _ = self.paidPurchase(issuer, 3)
        got, _ = issueAll(self, issuer, purchaseId, 3)
        forged = Token(got[1].nonce, got[1].challengeDigest, got[1].tokenKeyId, bytes(256))
        out = issuer.redeem([got[0].encode(), got[0].encode(), forged.encode(), b"junk"])
        self.assertEqual(list(out), [REDEEMED, DOUBLE_SPENT, INVALID, INVALID])
        clock.advance(3 * HOUR)  # epoch 100's tokens expired at the end of epoch 101
        issuer.tick()
        self.assertEqual(list(issuer.redeem([got[2].encode()])), [EXPIRED_KEY])

    def test_restartLosesNothing(self):
        issuer, dataDir, clock = makeIssuer(self)
        paidId, _ = self.paidPurchase(issuer, 3)
        openId, open_ = self.successResultOf(issuer.quote(1))
        got, body = issueAll(self, issuer, paidId, 3)
        self.assertEqual(list(issuer.redeem([got[0].encode()])), [REDEEMED])
        issuer.spent.close()
        # A new process: same data dir, same wallet.
        again, _, _ = makeIssuer(self, dataDir, clock, wallet=issuer.wallet)
        self.assertEqual(again.status(paidId)["state"], ISSUED)
        self.assertEqual(len(again.sign(paidId, body)), 3 * 256)  # a lost answer is still served
        self.assertEqual(list(again.redeem([got[0].encode(), got[1].encode()])), [DOUBLE_SPENT, REDEEMED])
        # The purchase still open before the restart is paid after it.
        again.wallet.pay(open_.address, open_.amount)
        again.wallet.confirm(2)
        self.successResultOf(again.poll())
        self.assertEqual(again.status(openId)["state"], PAID)

    def test_unpaidPurchasesExpireButLatePaymentCounts(self):
        issuer, _, clock = makeIssuer(self)
        purchaseId, p = self.successResultOf(issuer.quote(1))
        clock.advance(86401)
        issuer.tick()
        self.assertEqual(issuer.status(purchaseId)["state"], EXPIRED)
        issuer.wallet.pay(p.address, p.amount, confirmations=5)
        self.successResultOf(issuer.poll())
        self.assertEqual(issuer.status(purchaseId)["state"], PAID)

    def test_openPurchasesBounded(self):
        issuer, _, _ = makeIssuer(self)
        issuer.book.maxOpen = 2
        self.successResultOf(issuer.quote(1))
        self.successResultOf(issuer.quote(1))
        self.assertEqual(self.failureResultOf(issuer.quote(1), PurchaseError).value.status, 503)

    def test_walletDownIsAClearError(self):
        issuer, _, _ = makeIssuer(self)
        issuer.wallet.broken = True
        e = self.failureResultOf(issuer.quote(1), PurchaseError).value
        self.assertEqual(e.status, 503)
        self.successResultOf(issuer.poll())  # logged, not raised
        self.assertEqual(issuer.counters["wallet_errors"], 1)

    def test_bookFileIsPrivateAndHoldsNoIds(self):
        issuer, dataDir, _ = makeIssuer(self)
        purchaseId, _ = self.successResultOf(issuer.quote(1))
        path = os.path.join(dataDir, "purchases.json")
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        with open(path) as f:
            self.assertNotIn(purchaseId, f.read())

    def test_keysRotateAndPublish(self):
        from meshvpn.identity import NodeIdentity
        from meshvpn.payments.records import PaymentRecords
        from meshvpn.payments.test.fakes import FakeDHT

        issuer, _, clock = makeIssuer(self)
        dht = FakeDHT(clock)
        identity = NodeIdentity.loadOrCreate(self.mktemp())
        issuer.issuerId = identity.nodeId
        issuer.records = PaymentRecords(dht, identity)
        issuer.apiAddress = lambda: "127.0.0.1:8480"
        issuer._canPublish = True
        self.successResultOf(issuer.publish())
        reader = PaymentRecords(dht)
        info = self.successResultOf(reader.fetchIssuer(identity.nodeId))
        self.assertEqual((info.price, info.api), (1_000_000, "127.0.0.1:8480"))
        epoch = issuer.keys.schedule.epochAt(clock.seconds())
        for e in (epoch, epoch + 1):
            self.assertEqual(self.successResultOf(reader.fetchKey(identity.nodeId, e)).tokenKeyId,
                             issuer.keys.keys[e].tokenKeyId)
        clock.advance(HOUR)
        issuer.tick()
        self.assertIsNotNone(self.successResultOf(reader.fetchKey(identity.nodeId, epoch + 2)))


class HTTPTests(unittest.TestCase):
    """The API over real HTTP on loopback, through IssuerClient and the buying flow."""

    def setUp(self):
        self.issuer, self.dataDir, self.clock = makeIssuer(self)
        self.port = reactor.listenTCP(0, QuietSite(IssuerAPI(self.clock, self.issuer)), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.client = IssuerClient(reactor, f"http://127.0.0.1:{self.port.getHost().port}", timeout=10)
        self.wallet = TokenWallet(self.mktemp())
        self.dht = publishIssuer(self.issuer, self.clock, f"127.0.0.1:{self.port.getHost().port}")
        self.check = buy.OfferCheck(self.clock, buy.RecordsKeySource(PaymentRecords(self.dht)))

    def payer(self):
        issuer = self.issuer

        class Payer:
            def transfer(self, address, amount):
                txid = issuer.wallet.pay(address, amount)
                issuer.wallet.confirm(2)
                return defer.Deferred.fromCoroutine(self._polled(txid))

            async def _polled(self, txid):
                await issuer.poll()
                return txid, 30_000

        return Payer()

    @defer.inlineCallbacks
    def test_buyStoresTokensThatVerify(self):
        lines = []
        answers = []
        purchase = self.client.purchase

        async def recorded(count):
            answers.append(await purchase(count))
            return answers[-1]

        self.client.purchase = recorded
        count = yield defer.Deferred.fromCoroutine(
            buy.buy(self.clock, self.client, self.wallet, 3, lines.append, payer=self.payer(), pollInterval=0, spendDelay=0,
                    check=self.check)
        )
        self.assertEqual(count, 3)
        self.assertIn("pay 0.000003 XMR (3000000 atomic units) to 8fakeaddress", "\n".join(lines))
        self.assertIn("2 of 2 confirmations: paid", "\n".join(lines))
        self.assertEqual(self.wallet.pending(), [])
        balance = self.wallet.balance(self.clock.seconds())
        self.assertEqual(balance[ISSUER_ID.hex()]["usable"], 3)
        key = self.issuer.keys.current(self.clock.seconds())
        seen = set()
        for _ in range(3):
            token = self.wallet.take(ISSUER_ID, self.clock.seconds())
            tokens.verifyToken(token, key.publicKey)
            seen.add(token.nonce)
        self.assertEqual(len(seen), 3)
        self.assertIsNone(self.wallet.take(ISSUER_ID, self.clock.seconds()))
        # Nothing secret in what was printed: no purchase id, no token.
        purchases = list(self.issuer.book.purchases.values())
        self.assertEqual(len(purchases), 1)
        text = "\n".join(lines)
        self.assertNotIn(answers[0]["purchase"], text)
        for token in seen:
            self.assertNotIn(token.hex()[:16], text)

    @defer.inlineCallbacks
    def test_buyResumesAfterALostAnswer(self):
        """The buyer crashes after its requests were signed: resume gets the same tokens, paying nothing more."""
        original = self.client.sign
        calls = []

        async def lost(purchaseId, body, count):
            calls.append(body)
            await original(purchaseId, body, count)
            raise IssuerError("connection lost")

        self.client.sign = lost
        yield self.assertFailure(defer.Deferred.fromCoroutine(
            buy.buy(self.clock, self.client, self.wallet, 3, lambda line: None, payer=self.payer(), pollInterval=0, spendDelay=0,
                    check=self.check)
        ), IssuerError)
        self.assertEqual(len(self.wallet.pending()), 1)
        self.client.sign = original
        got = yield defer.Deferred.fromCoroutine(
            buy.resume(self.clock, lambda url: self.client, self.wallet, lambda line: None, pollInterval=0, check=self.check)
        )
        self.assertEqual(got, 3)
        self.assertEqual(self.wallet.pending(), [])
        self.assertEqual(self.issuer.counters["tokens_signed"], 3)

    @defer.inlineCallbacks
    def test_errorsAreJSONWithStatus(self):
        e = yield self.assertFailure(defer.Deferred.fromCoroutine(self.client.purchase(4)), IssuerError)
        self.assertEqual(e.status, 400)
        self.assertIn("packs of 1, 3, 10", str(e))
        e = yield self.assertFailure(defer.Deferred.fromCoroutine(self.client.status("0" * 32)), IssuerError)
        self.assertEqual(e.status, 404)
        e = yield self.assertFailure(defer.Deferred.fromCoroutine(self.client.redeem([b"x" * 10])), IssuerError)
        self.assertEqual(e.status, 422)

    @defer.inlineCallbacks
    def test_notPaidYetThenRedeem(self):
        answer = yield defer.Deferred.fromCoroutine(self.client.purchase(1))
        e = yield self.assertFailure(
            defer.Deferred.fromCoroutine(self.client.sign(answer["purchase"], b"x" * 259, 1)), IssuerError)
        self.assertEqual(e.status, 409)
        status = yield defer.Deferred.fromCoroutine(self.client.status(answer["purchase"]))
        self.assertEqual(status["state"], AWAITING)

    @defer.inlineCallbacks
    def test_purchasesRateLimitedPerAddress(self):
        api = self.port.factory.resource
        api.admission.burst = api.admission.rate = 1
        api.admission._buckets.clear()
        yield defer.Deferred.fromCoroutine(self.client.purchase(1))
        e = yield self.assertFailure(defer.Deferred.fromCoroutine(self.client.purchase(1)), IssuerError)
        self.assertEqual(e.status, 429)

    @defer.inlineCallbacks
    def test_oversizedBodyCutOff(self):
        e = yield self.assertFailure(
            defer.Deferred.fromCoroutine(self.client._call("POST", "/v1/redeem", b"x" * 200_000)), IssuerError)
        self.assertIn("/v1/redeem", str(e))

    @defer.inlineCallbacks
    def test_infoIsPublic(self):
        offer = yield defer.Deferred.fromCoroutine(self.client.offer())
        self.assertEqual(offer.issuerId, ISSUER_ID)
        self.assertEqual(offer.packs, (1, 3, 10))
        key = self.issuer.keys.current(self.clock.seconds())
        self.assertEqual(offer.signing.tokenKeyId, key.tokenKeyId)
        raw = json.dumps(self.issuer.info())
        self.assertNotIn("private", raw.lower())


class KeyCheckTests(unittest.TestCase):
    """
    A lying issuer: its /v1/info (or an exit in the middle of a purchase
    made through a circuit) offers a key that is not its published record
    of that epoch.  The buyer refuses before paying, or before sending its
    requests if the key changes after the payment.
    """

    def setUp(self):
        HTTPTests.setUp(self)
        self.epoch = self.issuer.keys.schedule.epochAt(self.clock.seconds())

    payer = HTTPTests.payer

    def buy(self, check=None, lines=None):
        return defer.Deferred.fromCoroutine(buy.buy(
            self.clock, self.client, self.wallet, 3, (lines if lines is not None else []).append, payer=self.payer(),
            pollInterval=0, spendDelay=0, check=check or self.check))

    def tagKey(self):
        """Give this buyer a key of its own for the current epoch (never published)."""
        from meshvpn.payments.issuerkeys import EpochKey
        from meshvpn.payments.test.fakes import rsaKey

        published = self.issuer.keys.keys[self.epoch]
        for i in range(6):
            key = EpochKey(self.epoch, rsaKey(i))
            if key.spki != published.spki and key.truncatedId != self.issuer.keys.keys[self.epoch + 1].truncatedId:
                break
        self.issuer.keys.keys[self.epoch] = key
        return key

    @defer.inlineCallbacks
    def test_taggingKeyRefusedBeforePaying(self):
        tagging = self.tagKey()
        e = yield self.assertFailure(self.buy(), buy.BuyError)
        self.assertIn(f"offers a key for epoch {self.epoch} that is not the one it published in the DHT", str(e))
        self.assertEqual(self.issuer.wallet.transfers, {})  # no money moved
        self.assertEqual(self.issuer.book.purchases, {})  # not even a purchase opened
        self.assertEqual(self.wallet.pending(), [])
        # The attack, unchecked: the buyer pays and gets tokens only this key signs (marked, refused by exits).
        class Unchecked:
            async def verify(self, offer):
                return offer.signing

        yield self.buy(Unchecked())
        token = self.wallet.take(ISSUER_ID, self.clock.seconds())
        self.assertEqual(token.tokenKeyId, tagging.tokenKeyId)
        self.assertNotEqual(self.issuer.wallet.transfers, {})

    @defer.inlineCallbacks
    def test_publishedKeyUnderAnotherEpochRefused(self):
        """The next epoch's (published) key offered as this epoch's: key and epoch must both match the record."""
        info = self.issuer.info

        def lying():
            out = info()
            nextKey = self.issuer.keys.keys[self.epoch + 1]
            for k in out["keys"]:
                if k["signing"]:
                    k["spki"], k["token_key_id"] = nextKey.spki.hex(), nextKey.tokenKeyId.hex()
            return out

        self.issuer.info = lying
        e = yield self.assertFailure(self.buy(), buy.BuyError)
        self.assertIn("not the one it published in the DHT", str(e))
        self.assertEqual(self.issuer.wallet.transfers, {})

    @defer.inlineCallbacks
    def test_unpublishedIssuerRefused(self):
        e = yield self.assertFailure(
            self.buy(buy.OfferCheck(self.clock, buy.RecordsKeySource(PaymentRecords(FakeDHT(self.clock))))), buy.BuyError)
        self.assertIn("has no record in the DHT", str(e))
        self.assertEqual(self.issuer.wallet.transfers, {})

    @defer.inlineCallbacks
    def test_keyChangedAfterPaymentNoRequestsSent(self):
        """Paid with the published key in the offer, then offered a tagging key: the requests never leave."""
        payer = self.payer()
        transfer = payer.transfer

        def thenTag(address, amount):
            d = transfer(address, amount)
            self.tagKey()
            return d

        payer.transfer = thenTag
        self.payer = lambda: payer
        e = yield self.assertFailure(self.buy(), buy.BuyError)
        self.assertIn("not the one it published in the DHT", str(e))
        self.assertEqual(self.issuer.counters["tokens_signed"], 0)
        self.assertEqual(len(self.wallet.pending()), 1)  # resumable once the issuer offers its published key

    @defer.inlineCallbacks
    def test_checkedThroughTheClientNode(self):
        """What ``meshvpn wallet buy`` does: the client node sharing the wallet reads the DHT for it."""
        from meshvpn.client.paying import PaidExitDirectory

        directory = PaidExitDirectory(self.clock, PaymentRecords(self.dht), self.wallet, ready=None)
        node = task.LoopingCall(directory._lookForAsks)
        node.start(0.02)
        self.addCleanup(node.stop)
        check = buy.OfferCheck(self.clock, buy.WalletKeySource(reactor, self.wallet, timeout=10, poll=0.02))
        lines = []
        count = yield self.buy(check, lines)
        self.assertEqual(count, 3)
        self.assertIn(f"wallet: the issuer's key for epoch {self.epoch} is the one it published in the DHT", lines)
        self.assertEqual(self.wallet.askedIssuers(), {})
        info, keys = self.wallet.issuerView(ISSUER_ID)
        self.assertEqual(keys[self.epoch], self.issuer.keys.keys[self.epoch].spki)
        # ... and the same way, a tagging key is refused.
        self.tagKey()
        e = yield self.assertFailure(self.buy(check), buy.BuyError)
        self.assertIn("not the one it published in the DHT", str(e))

    @defer.inlineCallbacks
    def test_noClientNodeIsAClearError(self):
        check = buy.OfferCheck(self.clock, buy.WalletKeySource(reactor, self.wallet, timeout=0.2, poll=0.02))
        e = yield self.assertFailure(self.buy(check), buy.BuyError)
        self.assertIn("no MeshVPN client using this wallet answered", str(e))
        self.assertIn("--payment-wallet", str(e))
        self.assertEqual(self.issuer.wallet.transfers, {})
        self.assertEqual(self.wallet.askedIssuers(), {})  # the question is withdrawn


class SignedPurchaseTests(unittest.TestCase):
    """Something between the buyer and the issuer (the exit of a purchase circuit) rewrites the answers."""

    def setUp(self):
        HTTPTests.setUp(self)

    payer = HTTPTests.payer
    buy = KeyCheckTests.buy

    @defer.inlineCallbacks
    def test_addressSwappedInTransitRefused(self):
        original = self.client.purchase

        async def swapped(count):
            answer = await original(count)
            answer["address"] = "8attackeraddress"
            return answer

        self.client.purchase = swapped
        e = yield self.assertFailure(self.buy(), buy.BuyError)
        self.assertIn("the purchase answer is not signed by issuer", str(e))
        self.assertEqual(self.issuer.wallet.transfers, {})  # nothing paid, to anyone

    @defer.inlineCallbacks
    def test_unsignedAnswerRefused(self):
        self.issuer.identity = None
        e = yield self.assertFailure(self.buy(), buy.BuyError)
        self.assertIn("does not sign its purchase answers", str(e))

    @defer.inlineCallbacks
    def test_anotherIssuerAtTheAddressRefused(self):
        """The buyer named the issuer by its node id: a server that is another issuer is refused."""
        e = yield self.assertFailure(defer.Deferred.fromCoroutine(buy.buy(
            self.clock, self.client, self.wallet, 3, lambda line: None, payer=self.payer(), pollInterval=0,
            spendDelay=0, check=self.check, issuerId=b"\x01" * 32)), buy.BuyError)
        self.assertIn(f"is issuer {ISSUER_ID.hex()[:16]}…, not 0101010101010101…", str(e))
        self.assertEqual(self.issuer.book.purchases, {})
