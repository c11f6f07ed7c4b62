"""The client's side of token-gated exits: pick exits that take our tokens, pay as bytes flow.

Why here: only the client knows which tokens it holds (the wallet shared
with ``meshvpn wallet``), and only it can decide to spend one.

- L{PaidExitDirectory} reads from the DHT which exits accept the issuers we
  hold tokens of, and on what terms (bytes per token, free rate).
- L{PaymentClient.relaySource} wraps the circuit manager's relay source:
  with spendable tokens, only exits that accept them are offered as exits
  (when any is known); without, exits that give nothing for free are left
  out, so running out of tokens falls back to free exits.
- L{CircuitPayer} wraps each circuit's stream layer: before the first
  stream it sends one token (if the exit takes them), and one more each
  time the exit asks (NEEDED, sent when a quarter of the credit is left),
  one at a time.  Spares cost nothing: a circuit pays only once used.
  Out of tokens is said once, in plain words; at an exit with no free rate
  the circuit is closed at once, so its streams end and the next circuit
  goes to an exit that serves us, instead of hanging.

The wallet takes tokens in random order, and never hands one out twice
across processes (L{meshvpn.payments.wallet}).  A token the exit refused
without spending it (a key it has not read yet, an issuer it does not take,
enough credit already) goes back into the wallet; after "unknown key" the
payer tries another key's token, or the same again once the exit has had
time to look for the issuer's new keys.

The directory also answers ``meshvpn wallet``'s questions about issuers
(their records in the DHT, for the key check before buying): the wallet
command is no DHT node, the client is.
"""

import attrs
from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger
from zope.interface import implementer

from meshvpn.interfaces import IStatusSource
from meshvpn.onion.cells import RelayCommand
from meshvpn.payments import paymsg

MAX_RETRIES = 3  # refused tokens in a row before a circuit stops trying
UNKNOWN_KEY_RETRY = 35.0  # seconds: an exit looks for an issuer's new key at most every 30 s after a miss
# Refusals that leave the token unspent at the exit: it goes back into the wallet.
UNSPENT = (paymsg.UNKNOWN_KEY, paymsg.NOT_ACCEPTED, paymsg.BUSY)


class PaidExitDirectory(service.Service):
    """
    C{exits}: C{{exit node id: (issuer id, ExitTerms)}} for the issuers the
    wallet holds tokens of; read once C{ready()} fires, then every C{FAST}
    seconds while the wallet is empty or an issuer in it has no exit known
    (tokens just bought), else every C{interval} seconds.  It also answers
    the wallet command's questions about issuers (L{answerAsks}), looked
    for every C{ASK_POLL} seconds.

    @param records: a L{meshvpn.payments.records.PaymentRecords}.
    """

    log = Logger()
    FAST = 5.0
    ASK_POLL = 1.0

    def __init__(self, reactor, records, wallet, ready, interval=300.0):
        self.reactor = reactor
        self.records = records
        self.wallet = wallet
        self.ready = ready
        self.interval = interval
        self.exits = {}
        self._call = None
        self._askLoop = None
        self._answering = None

    def startService(self):
        super().startService()
        self.reactor.callWhenRunning(lambda: self.ready().addCallback(self._started).addErrback(
            lambda f: self.log.failure("payments: directory start-up failed", f)))

    def _started(self, _):
        if not self.running:
            return
        self._tick()
        self._askLoop = task.LoopingCall(self._lookForAsks)
        self._askLoop.clock = self.reactor
        self._askLoop.start(self.ASK_POLL, now=False).addErrback(lambda f: self.log.failure("payments: asks", f))

    def _lookForAsks(self):
        if self._answering is None and self.wallet.askedIssuers():
            self._answering = self.answerAsks()
            self._answering.addBoth(lambda _: setattr(self, "_answering", None))

    def _tick(self):
        self._call = None
        if not self.running:
            return

        def again(_):
            if self.running:
                served = {issuer for issuer, _ in self.exits.values()}
                issuers = self.wallet.issuers()
                missing = not issuers or any(i not in served for i in issuers)
                self._call = self.reactor.callLater(self.FAST if missing else self.interval, self._tick)

        self.refresh().addBoth(again)

    @defer.inlineCallbacks
    def answerAsks(self):
        """
        Read from the DHT the records of the issuers ``meshvpn wallet`` asks
        about (it checks an issuer's key against them before paying).
        """
        for issuerId, asks in self.wallet.askedIssuers().items():
            try:
                info = yield self.records.fetchIssuer(issuerId)
                keys = []
                if info is not None:
                    now = self.reactor.seconds()
                    epochs = info.schedule.liveEpochs(now) + [info.schedule.epochAt(now) + 1]
                    found = yield defer.gatherResults([self.records.fetchKey(issuerId, e) for e in epochs])
                    keys = [k for k in found if k is not None]
            except Exception as e:  # a DHT hiccup: the wallet asks again (or gives up with a clear message)
                self.log.warn("payments: reading an issuer's records for the wallet failed: {why}", why=str(e))
                continue
            self.wallet.answerIssuer(issuerId, info, keys, asks)
            self.log.info("payments: issuer {id}: {n} key(s) read from the DHT for the wallet",
                          id=issuerId.hex()[:16], n=len(keys))

    @defer.inlineCallbacks
    def refresh(self):
        found = {}
        for issuerId in self.wallet.issuers():
            try:
                exits = yield self.records.fetchExits(issuerId)
            except Exception as e:  # a DHT hiccup: keep what we knew
                self.log.warn("payments: looking up paid exits failed: {why}", why=str(e))
                return
            for nodeId, terms in exits.items():
                found.setdefault(nodeId, (issuerId, terms))
        if found.keys() != self.exits.keys():
            self.log.info("payments: {n} exit(s) take our tokens", n=len(found))
        self.exits = found

    def stopService(self):
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        if self._askLoop is not None and self._askLoop.running:
            self._askLoop.stop()


