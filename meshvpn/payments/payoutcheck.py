"""A relay checks its payouts: recompute the payer's plan from public data, compare with what its wallet received.

Everything the plan depends on is public and signed: the epoch's traffic
reports (the relay runs the same L{meshvpn.measure.service.MeasuredWeights}
every client runs), the relays' payout addresses and the payer's
L{meshvpn.payments.payouts.Statement} (both owned DHT records).  For each
epoch the payer stated, the check adds the relay's line of the plan to what
it expects; what the relay's own wallet (a C{monero-wallet-rpc} holding the
payout address) received there is the other side.  Transfers are not
labelled with an epoch, so the comparison is cumulative: since the check
started, received >= expected, or the payer owes the difference, which the
status shows (and the log says once per epoch).
"""

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from meshvpn.interfaces import IStatusSource
from meshvpn.payments.epochfollower import EpochFollower
from meshvpn.payments.payouts import PayoutError, parseStatement, payoutPlan, statementKey, verifyReceived


@implementer(IStatusSource)
class PayoutCheck(EpochFollower):
    """
    @param nodeId: this relay's node id.
    @param weights: a L{meshvpn.measure.service.MeasuredWeights} of this relay's own.
    @param payerId: the node id of the payer whose statements to check.
    @param addressOf: C{callable(nodeId) -> Deferred(address or None)}.
    @param wallet: the L{meshvpn.interfaces.IMoneroWallet} holding the payout address.
    @param addressIndex: the payout address's subaddress index in that wallet.
    @param confirmations: a transfer counts once it has this many.
    """

    log = Logger()

    def __init__(self, nodeId, dht, weights, payerId, addressOf, wallet, addressIndex=0, confirmations=1):
        self.nodeId = nodeId
        self.dht = dht
        self.weights = weights
        self.payerId = payerId
        self.addressOf = addressOf
        self.wallet = wallet
        self.addressIndex = addressIndex
        self.confirmations = confirmations
        self.expected = {}  # epoch -> atomic units the plan gives this relay
        self.received = 0
        self.unstated = 0  # epochs the payer published no statement for
        self.last = None

    def _measured(self, epoch):
        self.checkEpoch(epoch).addErrback(lambda f: self.log.failure("checking the payout of epoch {e} failed", f,
                                                                       e=epoch))

    @defer.inlineCallbacks
    def expectedFor(self, epoch):
        """
        The relay's line of the payer's plan for C{epoch}, recomputed from
        the current weights (which must be C{epoch}'s).  @return: Deferred
        firing with atomic units, or C{None} when the payer stated nothing.
        """
        record = yield self.dht().get(statementKey(self.payerId))
        if record is None or record.publisherId != self.payerId:
            return None
        try:
            statement = parseStatement(record.value)
        except PayoutError:
            return None
        if statement.epoch != epoch or statement.epochLength != self.weights.epochLength:
            return None
        measures = dict(self.weights.measures)
        addresses = {}
        for nodeId in sorted(measures):
            if "measured" in measures[nodeId].flags:
                address = yield self.addressOf(nodeId)
                if address is not None:
                    addresses[nodeId] = address
        plan = payoutPlan(statement.budget, measures, addresses, statement.epochLength)
        return verifyReceived(plan, self.nodeId, 0)[0]

    @defer.inlineCallbacks
    def checkEpoch(self, epoch):
        """@return: Deferred firing with this relay's status dict after checking C{epoch}."""
        if epoch not in self.expected:
            line = yield self.expectedFor(epoch)
            if line is None:
                self.unstated += 1
            else:
                self.expected[epoch] = line
        yield self.wallet.refresh()
        seen = yield self.wallet.incoming([self.addressIndex])
        self.received = sum(i.amount for i in seen if i.confirmations >= self.confirmations)
        self.last = epoch
        state = self.status()
        if not state["ok"]:
            self.log.warn("payouts short by {owed} atomic units (expected {e}, received {r})", owed=state["owed"],
                          e=state["expected"], r=state["received"])
        return state

    def status(self):
        expected = sum(self.expected.values())
        return {
            "payer": self.payerId.hex(),
            "last_epoch": self.last,
            "epochs": len(self.expected),
            "unstated": self.unstated,
            "expected": expected,
            "received": self.received,
            "owed": max(0, expected - self.received),
            "ok": self.received >= expected,
        }
