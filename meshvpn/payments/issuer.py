"""The issuer: sells bandwidth tokens for Monero and signs blinded token requests once paid.

What it does, in order (doc/payments.md has the protocol):

1. quotes a price (atomic units per token, for one of the allowed pack sizes:
   fixed denominations make purchases look alike);
2. gives each purchase its own fresh subaddress of its wallet, so a payment
   names its purchase without the buyer sending anything else;
3. watches those subaddresses (monero-wallet-rpc) until the transfers to one
   add up to the price with the configured confirmations;
4. signs the buyer's blinded TokenRequests for that purchase (RFC 9578), as
   many as were paid for, once; the same requests again if the buyer lost
   the answer, never new ones;
5. keeps one signing key per epoch, published in the DHT (signed by its node
   key) with its price, schedule and API address, republished as epochs turn;
6. keeps the authoritative spent-token list per epoch: exits report the
   tokens they accept (L{redeem}) and learn whether one was already spent
   at another exit.

It sees payments and blinded requests; it never sees a token before it is
spent, and then cannot tell which purchase it came from (the blinding).
Collaborators come in through the constructor; time comes from the reactor.
"""

import hashlib

import attrs
from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from meshvpn.errors import MeshVPNError
from meshvpn.interfaces import IStatusSource
from meshvpn.payments import tokens
from meshvpn.payments.blindrsa import BlindSignatureError
from meshvpn.payments.monero import MoneroRPCError, formatXMR
from meshvpn.payments.purchases import (
    AWAITING, EXPIRED, ISSUED, PAID, Purchase, applyPayments, idHash, newPurchaseId, purchaseMessage,
)
from meshvpn.payments.records import IssuerInfo, IssuerKeyRecord
from meshvpn.payments.tokens import Token, TokenFormatError, TokenRequest

# Redeem answers, one byte per token.
REDEEMED, DOUBLE_SPENT, INVALID, EXPIRED_KEY = 0, 1, 2, 3
MAX_REDEEM = 64


class PurchaseError(MeshVPNError):
    """A purchase request cannot be served; C{status} is the HTTP status that says why."""

    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status


@attrs.frozen
class IssuerTerms:
    price: int  # atomic units per token
    packs: tuple  # allowed numbers of tokens per purchase
    confirmations: int = 10
    purchaseLifetime: float = 86400.0
    pollInterval: float = 5.0


