"""The issuer's book of purchases: what was asked, where it is to be paid, what arrived, what was signed.

Why a book on disk: "an issuer restart loses nothing".  A purchase paid
before a restart is still paid after it, and the buyer can still fetch its
tokens; a purchase signed before it can be signed again with the same
requests (the buyer lost the answer) but never with new ones.  The book is
one JSON file, replaced atomically (0600) on every change.

A purchase is keyed by SHA-256 of its id: the id is a bearer secret (whoever
holds it collects the tokens), so the book holds only its hash and no log
line carries either.  What the book links is a payment to a purchase, and
the purchase to the SHA-256 of the blinded requests it signed; neither says
anything about the tokens (the blinding is the client's secret).

Payment rules (all amounts integers in atomic units): transfers to the
purchase's own subaddress count once they have C{confirmations}
confirmations; a transfer with an unlock time is never counted (it could be
locked for years); paying more is accepted, paying in several transfers too.
"""

import hashlib
import json
import os
import secrets
import struct

import attrs

from meshvpn.secretfile import writeSecretFile

BOOK_FILE = "purchases.json"
AWAITING, PAID, ISSUED, EXPIRED = "awaiting-payment", "paid", "issued", "expired"
STATES = (AWAITING, PAID, ISSUED, EXPIRED)


def idHash(purchaseId):
    return hashlib.sha256(b"meshvpn-purchase\x00" + purchaseId.encode("ascii", "replace")).hexdigest()


def newPurchaseId():
    return secrets.token_hex(16)


@attrs.define
class Purchase:
    idHash: str
    tokens: int
    amount: int
    address: str
    subaddrIndex: int
    created: float
    expires: float
    state: str = AWAITING
    seen: int = 0  # atomic units seen (pool included)
    received: int = 0  # atomic units with enough confirmations
    confirmations: int = 0  # of the least confirmed transfer counted
    transfers: int = 0
    lockedIgnored: int = 0
    requestHash: str = ""
    issuedAt: float = 0.0

    def toJSON(self):
        return attrs.asdict(self)

    @classmethod
    def fromJSON(cls, data):
        fields = {f.name for f in attrs.fields(cls)}
        p = cls(**{k: v for k, v in data.items() if k in fields})
        if p.state not in STATES or not isinstance(p.amount, int) or not isinstance(p.tokens, int):
            raise ValueError("bad purchase entry")
        return p

    def public(self, needed):
        """What the buyer is shown (no id, no hash)."""
        return {
            "state": self.state, "tokens": self.tokens, "amount": self.amount, "address": self.address,
            "seen": self.seen, "received": self.received, "confirmations": self.confirmations,
            "confirmations_needed": needed, "expires": int(self.expires),
        }


PURCHASE_CONTEXT = b"meshvpn-purchase-v1\x00"


def purchaseMessage(issuerId, purchaseId, tokens, amount, address):
    """
    What the issuer signs (with its node key) in each purchase answer: the
    buyer pays only an address its issuer vouched for, never one an exit
    carrying the purchase put in.
    """
    return (PURCHASE_CONTEXT + issuerId + purchaseId.encode("ascii") + struct.pack("!HQ", tokens, amount)
            + address.encode("utf-8"))


def applyPayments(purchase, incoming, needed):
    """
    Update C{purchase} from the transfers to its subaddress.

    @param incoming: L{meshvpn.payments.monero.Incoming} list for its subaddress.
    @return: whether the purchase just became paid.
    """
    usable = [i for i in incoming if i.unlockTime == 0]
    purchase.lockedIgnored = len(incoming) - len(usable)
    purchase.seen = sum(i.amount for i in usable)
    purchase.transfers = len(usable)
    confirmed = [i for i in usable if not i.inPool]
    purchase.confirmations = min((i.confirmations for i in confirmed), default=0)
    purchase.received = sum(i.amount for i in confirmed if i.confirmations >= needed)
    if purchase.state in (AWAITING, EXPIRED) and purchase.received >= purchase.amount:
        purchase.state = PAID
        return True
    return False


class PurchaseBook:
    """
    @param maxOpen: purchases awaiting payment at once (each costs a
        subaddress in the wallet, so strangers cannot make unbounded many).
    """

    def __init__(self, dataDir, maxOpen=1000, keepIssued=7 * 86400):
        self.path = os.path.join(dataDir, BOOK_FILE)
        self.maxOpen = maxOpen
        self.keepIssued = keepIssued
        self.purchases = {}
        try:
            with open(self.path, "rb") as f:
                data = json.loads(f.read())
        except FileNotFoundError:
            data = {"purchases": []}
        for entry in data.get("purchases", []):
            p = Purchase.fromJSON(entry)
            self.purchases[p.idHash] = p

    def save(self):
        body = {"version": 1, "purchases": [p.toJSON() for p in self.purchases.values()]}
        writeSecretFile(self.path, json.dumps(body).encode())

    def add(self, purchase):
        self.purchases[purchase.idHash] = purchase
        self.save()

    def get(self, purchaseId):
        return self.purchases.get(idHash(purchaseId))

    def awaiting(self):
        return [p for p in self.purchases.values() if p.state == AWAITING]

    def openCount(self):
        return len(self.awaiting())

    def expire(self, now, forgetAfter=7 * 86400):
        """Close unpaid purchases past their time; forget old closed ones. @return: whether anything changed."""
        changed = False
        for p in list(self.purchases.values()):
            if p.state == AWAITING and now >= p.expires:
                p.state = EXPIRED
                changed = True
            elif p.state == EXPIRED and now >= p.expires + forgetAfter:
                del self.purchases[p.idHash]
                changed = True
            elif p.state == ISSUED and now >= p.issuedAt + self.keepIssued:
                del self.purchases[p.idHash]
                changed = True
        return changed

    def counts(self):
        out = {s: 0 for s in STATES}
        for p in self.purchases.values():
            out[p.state] += 1
        return out
