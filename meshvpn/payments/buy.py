"""Buying tokens: quote, pay, wait for confirmations, blind, get signed, unblind, store.

Why in this order, with a file at each step: a purchase spans minutes (the
confirmations) and two machines, so it must survive the buyer's crash or a
lost answer.  The pending file (0600, C{pending/} in the wallet) is written
before the buyer pays, and again, with the blinding secrets and the exact
request bytes, before the requests are sent; the issuer signs the same
requests again if asked, so a resumed purchase always gets its tokens and
never pays twice.  Once the tokens are stored the pending file, the only
thing linking them to the purchase, is deleted.

Progress goes to C{out} (one line per change).  It names the amount and the
subaddress to pay, never the purchase id (a bearer secret) or a token.

Before paying, and again before sending the requests, the key the issuer
offers is checked against the issuer's own signed record of that epoch in
the DHT (L{OfferCheck}): the one key every exit accepts.  A key for this
buyer alone (to recognise its tokens when spent) or an impostor's (tokens
no exit takes) is refused before any money moves.  The DHT is read by
whoever can: the client node sharing the wallet directory
(L{WalletKeySource}, what ``meshvpn wallet`` uses) or a node's own records
reader (L{RecordsKeySource}).
"""

import json
import os

import attrs
from twisted.internet import task

from meshvpn.errors import MeshVPNError
from meshvpn.payments import tokens
from meshvpn.payments.monero import formatXMR
from meshvpn.identity import verifySignature
from meshvpn.payments.purchases import EXPIRED, purchaseMessage
from meshvpn.payments.records import IssuerKeyRecord
from meshvpn.payments.tokens import PendingToken
from meshvpn.secretfile import writeSecretFile


EPOCH_SKEW = 300  # seconds around an epoch's turn in which the buyer's and the issuer's clocks may disagree


class BuyError(MeshVPNError):
    """A purchase could not be completed; the message says what to do."""


def _save(path, state):
    writeSecretFile(path, json.dumps(state).encode())


def _load(path):
    with open(path, "rb") as f:
        return json.loads(f.read(1 << 20))


class RecordsKeySource:
    """The issuer's records read with a L{meshvpn.payments.records.PaymentRecords} (a node's DHT)."""

    def __init__(self, records):
        self.records = records

    async def read(self, issuerId, epoch):
        info = await self.records.fetchIssuer(issuerId)
        record = await self.records.fetchKey(issuerId, epoch)
        return info, record


class WalletKeySource:
    """
    The issuer's records as the client node sharing the wallet directory
    read them from the DHT (L{meshvpn.client.paying.PaidExitDirectory}
    answers the wallet's question files).  Without such a node nothing
    answers: a clear error after C{timeout} seconds, not a purchase.
    """

    def __init__(self, reactor, wallet, timeout=90.0, poll=0.5):
        self.reactor = reactor
        self.wallet = wallet
        self.timeout = timeout
        self.poll = poll

    async def read(self, issuerId, epoch):
        info, keys = await self.view(issuerId)
        spki = keys.get(epoch)
        return info, (IssuerKeyRecord(epoch, spki) if spki is not None else None)

    async def view(self, issuerId):
        """@return: C{(IssuerInfo or None, {epoch: spki})}, freshly read from the DHT by the client node."""
        ask = self.wallet.askIssuer(issuerId)
        deadline = self.reactor.seconds() + self.timeout
        try:
            while self.wallet.stillAsked(ask):
                if self.reactor.seconds() > deadline:
                    raise BuyError(
                        f"no MeshVPN client using this wallet answered within {self.timeout:.0f}s, so the issuer's key "
                        "cannot be checked against its DHT record; not paying. Start the client with "
                        f"--payment-wallet {self.wallet.directory} (it reads the DHT for the wallet), then buy again"
                    )
                await task.deferLater(self.reactor, self.poll, lambda: None)
        finally:
            self.wallet.forgetAsk(ask)
        return self.wallet.issuerView(issuerId)


