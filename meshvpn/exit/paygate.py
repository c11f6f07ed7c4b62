"""Token-gated exits: circuits that pay get the paid rate, the others the free rate (possibly none).

Why at the edge: only the exit sees a circuit's bytes leave for the
internet, and only the exit and the client share the end-to-end relay
channel a token can travel on without a middle relay seeing it.

How: L{PaidExitEdge} sits in front of the exit's real edge.  A PAYMENT
message (L{meshvpn.payments.paymsg}) carries a token; the L{PaymentGate}
checks it offline (L{meshvpn.payments.verifier}: known key, epoch,
challenge, signature, then the durable spent-token store) and adds
C{bytesPerToken} of credit to that circuit.  Every byte the exit carries
for the circuit (both directions, charged where its bandwidth is already
charged: the circuit's L{meshvpn.ratelimit.CircuitThrottle}, whose bucket is
replaced by a L{PaidBucket}) is taken from the credit; with credit the
circuit runs at the paid rate, without it at the free rate.  When a quarter
of a token's credit is left the exit asks for the next one (NEEDED), so a
paying client never stalls.  With a free rate of none: a BEGIN on a circuit
that never paid is refused at once (END RESOURCELIMIT, and NEEDED says
why), and a circuit that runs out is paused and, if no token comes within
C{grace} seconds, closed: a client without tokens gets a clear answer,
never a hang.

Accepted tokens are also reported to their issuer (L{RedeemReporter}), the
authority on the spent list of each epoch: a token already spent at another
exit comes back as such, and its credit is withdrawn (REVOKED).  Until the
issuer has confirmed a token, only C{unconfirmed} bytes of its credit are
usable (the rest is held): a token spent at k exits at once buys at most
C{bytesPerToken + (k - 1) * unconfirmed} bytes in all, not k tokens' worth.
An exit that cannot reach the issuer still refuses every token spent twice
at itself, across restarts.

Packet mode (the VPN's IP packets) is charged the same way, both
directions, and policed by the same buckets.  And with no free rate, an
unpaid circuit may still open streams to the HTTP APIs of the issuers this
exit accepts (up to L{ISSUER_ALLOWANCE} bytes): a client without tokens
buys its first ones through a circuit, so the issuer never sees its address.
"""

import re

import attrs
from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from meshvpn.config import Setting, parseBool
from meshvpn.dht.service import parseSeconds
from meshvpn.exit.settings import parseRate
from meshvpn.interfaces import ICircuitEdge, IStatusSource, ITokenBucket
from meshvpn.hostport import HostPortError, splitHostPort
from meshvpn.onion.cells import CellError, DestroyReason, RelayCommand
from meshvpn.onion.streammsgs import Begin
from meshvpn.payments import paymsg
from meshvpn.payments.issuer import REDEEMED
from meshvpn.payments.issuerclient import IssuerClient, IssuerError
from meshvpn.payments.records import UNLIMITED, ExitTerms
from meshvpn.ratelimit import TokenBucket

REASON_RESOURCELIMIT = 11  # END reason (Tor's number)
BLOCK_WAIT = 0.25  # seconds between looks at a paused circuit with no credit and no free rate
LOW_WATER = 0.25  # ask for the next token when this fraction of one token's credit is left
MAX_CREDIT_TOKENS = 4  # tokens a circuit may have in credit at once (more are not spent: BUSY)
UNCONFIRMED_CREDIT = 256 * 1024  # bytes of a token usable before its issuer confirms it was not spent elsewhere
ISSUER_ALLOWANCE = 1024 * 1024  # bytes an unpaid circuit may carry to the accepted issuers' APIs (buying tokens)
_HEX_ID = re.compile(r"\A[0-9a-fA-F]{64}\Z")


def parseIssuers(raw):
    """Comma-separated node ids (64 hex digits) of the issuers whose tokens an exit accepts."""
    items = raw if isinstance(raw, (list, tuple)) else [x.strip() for x in str(raw).split(",") if x.strip()]
    if len(items) > paymsg.MAX_ISSUERS or not all(isinstance(x, (str, bytes)) for x in items):
        raise ValueError(f"at most {paymsg.MAX_ISSUERS} issuer node ids (64 hex digits each), comma-separated")
    out = []
    for x in items:
        if isinstance(x, bytes) and len(x) == 32:
            out.append(x)
        elif isinstance(x, str) and _HEX_ID.match(x):
            out.append(bytes.fromhex(x))
        else:
            raise ValueError("issuer node ids of 64 hex digits, comma-separated")
    return tuple(out)