@implementer(IStatusSource)
class PaymentClient:
    """
    @param wallet: an L{meshvpn.interfaces.ITokenWallet} (a
        L{meshvpn.payments.wallet.TokenWallet}).
    @param directory: a L{PaidExitDirectory}.
    """

    log = Logger()

    def __init__(self, reactor, wallet, directory):
        self.reactor = reactor
        self.wallet = wallet
        self.directory = directory
        self.unpaidRefusals = set()  # exits that refused us for want of a token we do not have
        self.counters = {"tokens_spent": 0, "receipts": {}, "needed": 0, "out_of_tokens": 0, "circuits_closed": 0,
                         "returned": 0}
        self._saidOut = False

    # -- the circuit manager's hooks

    def relaySource(self, source):
        """Wrap C{source} (a callable returning a Deferred list of RelayInfo)."""

        def preferring():
            return source().addCallback(self.prefer)

        return preferring

    def onCircuit(self, attach):
        """Wrap C{attach(circuit)} (which installs the stream layer) so the circuit pays."""

        def attachPaying(circuit):
            result = attach(circuit)
            circuit.streamHandler = CircuitPayer(self, circuit, circuit.streamHandler)
            return result

        return attachPaying

    def payableIssuer(self, issuers):
        """The first of C{issuers} we hold a spendable token of, or C{None}."""
        now = self.reactor.seconds()
        for issuerId in issuers:
            if self.wallet.usable(issuerId, now) > 0:
                return issuerId
        return None

    def prefer(self, relays):
        exits = {r.nodeId for r in relays if "exit" in r.roles}
        known = self.directory.exits
        payable = {n for n, (issuer, _) in known.items() if n in exits and self.payableIssuer([issuer])}
        if payable:
            keep = payable
        else:
            unpaid = {n for n, (_, terms) in known.items() if terms.freeRate == 0} | self.unpaidRefusals
            keep = exits - unpaid
            if not keep:
                return relays  # nothing better: the exit will say why (NEEDED)
        return [r if "exit" not in r.roles or r.nodeId in keep else attrs.evolve(r, roles=r.roles - {"exit"})
                for r in relays]

    def take(self, issuers, avoidKeys=()):
        """@return: C{(issuer id, token)} taken from the wallet, or C{None}."""
        now = self.reactor.seconds()
        for issuerId in issuers:
            if self.wallet.usable(issuerId, now) <= 0:
                continue
            token = self.wallet.take(issuerId, now, avoidKeys)
            if token is not None:
                self.counters["tokens_spent"] += 1
                self._saidOut = False
                return issuerId, token
        return None

    def giveBack(self, issuerId, token):
        """A token the exit refused without spending it: spendable again."""
        if self.wallet.putBack(issuerId, token):
            self.counters["tokens_spent"] -= 1
            self.counters["returned"] += 1

    def outOfTokens(self, exitId, freeRate):
        self.counters["out_of_tokens"] += 1
        if not self._saidOut:
            self._saidOut = True
            if freeRate == 0:
                what = "it gives nothing without tokens: closing this circuit; new circuits use exits that serve for free"
            elif freeRate == paymsg.UNLIMITED:
                what = "it goes on at its free rate (unlimited)"
            else:
                what = f"it goes on at its free rate of {freeRate // 1024} KiB/s"
            self.log.warn(
                "payments: out of bandwidth tokens for exit {exit} ({what}); buy more: meshvpn wallet buy N --issuer ID",
                exit=exitId.hex()[:16], what=what,
            )
        if freeRate == 0:
            self.unpaidRefusals.add(exitId)

    def receipt(self, status):
        name = paymsg.STATUS_NAMES[status]
        self.counters["receipts"][name] = self.counters["receipts"].get(name, 0) + 1

    def status(self):
        now = self.reactor.seconds()
        return {
            "wallet": self.wallet.directory,
            "tokens": {i.hex(): self.wallet.usable(i, now) for i in self.wallet.issuers()},
            "paid_exits_known": len(self.directory.exits),
            **{k: (dict(v) if isinstance(v, dict) else v) for k, v in self.counters.items()},
        }