@implementer(IStatusSource)
class IssuerService(service.Service):
    """
    @param keys: the L{meshvpn.payments.issuerkeys.IssuerKeyStore}.
    @param book: the L{meshvpn.payments.purchases.PurchaseBook}.
    @param wallet: an L{meshvpn.interfaces.IMoneroWallet}.
    @param spent: an L{meshvpn.interfaces.ISpentTokenStore}.
    @param records: a L{meshvpn.payments.records.PaymentRecords} to publish
        with, or C{None} (not published).
    @param apiAddress: C{callable() -> "HOST:PORT"} published as the API.
    @param ready: C{callable() -> Deferred} firing once publishing can work
        (the DHT joined, the API listening); called when the reactor runs.
    """

    log = Logger()

    def __init__(self, reactor, issuerId, keys, book, wallet, spent, terms, records=None, apiAddress=None,
                 republish=3600.0, ready=None, identity=None):
        self.reactor = reactor
        self.issuerId = issuerId
        # The node key that signs purchase answers (the one its DHT records are signed with).
        self.identity = identity if identity is not None else getattr(records, "identity", None)
        self.keys = keys
        self.book = book
        self.wallet = wallet
        self.spent = spent
        self.terms = terms
        self.records = records
        self.apiAddress = apiAddress
        self.republish = republish
        self._ready = ready or (lambda: defer.succeed(None))
        self._canPublish = False
        self.challenge = tokens.meshChallenge(issuerId)
        self.challengeDigest = self.challenge.digest()
        self.counters = {"purchases": 0, "paid": 0, "tokens_signed": 0, "redeemed": 0, "double_spends": 0,
                         "invalid_redeems": 0, "wallet_errors": 0}
        self._polling = None
        self._pollLoop = None
        self._epochLoop = None
        self._published = None

    # -- lifetime

    def startService(self):
        super().startService()
        self.tick()
        self._pollLoop = task.LoopingCall(self.poll)
        self._pollLoop.clock = self.reactor
        self._pollLoop.start(self.terms.pollInterval, now=True).addErrback(self._loopDied, "payment watch")
        every = min(self.keys.schedule.length / 4, self.republish)
        self._epochLoop = task.LoopingCall(self.tick)
        self._epochLoop.clock = self.reactor
        self._epochLoop.start(every, now=False).addErrback(self._loopDied, "epoch")
        self.reactor.callWhenRunning(self._whenReady)

    def _whenReady(self):
        def ready(_):
            self._canPublish = True
            return self.publish()

        self._ready().addCallback(ready).addErrback(lambda f: self.log.failure("issuer: start-up failed", f))

    def stopService(self):
        super().stopService()
        for loop in (self._pollLoop, self._epochLoop):
            if loop is not None and loop.running:
                loop.stop()
        return self._polling

    def _loopDied(self, failure, what):
        self.log.failure("issuer: the {what} loop stopped", failure, what=what)

    def info(self):
        """The public facts a buyer needs (also what is published in the DHT)."""
        now = self.reactor.seconds()
        current = self.keys.current(now)
        schedule = self.keys.schedule
        return {
            "issuer_id": self.issuerId.hex(),
            "issuer_name": self.challenge.issuerName.decode("ascii"),
            "price": self.terms.price,
            "price_xmr": formatXMR(self.terms.price),
            "packs": list(self.terms.packs),
            "confirmations": self.terms.confirmations,
            "epoch": current.epoch,
            "epoch_length": schedule.length,
            "grace": schedule.grace,
            "identity_key": None if self.identity is None else self.identity.identityPublicKey.hex(),
            "keys": [
                {"epoch": k.epoch, "token_key_id": k.tokenKeyId.hex(), "spki": k.spki.hex(),
                 "signing": k.epoch == current.epoch, "spendable_until": schedule.spendableUntil(k.epoch)}
                for k in self.keys.live(now)
            ],
        }

    # -- epochs: keys made ahead, expired ones dropped with their spent lists, records published

    def tick(self):
        now = self.reactor.seconds()
        self.keys.prepare(now)  # also deletes the keys whose tokens expired
        known = {k.tokenKeyId for k in self.keys.keys.values()}
        for keyId in self.spent.keys():
            if keyId not in known:
                self.spent.forgetKey(keyId)
        if self.book.expire(now):
            self.book.save()
        return self.publish()

    def publish(self):
        if self.records is None or self.apiAddress is None or not self._canPublish:
            return defer.succeed(None)
        now = self.reactor.seconds()
        info = IssuerInfo(self.keys.schedule, self.terms.price, self.terms.confirmations, self.apiAddress())
        keys = [IssuerKeyRecord(k.epoch, k.spki) for k in self.keys.live(now)]
        lifetime = min(3 * self.republish, 86400)
        d = self.records.publishIssuer(info, keys, lifetime)

        def done(_):
            self._published = now
            self.log.info("issuer: published price, schedule and {n} epoch keys in the DHT", n=len(keys))

        def failed(f):
            self.log.warn("issuer: could not publish in the DHT ({why}); next try at the next tick",
                          why=f.getErrorMessage())

        return d.addCallbacks(done, failed)

    # -- selling

    @defer.inlineCallbacks
    def quote(self, count):
        """
        Open a purchase of C{count} tokens.

        @return: (Deferred) C{(purchaseId, Purchase)}.
        @raise PurchaseError: a pack size not sold, too many open purchases,
            or the wallet unavailable.
        """
        if count not in self.terms.packs:
            raise PurchaseError(f"tokens are sold in packs of {', '.join(map(str, self.terms.packs))}")
        if self.book.openCount() >= self.book.maxOpen:
            raise PurchaseError("too many purchases are waiting for payment; try later", 503)
        try:
            index, address = yield self.wallet.createAddress("meshvpn purchase")
        except MoneroRPCError as e:
            self.counters["wallet_errors"] += 1
            self.log.warn("issuer: the wallet could not make a subaddress: {why}", why=str(e))
            raise PurchaseError("the issuer's wallet is unavailable; try later", 503) from None
        now = self.reactor.seconds()
        purchaseId = newPurchaseId()
        purchase = Purchase(
            idHash=idHash(purchaseId), tokens=count, amount=count * self.terms.price, address=address,
            subaddrIndex=index, created=now, expires=now + self.terms.purchaseLifetime,
        )
        self.book.add(purchase)
        self.counters["purchases"] += 1
        self.log.info("issuer: purchase of {n} tokens opened ({amount}); {open} awaiting payment",
                      n=count, amount=formatXMR(purchase.amount), open=self.book.openCount())
        return purchaseId, purchase

    def signPurchase(self, purchaseId, purchase):
        """@return: the node key's signature of the purchase answer (hex), or C{None} without a key."""
        if self.identity is None:
            return None
        message = purchaseMessage(self.issuerId, purchaseId, purchase.tokens, purchase.amount, purchase.address)
        return self.identity.sign(message).hex()

    def status(self, purchaseId=None):
        if purchaseId is None:  # IStatusSource
            return {"purchases": self.book.counts(), "counters": dict(self.counters),
                    "keys": len(self.keys.keys), "spent": self.spent.count()}
        purchase = self.book.get(purchaseId)
        if purchase is None:
            raise PurchaseError("no such purchase", 404)
        return purchase.public(self.terms.confirmations)

    def poll(self):
        """Look at the wallet for payments to open purchases (one look at a time)."""
        if self._polling is not None:
            return self._polling
        watched = [p for p in self.book.purchases.values() if p.state in (AWAITING, EXPIRED)]
        if not watched:
            return defer.succeed(None)
        d = self._polling = defer.Deferred.fromCoroutine(self._poll(watched))
        d.addBoth(self._polled)
        return d

    def _polled(self, result):
        self._polling = None
        if isinstance(result, Failure):
            self.log.failure("issuer: watching payments failed", result)
        return None

    async def _poll(self, watched):
        try:
            await self.wallet.refresh()
            incoming = await self.wallet.incoming([p.subaddrIndex for p in watched])
        except MoneroRPCError as e:
            self.counters["wallet_errors"] += 1
            self.log.warn("issuer: cannot read the wallet: {why}", why=str(e))
            return
        byIndex = {}
        for i in incoming:
            byIndex.setdefault(i.subaddrIndex, []).append(i)
        changed = False
        for p in watched:
            before = (p.seen, p.received, p.confirmations, p.state)
            if applyPayments(p, byIndex.get(p.subaddrIndex, []), self.terms.confirmations):
                self.counters["paid"] += 1
                self.log.info("issuer: purchase of {n} tokens paid ({amount}, {c} confirmations)",
                              n=p.tokens, amount=formatXMR(p.received), c=p.confirmations)
            changed |= before != (p.seen, p.received, p.confirmations, p.state)
        if changed:
            self.book.save()

    def sign(self, purchaseId, body):
        """
        Sign the blinded TokenRequests of a paid purchase (concatenated, one
        per token bought).

        @return: the concatenated TokenResponses.
        @raise PurchaseError: unknown, unpaid, already signed for other
            requests, or malformed requests.
        """
        purchase = self.book.get(purchaseId)
        if purchase is None:
            raise PurchaseError("no such purchase", 404)
        if purchase.state in (AWAITING, EXPIRED):
            raise PurchaseError("not paid yet", 409)
        if len(body) != purchase.tokens * tokens.REQUEST_LEN:
            raise PurchaseError(f"expected {purchase.tokens} token requests of {tokens.REQUEST_LEN} bytes", 422)
        digest = hashlib.sha256(body).hexdigest()
        if purchase.state == ISSUED and digest != purchase.requestHash:
            raise PurchaseError("this purchase was already signed for other requests", 409)
        now = self.reactor.seconds()
        try:
            requests = [TokenRequest.decode(body[i:i + tokens.REQUEST_LEN]) for i in range(0, len(body), tokens.REQUEST_LEN)]
        except TokenFormatError as e:
            raise PurchaseError(str(e), 422) from None
        truncated = {r.truncatedKeyId for r in requests}
        key = self.keys.signingKey(requests[0].truncatedKeyId, now) if len(truncated) == 1 else None
        if key is None:
            raise PurchaseError("the requests must all name the current signing key", 422)
        try:
            out = b"".join(tokens.signRequest(key.signer, key.tokenKeyId, r) for r in requests)
        except (BlindSignatureError, TokenFormatError) as e:
            raise PurchaseError(f"cannot sign: {e}", 422) from None
        if purchase.state == PAID:
            purchase.state = ISSUED
            purchase.requestHash = digest
            purchase.issuedAt = now
            self.book.save()  # before the answer leaves: a crash now still knows it was signed
            self.counters["tokens_signed"] += len(requests)
            self.log.info("issuer: signed {n} tokens of epoch {e}", n=len(requests), e=key.epoch)
        return out

    # -- spending (exits report here)

    def redeem(self, tokenBytes):
        """
        Record tokens an exit accepted; tell it which were spent before.

        @param tokenBytes: a list of encoded tokens.
        @return: one status byte per token (L{REDEEMED}, L{DOUBLE_SPENT},
            L{INVALID}, L{EXPIRED_KEY}).
        """
        now = self.reactor.seconds()
        out = bytearray()
        for raw in tokenBytes[:MAX_REDEEM]:
            out.append(self._redeemOne(raw, now))
        return bytes(out)

    def _redeemOne(self, raw, now):
        try:
            token = Token.decode(raw)
        except TokenFormatError:
            self.counters["invalid_redeems"] += 1
            return INVALID
        key = self.keys.byKeyId(token.tokenKeyId)
        if key is None or not self.keys.schedule.spendableAt(key.epoch, now):
            return EXPIRED_KEY
        if token.challengeDigest != self.challengeDigest:
            self.counters["invalid_redeems"] += 1
            return INVALID
        try:
            tokens.verifyToken(token, key.publicKey)
        except BlindSignatureError:
            self.counters["invalid_redeems"] += 1
            return INVALID
        if self.spent.spend(token.tokenKeyId, token.nullifier()):
            self.counters["redeemed"] += 1
            return REDEEMED
        self.counters["double_spends"] += 1
        return DOUBLE_SPENT