def parseFreeRate(raw):
    """C{none}/C{0}: no traffic without tokens; C{unlimited}; or bytes/s like C{64K}."""
    if isinstance(raw, str) and raw.strip().lower() in ("none", "0"):
        return 0
    if raw == 0 and not isinstance(raw, bool):
        return 0
    return parseRate(raw)


def paymentExitSettings():
    return [
        Setting("payment-issuers", parseIssuers, "",
                "Node ids (hex, comma-separated) of the token issuers this exit accepts; empty: no tokens, no gating."),
        Setting("payment-bytes-per-token", parseRate, 10 * 1024 * 1024, "Bytes one token buys at this exit (K/M/G)."),
        Setting("payment-free-rate", parseFreeRate, 0,
                "Bytes/s of a circuit without credit: none, unlimited, or a rate like 64K."),
        Setting("payment-paid-rate", parseRate, None, "Bytes/s of a circuit with credit (default unlimited)."),
        Setting("payment-grace", parseSeconds, 30.0,
                "Seconds a circuit out of credit waits for a token before it is closed (free rate none)."),
        Setting("payment-report", parseBool, True,
                "Report accepted tokens to their issuer, which refuses a token spent at another exit too."),
        Setting("payment-unconfirmed-credit", parseRate, UNCONFIRMED_CREDIT,
                "Bytes of a token usable before its issuer confirms it was not spent at another exit (K/M/G)."),
    ]


@attrs.frozen
class GateTerms:
    issuers: tuple
    bytesPerToken: int
    freeRate: object = 0  # 0: none; None: unlimited; else bytes/s
    paidRate: object = None  # None: unlimited
    grace: float = 30.0
    unconfirmed: int = UNCONFIRMED_CREDIT  # bytes usable per token before the issuer's verdict

    def published(self):
        return ExitTerms(
            self.bytesPerToken,
            UNLIMITED if self.freeRate is None else self.freeRate,
            UNLIMITED if self.paidRate is None else self.paidRate,
        )


def _debt(bucket):
    if bucket is None or bucket.rate is None:
        return 0.0
    return max(0.0, -bucket.available() / bucket.rate)


class _Account:
    """What the exit knows of one circuit's payment."""

    __slots__ = ("circuit", "credit", "held", "tokens", "asked", "throttle", "graceCall", "usedPaid", "usedFree",
                 "closed", "greeted", "toldEmpty", "toIssuer", "issuerBytes")

    def __init__(self, circuit):
        self.circuit = circuit
        self.credit = 0
        self.held = 0  # credit of accepted tokens the issuer has not confirmed yet
        self.toIssuer = False  # an unpaid circuit whose streams go to an accepted issuer's API
        self.issuerBytes = 0
        self.tokens = 0
        self.asked = False
        self.throttle = None
        self.graceCall = None
        self.usedPaid = self.usedFree = 0
        self.closed = False
        self.greeted = False
        self.toldEmpty = False


@implementer(ITokenBucket)
class PaidBucket:
    """
    The bucket of a gated circuit's throttle: bytes are charged to the
    circuit's credit, then limited by the paid or the free rate (and always
    by the exit's own per-circuit bucket, C{base}).  Without credit and with
    no free rate it is "blocked": the throttle keeps the circuit's producers
    paused and looks again every L{BLOCK_WAIT} seconds.

    Its C{rate} and C{available} speak in seconds of waiting (rate 1), which
    is all the throttle reads them for.
    """

    rate = 1.0

    def __init__(self, reactor, gate, account, base):
        terms = gate.terms
        self.gate = gate
        self.account = account
        self.base = base
        self.paid = TokenBucket(reactor, terms.paidRate)
        self.free = None if terms.freeRate == 0 else TokenBucket(reactor, terms.freeRate)

    def _current(self):
        if self.account.credit > 0 or self.gate.issuerExempt(self.account):
            return self.paid
        return self.free

    def _wait(self):
        current = self._current()
        return max(_debt(self.base), BLOCK_WAIT if current is None else _debt(current))

    def consume(self, amount):
        bucket = self._current()
        self.gate.charge(self.account, amount)
        wait = self.base.consume(amount) if self.base is not None else 0.0
        return max(wait, BLOCK_WAIT if bucket is None else bucket.consume(amount))

    def available(self):
        wait = self._wait()
        return -wait if wait > 0 else 1.0

    def tryConsume(self, amount=1):
        return self._wait() == 0


