"""Relay payouts: an epoch's budget split by measured carried traffic, and the check a relay runs on it.

Who pays (an issuer, or a pool of exits) and every relay compute the same
plan from the same public inputs: the epoch's relay measurements
(L{meshvpn.measure.aggregate.computeWeights} over the reports in the DHT)
and the payout address each relay publishes (an owned DHT record).  A relay
gets a share of the budget in proportion to its measured traffic
(bandwidth x epoch length; the ramp of new relays does not apply to pay,
which follows what was carried).  Only relays the reports measure (and do
not leave out as isolated) and that published an address are paid; the split is in atomic units, by largest
remainder with ties broken by node id, so it always sums to the budget and
is the same everywhere.  A relay verifies what it received against its
line of the plan (L{verifyReceived}).
"""

import re
import struct

import attrs

from meshvpn.dht.records import ownedKey

ADDRESS_SALT = b"meshvpn-payout-address"
STATEMENT_SALT = b"meshvpn-payout-statement"
_STATEMENT = struct.Struct("!4sIIQ")
STATEMENT_MAGIC = b"MVP1"
# Monero addresses: base58 (no 0, O, I, l), 95 characters (standard, subaddress) or 106 (integrated)
_BASE58 = re.compile(r"[1-9A-HJ-NP-Za-km-z]+\Z")


class PayoutError(ValueError):
    """A payout address or plan input is malformed; the text says why."""


def parseAddress(raw):
    """
    @param raw: a published payout address (C{bytes}).
    @return: the address as C{str}.
    @raise PayoutError: not a Monero address in form.
    """
    try:
        text = raw.decode("ascii")
    except (UnicodeDecodeError, AttributeError):
        raise PayoutError("payout address is not ASCII") from None
    if len(text) not in (95, 106):
        raise PayoutError("payout address must be 95 or 106 characters")
    if not _BASE58.match(text):
        raise PayoutError("payout address is not base58")
    return text


def addressKey(nodeId):
    """Where a relay's payout address lives in the DHT: an owned record only it can write."""
    return ownedKey(nodeId, ADDRESS_SALT)


@attrs.frozen
class Statement:
    """
    What a payer publishes (an owned DHT record) before paying an epoch:
    the epoch and the budget it splits.  With the epoch's reports and the
    relays' addresses, that is everything a relay needs to recompute the
    plan and check its own line.

    Layout: "MVP1" | epoch u32 | epoch length u32 (s) | budget u64 (atomic units).
    """

    epoch: int
    epochLength: int
    budget: int

    def encode(self):
        return _STATEMENT.pack(STATEMENT_MAGIC, self.epoch, self.epochLength, self.budget)


def parseStatement(raw):
    """@raise PayoutError: not a payout statement in form."""
    raw = bytes(raw)
    if len(raw) != _STATEMENT.size:
        raise PayoutError(f"payout statement must be {_STATEMENT.size} bytes")
    magic, epoch, length, budget = _STATEMENT.unpack(raw)
    if magic != STATEMENT_MAGIC:
        raise PayoutError("not a payout statement (bad magic)")
    if length == 0:
        raise PayoutError("payout statement epoch length must be positive")
    return Statement(epoch, length, budget)


def statementKey(payerId):
    """Where a payer's latest statement lives: an owned record only the payer can write."""
    return ownedKey(payerId, STATEMENT_SALT)


@attrs.frozen
class Payout:
    nodeId: bytes
    address: str
    traffic: int  # measured bytes carried in the epoch
    amount: int  # atomic units


def payoutPlan(budget, measures, addresses, epochLength):
    """
    @param budget: atomic units to pay out for the epoch.
    @param measures: C{{nodeId: RelayMeasure}} of the epoch.
    @param addresses: C{{nodeId: address}} the relays published.
    @return: a list of L{Payout}s sorted by node id, summing to C{budget}
        (empty when no measured relay has an address).
    """
    if budget < 0:
        raise PayoutError("budget must not be negative")
    paid = sorted((nodeId, int(m.bandwidth * epochLength)) for nodeId, m in measures.items()
                  if "measured" in m.flags and "isolated" not in m.flags and m.bandwidth > 0 and nodeId in addresses)
    total = sum(t for _, t in paid)
    if not paid or total <= 0:
        return []
    amounts = {nodeId: budget * t // total for nodeId, t in paid}
    left = budget - sum(amounts.values())
    # largest remainder first, ties by node id
    order = sorted(paid, key=lambda p: (-(budget * p[1] % total), p[0]))
    for nodeId, _ in order[:left]:
        amounts[nodeId] += 1
    return [Payout(nodeId, addresses[nodeId], t, amounts[nodeId]) for nodeId, t in paid]


def verifyReceived(plan, nodeId, received):
    """
    What a relay checks: did it get its line of the plan?

    @return: C{(expected, received, ok)}.
    """
    expected = next((p.amount for p in plan if p.nodeId == nodeId), 0)
    return expected, received, received >= expected
