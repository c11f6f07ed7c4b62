"""The payer's side: once per epoch, pay every measured relay its share, by real Monero transfers.

The service reads the epoch's measurements through
L{meshvpn.interfaces.IRelayWeights}-like C{measures()} (the client-side
weights service of the payer), looks up each relay's payout address,
computes the plan (L{meshvpn.payments.payouts.payoutPlan}) and sends one
transfer per line from its L{meshvpn.interfaces.IMoneroWallet}.  An epoch is
paid at most once; a transfer that fails is logged and kept in the
epoch's record (C{paid}), so a retry pays only what is missing.
"""

from twisted.internet import defer
from twisted.logger import Logger

from meshvpn.payments.payouts import payoutPlan


class PayoutService:
    """
    @param wallet: an L{meshvpn.interfaces.IMoneroWallet} holding the budget.
    @param addressOf: C{callable(nodeId) -> Deferred(address or None)}.
    """

    log = Logger()

    def __init__(self, wallet, addressOf, budget):
        self.wallet = wallet
        self.addressOf = addressOf
        self.budget = budget
        self.paid = {}  # epoch -> {nodeId: (amount, txid)}
        self.plans = {}  # epoch -> plan

    @defer.inlineCallbacks
    def payEpoch(self, epoch, measures, epochLength):
        """
        Pay epoch C{epoch}.  @return: Deferred firing with the plan (a list
        of L{meshvpn.payments.payouts.Payout}).
        """
        addresses = {}
        for nodeId in sorted(measures):
            if "measured" not in measures[nodeId].flags:
                continue
            address = yield self.addressOf(nodeId)
            if address is not None:
                addresses[nodeId] = address
        plan = self.plans.setdefault(epoch, payoutPlan(self.budget, measures, addresses, epochLength))
        done = self.paid.setdefault(epoch, {})
        for line in plan:
            if line.nodeId in done or line.amount <= 0:
                continue
            try:
                txid, fee = yield self.wallet.transfer(line.address, line.amount)
            except Exception as e:
                self.log.warn("payout of epoch {e} to {relay} failed: {why}", e=epoch, relay=line.nodeId.hex()[:16],
                              why=str(e)[:200])
                continue
            done[line.nodeId] = (line.amount, txid)
            self.log.info("paid relay {relay} {amount} atomic units for epoch {e} (fee {fee})",
                          relay=line.nodeId.hex()[:16], amount=line.amount, e=epoch, fee=fee)
        return plan