@implementer(IStatusSource)
class PaymentGate:
    """
    @param verifier: a L{meshvpn.payments.verifier.TokenVerifier}.
    @param limiter: the exit's L{meshvpn.ratelimit.BandwidthLimiter}.
    @param keys: the L{meshvpn.payments.verifier.IssuerKeyCache} (refreshed
        when a token names a key it lacks).
    @param reporter: a L{RedeemReporter} or C{None}.
    """

    log = Logger()

    def __init__(self, reactor, terms, verifier, limiter, keys=None, reporter=None):
        self.reactor = reactor
        self.terms = terms
        self.verifier = verifier
        self.limiter = limiter
        self.keys = keys
        self.reporter = reporter
        self.accounts = {}  # circuit -> _Account (the circuit itself: an id() is reused once it is freed)
        self.counters = {"tokens_accepted": 0, "refused": {}, "begins_refused": 0, "circuits_closed_unpaid": 0,
                         "revoked": 0, "needed_sent": 0, "confirmed": 0, "unconfirmed_closed": 0, "issuer_streams": 0,
                         "packets_dropped": 0}

    # -- accounts

    def account(self, circuit):
        """The circuit's account, made (and its throttle's bucket replaced) on first sight."""
        acct = self.accounts.get(circuit)
        if acct is None:
            acct = _Account(circuit)
            try:
                throttle = self.limiter.circuit(circuit)
            except OverflowError:
                circuit.destroy(DestroyReason.RESOURCELIMIT, "too many circuits for the bandwidth limiter")
                raise
            throttle.bucket = PaidBucket(self.reactor, self, acct, throttle.bucket)
            acct.throttle = throttle
            self.accounts[circuit] = acct
        return acct

    def circuitClosed(self, circuit):
        acct = self.accounts.pop(circuit, None)
        if acct is None:
            return
        acct.closed = True
        self._cancelGrace(acct)
        self.limiter.release(circuit)  # its throttle, with the credit bucket, goes with it

    # -- what the client sends

    def paymentReceived(self, circuit, body):
        msg = paymsg.parsePayment(body)  # a malformed message closes this circuit (ICircuitEdge)
        if not isinstance(msg, paymsg.TokenMessage):
            raise paymsg.PaymentMessageError("only TOKEN goes from a client to an exit")
        acct = self.account(circuit)
        if acct.credit + acct.held >= MAX_CREDIT_TOKENS * self.terms.bytesPerToken:
            return self._receipt(acct, paymsg.BUSY)
        now = self.reactor.seconds()
        status, known = self.verifier.check(msg.token, now, spend=False)
        if status == paymsg.ACCEPTED and known.issuerId not in self.terms.issuers:
            status = paymsg.NOT_ACCEPTED  # cannot happen with keys of accepted issuers only; kept as a guard
        if status == paymsg.ACCEPTED:
            # Recorded spent only now: a token refused here stays the client's (it may take it back).
            status, known = self.verifier.check(msg.token, now)
        if status != paymsg.ACCEPTED:
            refused = self.counters["refused"]
            refused[paymsg.STATUS_NAMES[status]] = refused.get(paymsg.STATUS_NAMES[status], 0) + 1
            if status == paymsg.UNKNOWN_KEY and self.keys is not None:
                self.keys.unknownKeySeen()
            return self._receipt(acct, status)
        # Until the issuer says the token was not spent at another exit, only part of its credit is usable.
        held = 0 if self.reporter is None else max(0, self.terms.bytesPerToken - self.terms.unconfirmed)
        acct.credit += self.terms.bytesPerToken - held
        acct.held += held
        acct.tokens += 1
        acct.asked = acct.toldEmpty = False
        self.counters["tokens_accepted"] += 1
        self._receipt(acct, paymsg.ACCEPTED)
        if self.reporter is not None:
            self.reporter.report(known.issuerId, msg.token, lambda verdict: self._verdict(acct, verdict, held))
        if acct.credit > 0:
            self._cancelGrace(acct)
            acct.throttle.wake()
        if acct.credit + acct.held < LOW_WATER * self.terms.bytesPerToken:
            self._needed(acct)  # still short (bytes carried beyond the credit are owed): one more

    def _receipt(self, acct, status):
        acct.circuit.sendRelay(RelayCommand.PAYMENT, 0, paymsg.Receipt(status, acct.credit).encode())

    def _needed(self, acct):
        acct.asked = True
        self.counters["needed_sent"] += 1
        free = UNLIMITED if self.terms.freeRate is None else self.terms.freeRate
        acct.circuit.sendRelay(
            RelayCommand.PAYMENT, 0, paymsg.Needed(acct.credit, free, self.terms.issuers[:paymsg.MAX_ISSUERS]).encode()
        )

    def _verdict(self, acct, verdict, held=0):
        """The issuer's word on a token this exit accepted (see L{RedeemReporter}); C{held}: its credit held back."""
        if acct.closed:
            return
        acct.held -= held
        if verdict == REDEEMED:
            self.counters["confirmed"] += 1
            acct.credit += held
            if acct.credit > 0:
                self._cancelGrace(acct)
                acct.throttle.wake()  # paused for want of this credit: go on now
            else:
                self._outOfCredit(acct)  # it carried more than the whole token meanwhile
            return
        acct.credit -= self.terms.bytesPerToken - held
        self.counters["revoked"] += 1
        self.log.info("payments: a token accepted here was already spent elsewhere; its credit is withdrawn")
        self._receipt(acct, paymsg.REVOKED)
        self._outOfCredit(acct)

    # -- what the exit carries

    def beginReceived(self, circuit, streamId, target=None):
        """
        A BEGIN: @return: whether it may open a stream.  On a circuit that
        never paid, with no free rate, it is refused at once (END
        RESOURCELIMIT), and NEEDED tells the client why and which issuers
        this exit takes; unless it goes to an accepted issuer's API
        (C{target}, a L{Begin}): buying tokens is always possible.
        """
        acct = self.account(circuit)
        refuse = self.terms.freeRate == 0 and acct.credit <= 0 and acct.tokens == 0
        if refuse and target is not None and self._isIssuerAPI(target):
            acct.toIssuer = True  # a purchase: no NEEDED either (the client is not spending here)
            self.counters["issuer_streams"] += 1
            return True
        if refuse:
            self.counters["begins_refused"] += 1
            circuit.sendRelay(RelayCommand.END, streamId, bytes([REASON_RESOURCELIMIT]))
        if not acct.greeted:
            acct.greeted = True
            if acct.tokens == 0:
                self._needed(acct)  # also tells a client with tokens that this exit takes them
        return not refuse

    def _isIssuerAPI(self, target):
        apiOf = getattr(self.keys, "apiOf", None)
        if apiOf is None:
            return False
        for issuerId in self.terms.issuers:
            api = apiOf(issuerId)
            if api is None:
                continue
            try:
                host, port = splitHostPort(api)
            except HostPortError:
                continue
            if port == target.port and host.lower() == target.host.lower():
                return True
        return False

    def issuerExempt(self, acct):
        """An unpaid circuit carrying only a purchase from an accepted issuer, within its allowance."""
        return acct.toIssuer and acct.tokens == 0 and acct.issuerBytes < ISSUER_ALLOWANCE

    def packetsAllowed(self, circuit, packets, direction="out"):
        """
        Packet mode, both ways (C{"out"}: from the client; C{"in"}: to it):
        charged to the credit and policed by the circuit's buckets like its
        streams; with no credit and no free rate, or over the rate, dropped.
        """
        acct = self.account(circuit)
        if self.terms.freeRate == 0 and acct.credit <= 0:
            if not acct.asked:
                self._needed(acct)
            self.counters["packets_dropped"] += len(packets)
            return False
        if not acct.throttle.bucket.tryConsume():
            self.counters["packets_dropped"] += len(packets)
            return False
        acct.throttle.account(sum(len(p) for p in packets), direction)  # charges the credit through the PaidBucket
        return True

    def packetsToClient(self, circuit, packets):
        """The packet exit's hook for replies from the internet: @return: the packets that may go."""
        return packets if self.packetsAllowed(circuit, packets, "in") else []

    def charge(self, acct, nbytes):
        if acct.credit > 0:
            acct.credit -= nbytes
            acct.usedPaid += nbytes
            if acct.credit + acct.held < LOW_WATER * self.terms.bytesPerToken and not acct.asked:
                self._needed(acct)
            if acct.credit <= 0:
                self._outOfCredit(acct)
        else:
            acct.usedFree += nbytes
            if acct.toIssuer:
                acct.issuerBytes += nbytes
                if acct.issuerBytes >= ISSUER_ALLOWANCE and self.terms.freeRate == 0 and acct.graceCall is None:
                    # More than any purchase needs: the circuit is paused, then closed as an unpaid one.
                    acct.graceCall = self.reactor.callLater(self.terms.grace, self._graceOver, acct)

    def _outOfCredit(self, acct):
        if acct.credit > 0 or acct.closed:
            return
        if acct.held > 0:
            # Credit is on its way (the issuer's verdict): no new token; but not forever.
            if self.terms.freeRate == 0 and acct.graceCall is None:
                acct.graceCall = self.reactor.callLater(self.terms.grace, self._graceOver, acct)
            return
        if not acct.toldEmpty:
            acct.toldEmpty = True
            self._needed(acct)  # credit 0: a client without tokens learns it now
        if self.terms.freeRate == 0 and acct.graceCall is None:
            acct.graceCall = self.reactor.callLater(self.terms.grace, self._graceOver, acct)

    def _graceOver(self, acct):
        acct.graceCall = None
        if acct.credit > 0 or acct.closed:
            return
        if acct.held > 0:
            self.counters["unconfirmed_closed"] += 1
            self.log.warn("payments: the issuer did not confirm a token within {s:.0f}s; closing its circuit",
                          s=self.terms.grace)
            acct.circuit.destroy(DestroyReason.RESOURCELIMIT, "the issuer did not confirm the token in time")
            return
        self.counters["circuits_closed_unpaid"] += 1
        acct.circuit.destroy(DestroyReason.RESOURCELIMIT, "out of credit and no token within the grace period")

    def _cancelGrace(self, acct):
        if acct.graceCall is not None and acct.graceCall.active():
            acct.graceCall.cancel()
        acct.graceCall = None

    def status(self):
        return {
            "issuers": [i.hex() for i in self.terms.issuers],
            "bytes_per_token": self.terms.bytesPerToken,
            "free_rate": self.terms.freeRate, "paid_rate": self.terms.paidRate,
            "unconfirmed_credit": self.terms.unconfirmed,
            "issuer_apis_known": sum(1 for i in self.terms.issuers if getattr(self.keys, "apiOf", lambda i: None)(i)),
            "circuits": len(self.accounts),
            "paying_circuits": sum(1 for a in self.accounts.values() if a.tokens),
            **{k: (dict(v) if isinstance(v, dict) else v) for k, v in self.counters.items()},
        }