class OfferCheck:
    """
    Checks an issuer's offer against its DHT records.

    @param source: a L{RecordsKeySource} or L{WalletKeySource}.
    """

    def __init__(self, reactor, source):
        self.reactor = reactor
        self.source = source

    async def verify(self, offer):
        """
        @return: the offer's L{SigningKey}, its expiry the one the DHT's
            schedule gives.
        @raise BuyError: the key or its epoch is not the published one.
        """
        signing = offer.signing
        who = f"issuer {offer.issuerId.hex()[:16]}…"
        info, record = await self.source.read(offer.issuerId, signing.epoch)
        if info is None:
            raise BuyError(f"{who} has no record in the DHT: its key cannot be checked; not paying")
        if record is None:
            raise BuyError(f"{who} published no key for epoch {signing.epoch} in the DHT, but offers one; not paying")
        if record.epoch != signing.epoch or record.spki != signing.spki:
            raise BuyError(
                f"{who} offers a key for epoch {signing.epoch} that is not the one it published in the DHT "
                "(a key for this buyer alone would mark its tokens; an impostor's would make them worthless); not paying"
            )
        schedule = info.schedule
        now = self.reactor.seconds()
        current = schedule.epochAt(now)
        # The epoch the issuer signs in now; one on either side only near the turn (the clocks may differ).
        nearTurn = min(now - schedule.start(current), schedule.start(current + 1) - now) <= EPOCH_SKEW
        if signing.epoch != current and not (abs(signing.epoch - current) == 1 and nearTurn):
            raise BuyError(f"{who} offers a key of epoch {signing.epoch}, not of the current epoch {current}; not paying")
        return attrs.evolve(signing, spendableUntil=schedule.spendableUntil(signing.epoch))


async def buy(reactor, client, wallet, count, out, payer=None, pollInterval=2.0, spendDelay=600.0, timeout=None,
              check=None, issuerId=None):
    """
    Buy C{count} tokens from the issuer behind C{client} into C{wallet}.

    @param client: an L{meshvpn.payments.issuerclient.IssuerClient}.
    @param check: an L{OfferCheck}: the offered key is checked against the
        issuer's DHT record before paying and before the requests go.
    @param issuerId: the issuer's node id when the buyer named it: the
        server must be that issuer.
    @param payer: an L{meshvpn.interfaces.IMoneroWallet} to pay from, or
        C{None}: the user pays the printed address with any wallet.
    @param spendDelay: each token becomes spendable after a random delay up
        to this many seconds.
    @return: the number of tokens stored.
    """
    if check is None:
        raise BuyError("buying needs a check of the issuer's key against the DHT")
    offer = await client.offer()
    if issuerId is not None and offer.issuerId != issuerId:
        raise BuyError(f"the server at {client.base} is issuer {offer.issuerId.hex()[:16]}…, "
                       f"not {issuerId.hex()[:16]}…; not paying")
    if count not in offer.packs:
        raise BuyError(f"the issuer sells packs of {', '.join(map(str, offer.packs))} tokens, not {count}")
    await check.verify(offer)
    out(f"wallet: the issuer's key for epoch {offer.signing.epoch} is the one it published in the DHT")
    answer = await client.purchase(count)
    _checkSigned(offer, answer, count)
    path = wallet.pendingPath(wallet.newPendingKey())
    state = {
        "version": 1, "issuer_url": client.base, "issuer_id": offer.issuerId.hex(), "purchase": answer["purchase"],
        "tokens": count, "amount": answer["amount"], "address": answer["address"], "created": reactor.seconds(),
        "spend_delay": spendDelay,
    }
    _save(path, state)
    out(f"wallet: purchase of {count} tokens from issuer {offer.issuerId.hex()[:16]}…: "
        f"pay {formatXMR(answer['amount'])} ({answer['amount']} atomic units) to {answer['address']}")
    if payer is not None:
        txid, fee = await payer.transfer(answer["address"], answer["amount"])
        out(f"wallet: paid from the local Monero wallet: transaction {txid[:16]}…, fee {formatXMR(fee)}")
    return await complete(reactor, client, wallet, path, state, out, pollInterval, timeout, check)


def _checkSigned(offer, answer, count):
    """The purchase answer (the address to pay above all) must be signed by the issuer's node key."""
    who = f"issuer {offer.issuerId.hex()[:16]}…"
    if offer.identityKey is None or not isinstance(answer.get("signature"), str):
        raise BuyError(f"{who} does not sign its purchase answers; not paying")
    try:
        signature = bytes.fromhex(answer["signature"])
        message = purchaseMessage(offer.issuerId, answer["purchase"], count, answer["amount"], answer["address"])
    except (ValueError, UnicodeEncodeError):
        signature, message = b"", b""
    if answer.get("tokens") != count or not verifySignature(offer.identityKey, message, signature):
        raise BuyError(f"the purchase answer is not signed by {who}: something between this machine and the "
                       "issuer changed it (the address to pay?); not paying")


