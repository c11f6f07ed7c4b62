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
"""

import json
import os

from twisted.internet import task

from meshvpn.errors import MeshVPNError
from meshvpn.payments import tokens
from meshvpn.payments.monero import formatXMR
from meshvpn.payments.purchases import EXPIRED
from meshvpn.payments.tokens import PendingToken
from meshvpn.secretfile import writeSecretFile


class BuyError(MeshVPNError):
    """A purchase could not be completed; the message says what to do."""


def _save(path, state):
    writeSecretFile(path, json.dumps(state).encode())


def _load(path):
    with open(path, "rb") as f:
        return json.loads(f.read(1 << 20))


async def buy(reactor, client, wallet, count, out, payer=None, pollInterval=2.0, spendDelay=600.0, timeout=None):
    """
    Buy C{count} tokens from the issuer behind C{client} into C{wallet}.

    @param client: an L{meshvpn.payments.issuerclient.IssuerClient}.
    @param payer: an L{meshvpn.interfaces.IMoneroWallet} to pay from, or
        C{None}: the user pays the printed address with any wallet.
    @param spendDelay: each token becomes spendable after a random delay up
        to this many seconds.
    @return: the number of tokens stored.
    """
    offer = await client.offer()
    if count not in offer.packs:
        raise BuyError(f"the issuer sells packs of {', '.join(map(str, offer.packs))} tokens, not {count}")
    answer = await client.purchase(count)
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
    return await complete(reactor, client, wallet, path, state, out, pollInterval, timeout)


async def resume(reactor, clientFor, wallet, out, pollInterval=2.0, timeout=None):
    """Finish every purchase left pending. @return: tokens stored."""
    total = 0
    for path in wallet.pending():
        state = _load(path)
        out(f"wallet: resuming a purchase of {state['tokens']} tokens ({formatXMR(state['amount'])} to {state['address']})")
        total += await complete(reactor, clientFor(state["issuer_url"]), wallet, path, state, out, pollInterval, timeout)
    return total


async def complete(reactor, client, wallet, path, state, out, pollInterval=2.0, timeout=None):
    if "requests" not in state:
        await _waitPaid(reactor, client, state, out, pollInterval, timeout)
        offer = await client.offer()
        if offer.issuerId.hex() != state["issuer_id"]:
            raise BuyError("the issuer's id changed during the purchase; not sending requests")
        _makeRequests(state, offer)
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