@implementer(ICircuitEdge)
class PaidExitEdge:
    """The exit's edge behind the payment gate (the wrapped edge does the real work)."""

    def __init__(self, inner, gate):
        self.inner = inner
        self.gate = gate

    def relayReceived(self, circuit, command, streamId, data):
        if command == RelayCommand.PAYMENT:
            return self.gate.paymentReceived(circuit, data)
        if command == RelayCommand.BEGIN:
            try:
                target = Begin.decode(data)
            except CellError:
                target = None  # the stream edge refuses it with its own error
            if not self.gate.beginReceived(circuit, streamId, target):
                return
        self.gate.account(circuit)
        self.inner.relayReceived(circuit, command, streamId, data)

    def circuitWindowOpened(self, circuit):
        opened = getattr(self.inner, "circuitWindowOpened", None)
        if opened is not None:
            opened(circuit)

    def packetsReceived(self, circuit, packets):
        if self.gate.packetsAllowed(circuit, packets):
            self.inner.packetsReceived(circuit, packets)

    def circuitClosed(self, circuit, reason):
        self.gate.circuitClosed(circuit)
        self.inner.circuitClosed(circuit, reason)


class RedeemReporter:
    """
    Reports accepted tokens to their issuers in batches (C{/v1/redeem}) and
    hands each verdict back.  Unreachable issuers are retried with backoff;
    at most C{maxQueued} tokens wait (the oldest are dropped, with a warning:
    the exit's own store still refuses them twice here).

    @param apiOf: C{callable(issuerId) -> "HOST:PORT" or None}.
    """

    log = Logger()

    def __init__(self, reactor, apiOf, clientFor=None, interval=0.05, maxQueued=10000):
        self.reactor = reactor
        self.apiOf = apiOf
        self.clientFor = clientFor or (lambda api: IssuerClient(reactor, f"http://{api}", timeout=30))
        self.interval = interval
        self.maxQueued = maxQueued
        self.queue = []  # (issuerId, token, callback)
        self.backoff = 0.0
        self._call = None
        self._sending = None
        self.counters = {"reported": 0, "report_failures": 0, "dropped": 0}

    def report(self, issuerId, token, callback):
        self.queue.append((issuerId, token, callback))
        if len(self.queue) > self.maxQueued:
            self.queue.pop(0)
            self.counters["dropped"] += 1
            self.log.warn("payments: the issuer report queue is full; dropping the oldest")
        self._schedule(self.interval)

    def _schedule(self, delay):
        if self._call is None or not self._call.active():
            self._call = self.reactor.callLater(delay, self.flush)

    def flush(self):
        if self._sending is not None:
            return self._sending
        if self._call is not None and self._call.active():
            self._call.cancel()
        batch, self.queue = self.queue, []
        if not batch:
            return defer.succeed(None)
        d = self._sending = defer.Deferred.fromCoroutine(self._send(batch))

        def done(result):
            self._sending = None
            if isinstance(result, Failure):
                self.log.failure("payments: reporting to the issuer failed", result)
            if self.queue:
                self._schedule(max(self.interval, self.backoff))

        return d.addBoth(done)

    async def _send(self, batch):
        byIssuer = {}
        for item in batch:
            byIssuer.setdefault(item[0], []).append(item)
        for issuerId, items in byIssuer.items():
            api = self.apiOf(issuerId)
            for start in range(0, len(items), 64):
                chunk = items[start:start + 64]
                try:
                    if api is None:
                        raise IssuerError("issuer API address unknown")
                    verdicts = await self.clientFor(api).redeem([t.encode() for _, t, _ in chunk])
                except IssuerError as e:
                    self.counters["report_failures"] += 1
                    self.backoff = min(max(2 * self.backoff, 5.0), 300.0)
                    self.log.warn("payments: cannot report tokens to issuer {id}: {why}; retrying in {s:.0f}s",
                                  id=issuerId.hex()[:16], why=str(e), s=self.backoff)
                    self.queue[:0] = items[start:]
                    break
                self.backoff = 0.0
                self.counters["reported"] += len(chunk)
                for (_, _, callback), verdict in zip(chunk, verdicts):
                    callback(verdict)

    def stop(self):
        if self._call is not None and self._call.active():
            self._call.cancel()


