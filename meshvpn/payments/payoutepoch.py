"""The payer's epoch loop: once an epoch's weights are computed, state the budget and pay every relay its share.

The payer (the issuer role, with C{--payout-budget}) runs its own
L{meshvpn.measure.service.MeasuredWeights}, the same computation every
client runs over the same signed reports.  When an epoch's weights are in,
it publishes its L{meshvpn.payments.payouts.Statement} (epoch and budget,
an owned DHT record) and pays the plan
(L{meshvpn.payments.payoutservice.PayoutService}: one real Monero transfer
per relay, to the address the relay published).  Each relay can then
recompute the same plan from public data and check what reached its
wallet (L{meshvpn.payments.payoutcheck}).

An epoch is paid at most once; an epoch whose weights measure no relay with
an address pays nothing and keeps the budget.
"""

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from meshvpn.dht.records import makeRecord
from meshvpn.interfaces import IStatusSource
from meshvpn.payments.epochfollower import EpochFollower
from meshvpn.payments.payouts import STATEMENT_SALT, Statement
from meshvpn.payments.payoutservice import PayoutService


@implementer(IStatusSource)
class EpochPayer(EpochFollower):
    """
    @param weights: the payer's L{meshvpn.measure.service.MeasuredWeights}
        (its C{observers} tell this service when an epoch is in).
    @param wallet: the L{meshvpn.interfaces.IMoneroWallet} the budget is paid from.
    @param addressOf: C{callable(nodeId) -> Deferred(address or None)}.
    @param budget: atomic units per epoch.
    """

    log = Logger()

    def __init__(self, clock, identity, dht, weights, wallet, addressOf, budget):
        self.clock = clock
        self.identity = identity
        self.dht = dht
        self.weights = weights
        self.budget = budget
        self.payouts = PayoutService(wallet, addressOf, budget)
        self.last = None  # (epoch, plan)
        self.failures = 0
        self._busy = None
        self._idle = []

    def _measured(self, epoch):
        if self._busy is not None:
            return  # still paying an earlier epoch: this one waits for the next look
        self._busy = self.payEpoch(epoch)
        self._busy.addErrback(lambda f: self.log.failure("paying epoch {e} failed", f, e=epoch))
        self._busy.addBoth(self._done)

    def _done(self, _):
        self._busy = None
        waiters, self._idle = self._idle, []
        for d in waiters:
            d.callback(self.last)

    def whenIdle(self):
        """@return: a Deferred firing (with C{(epoch, plan)} of the last epoch paid) once no payout runs."""
        if self._busy is None:
            return defer.succeed(self.last)
        d = defer.Deferred()
        self._idle.append(d)
        return d

    @defer.inlineCallbacks
    def payEpoch(self, epoch):
        """State and pay C{epoch} from the current weights.  @return: Deferred firing with the plan."""
        if epoch in self.payouts.plans:
            return self.payouts.plans[epoch]
        length = self.weights.epochLength
        statement = Statement(epoch, length, self.budget)
        record = makeRecord(self.identity, STATEMENT_SALT, statement.encode(), epoch, (epoch + 4) * length)
        try:
            yield self.dht().put(record)
        except Exception as e:
            # a relay cannot check a payout nobody stated: do not pay it blind
            self.failures += 1
            self.log.warn("payout statement of epoch {e} not stored ({why}): not paying it", e=epoch, why=str(e)[:200])
            return []
        plan = yield self.payouts.payEpoch(epoch, dict(self.weights.measures), length)
        self.last = (epoch, plan)
        self.log.info("epoch {e} paid out: {n} relays, {a} atomic units", e=epoch, n=len(plan),
                      a=sum(p.amount for p in plan))
        return plan

    def status(self):
        out = {"budget": self.budget, "failures": self.failures}
        if self.last is not None:
            epoch, plan = self.last
            done = self.payouts.paid.get(epoch, {})
            out.update(last_epoch=epoch, relays=len(plan), planned=sum(p.amount for p in plan),
                       paid=sum(a for a, _ in done.values()), transfers=len(done))
        return out