class CircuitPayer:
    """One circuit's payer, in front of its stream layer (everything else passes through)."""

    log = Logger()

    def __init__(self, client, circuit, inner):
        self.client = client
        self.circuit = circuit
        self.inner = inner
        self.exitId = circuit.path[-1].nodeId
        self.inFlight = False
        self.credit = None
        self.tokens = 0
        self.retries = 0
        self.sent = None  # (issuer id, token) awaiting the exit's receipt
        self.unknownKeys = set()  # token key ids this exit said it does not know (yet)
        self._retryCall = None

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _issuers(self):
        entry = self.client.directory.exits.get(self.exitId)
        return [entry[0]] if entry is not None else []

    def openStream(self, host, port, protocol=None, early=None):
        if self.tokens == 0:
            # Before the first stream this circuit pays for (one to the issuer, buying, was free), so the
            # exit counts the token before the BEGIN.
            issuers = self._issuers()
            if issuers:
                self._pay(issuers)
        return self.inner.openStream(host, port, protocol, early=early)

    def _pay(self, issuers, freeRate=None, credit=None):
        if self.inFlight:
            return True
        taken = self.client.take(issuers, self.unknownKeys)
        if taken is None and self.unknownKeys and self.client.payableIssuer(issuers) is not None:
            # Only tokens of keys this exit does not know yet: ask again once it has looked for them.
            if self._retryCall is None and self.retries < MAX_RETRIES:
                self._retryCall = self.client.reactor.callLater(UNKNOWN_KEY_RETRY, self._retryUnknown, issuers)
            return False
        if taken is None:
            if freeRate is not None:
                self.client.outOfTokens(self.exitId, freeRate)
                if freeRate == 0 and credit is not None and credit <= 0:
                    # Nothing more will come through: end the streams now rather than let them hang.
                    self.client.counters["circuits_closed"] += 1
                    self.circuit.close()
            return False
        self.inFlight = True
        self.tokens += 1
        self.sent = taken
        self.circuit.sendRelay(RelayCommand.PAYMENT, 0, paymsg.TokenMessage(taken[1]).encode())
        return True

    def _retryUnknown(self, issuers):
        self._retryCall = None
        if getattr(self.circuit, "closed", False):
            return
        self.unknownKeys.clear()
        self._pay(issuers)

    def relayReceived(self, command, streamId, data):
        if command != RelayCommand.PAYMENT:
            return self.inner.relayReceived(command, streamId, data)
        msg = paymsg.parsePayment(data)  # malformed: an exception, so the circuit closes
        if isinstance(msg, paymsg.Receipt) and msg.status == paymsg.REVOKED:
            # About a token accepted earlier (the issuer's late word), not the one in flight.
            self.credit = msg.credit
            self.client.receipt(msg.status)
            self._pay(self._issuers() or [])
        elif isinstance(msg, paymsg.Receipt):
            self.inFlight = False
            self.credit = msg.credit
            self.client.receipt(msg.status)
            sent, self.sent = self.sent, None
            if sent is not None and msg.status in UNSPENT:
                self.client.giveBack(*sent)
                if msg.status == paymsg.UNKNOWN_KEY:
                    self.unknownKeys.add(sent[1].tokenKeyId)
            if msg.status == paymsg.ACCEPTED:
                self.retries = 0
            elif msg.status != paymsg.BUSY:
                self.retries += 1
                self.log.info("payments: exit {exit} refused a token: {why}", exit=self.exitId.hex()[:16],
                              why=paymsg.STATUS_NAMES[msg.status])
                if self.retries < MAX_RETRIES and msg.status not in (paymsg.NOT_ACCEPTED,):
                    self._pay(self._issuers())
        elif isinstance(msg, paymsg.Needed):
            self.client.counters["needed"] += 1
            self.credit = msg.credit
            self._pay(list(msg.issuers), msg.freeRate, msg.credit)
        else:
            raise paymsg.PaymentMessageError("a TOKEN message travelling to the client")

    def status(self):
        out = self.inner.status() if hasattr(self.inner, "status") else {}
        out["payment"] = {"tokens": self.tokens, "credit": self.credit}
        return out


def paymentClientSettings():
    from meshvpn.config import Setting, parsePath

    return [
        Setting("payment-wallet", parsePath, None,
                "Token wallet directory (the one 'meshvpn wallet' fills): pay token-gated exits from it."),
    ]