class PaidExitService(service.Service):
    """
    The exit's payment chores: reads the accepted issuers' keys from the DHT
    (every C{FAST} seconds until each issuer was read, then every C{refresh}
    seconds) and publishes the exit's terms under each issuer (every
    C{republish} seconds), so clients holding that issuer's tokens find
    this exit.

    @param ready: C{callable() -> Deferred} firing once the DHT is joined.
    """

    log = Logger()
    FAST = 5.0

    def __init__(self, reactor, gate, keys, records, ready, refresh=300.0, republish=1800.0):
        self.reactor = reactor
        self.gate = gate
        self.keys = keys
        self.records = records
        self.ready = ready
        self.refresh = refresh
        self.republish = republish
        self._publishLoop = None
        self._keysCall = None

    def startService(self):
        super().startService()
        self.reactor.callWhenRunning(lambda: self.ready().addCallback(self._start).addErrback(
            lambda f: self.log.failure("payments: exit start-up failed", f)))

    def _start(self, _):
        if not self.running:
            return
        self._readKeys()
        self._publishLoop = task.LoopingCall(self.publish)
        self._publishLoop.clock = self.reactor
        self._publishLoop.start(self.republish, now=True).addErrback(lambda f: self.log.failure("payments loop", f))

    def _readKeys(self):
        self._keysCall = None

        def again(_):
            if self.running:
                delay = self.refresh if self.keys.complete() else self.FAST
                self._keysCall = self.reactor.callLater(delay, self._readKeys)

        self.keys.refresh().addCallback(again)

    def publish(self):
        terms = self.gate.terms.published()
        lifetime = min(3 * self.republish, 86400)
        ds = [self.records.publishExitTerms(i, terms, lifetime) for i in self.gate.terms.issuers]

        def failed(f):
            self.log.warn("payments: exit terms not published: {why}", why=f.getErrorMessage())

        return defer.gatherResults(ds, consumeErrors=True).addCallbacks(
            lambda _: self.log.info("payments: exit terms published for {n} issuer(s)", n=len(ds)), failed)

    def stopService(self):
        super().stopService()
        if self._publishLoop is not None and self._publishLoop.running:
            self._publishLoop.stop()
        if self._keysCall is not None and self._keysCall.active():
            self._keysCall.cancel()
        if self.gate.reporter is not None:
            self.gate.reporter.stop()