async def resume(reactor, clientFor, wallet, out, pollInterval=2.0, timeout=None, check=None):
    """Finish every purchase left pending. @return: tokens stored."""
    total = 0
    for path in wallet.pending():
        state = _load(path)
        out(f"wallet: resuming a purchase of {state['tokens']} tokens ({formatXMR(state['amount'])} to {state['address']})")
        total += await complete(reactor, clientFor(state["issuer_url"]), wallet, path, state, out, pollInterval, timeout,
                                check)
    return total


async def complete(reactor, client, wallet, path, state, out, pollInterval=2.0, timeout=None, check=None):
    if "requests" not in state:
        if check is None:
            raise BuyError("buying needs a check of the issuer's key against the DHT")
        await _waitPaid(reactor, client, state, out, pollInterval, timeout)
        offer = await client.offer()
        if offer.issuerId.hex() != state["issuer_id"]:
            raise BuyError("the issuer's id changed during the purchase; not sending requests")
        # The key may have turned since the payment: the one the requests name is checked too.
        signing = await check.verify(offer)
        _makeRequests(state, attrs.evolve(offer, signing=signing))
        _save(path, state)  # the blinding secrets are on disk before the requests leave
    req = state["requests"]
    publicKey = tokens.decodePublicKey(bytes.fromhex(req["spki"]))
    responses = await client.sign(state["purchase"], bytes.fromhex(req["body"]), state["tokens"])
    issuerId = bytes.fromhex(state["issuer_id"])
    keyId = tokens.tokenKeyId(bytes.fromhex(req["spki"]))
    challenge = tokens.meshChallenge(issuerId).digest()
    now = reactor.seconds()
    rng = wallet.rng
    got = []
    for item, response in zip(req["items"], responses):
        pending = PendingToken(bytes.fromhex(item["nonce"]), challenge, keyId, int(item["inv"], 16))
        got.append(tokens.finishToken(publicKey, pending, response))  # raises if the issuer cheated
    for token in got:
        wallet.add(issuerId, token, now + rng.uniform(0, state.get("spend_delay", 0)), req["spendable_until"])
    os.unlink(path)
    delay = state.get("spend_delay", 0)
    out(f"wallet: received {len(got)} tokens (epoch {req['epoch']}); spendable "
        + (f"after a random delay of up to {delay:.0f}s" if delay else "now"))
    return len(got)


def _makeRequests(state, offer):
    challenge = tokens.meshChallenge(offer.issuerId)
    items, body = [], []
    for _ in range(state["tokens"]):
        request, pending = tokens.requestToken(offer.signing.publicKey, challenge)
        items.append({"nonce": pending.nonce.hex(), "inv": format(pending.inv, "x")})
        body.append(request.encode())
    state["requests"] = {
        "epoch": offer.signing.epoch, "spki": offer.signing.spki.hex(), "spendable_until": offer.signing.spendableUntil,
        "body": b"".join(body).hex(), "items": items,
    }


async def _waitPaid(reactor, client, state, out, pollInterval, timeout):
    deadline = None if timeout is None else reactor.seconds() + timeout
    shown = None
    while True:
        st = await client.status(state["purchase"])
        need = st["confirmations_needed"]
        if st["state"] in ("paid", "issued"):
            line = f"wallet: {min(st['confirmations'], need) if need else 0} of {need} confirmations: paid"
        elif st["state"] == EXPIRED:
            raise BuyError("the purchase expired before it was paid (a late payment is still honoured: "
                           "run 'meshvpn wallet resume' once it confirms)")
        elif st["seen"] == 0:
            line = "wallet: waiting for the payment ..."
        elif st["confirmations"] == 0:
            line = f"wallet: payment of {formatXMR(st['seen'])} seen in the pool; waiting for {need} confirmations"
        else:
            line = f"wallet: {st['confirmations']} of {need} confirmations"
        if line != shown:
            out(line)
            shown = line
        if st["state"] in ("paid", "issued"):
            return
        if deadline is not None and reactor.seconds() > deadline:
            raise BuyError("gave up waiting for the payment (run 'meshvpn wallet resume' to continue)")
        await task.deferLater(reactor, pollInterval, lambda: None)

