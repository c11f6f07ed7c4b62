"""STUN client transactions over UDP: retransmission per RFC 8489 section 6.2.1.

A request is sent at t=0 and retransmitted with a doubling timeout
(RTO, 2 RTO, 4 RTO, ...) until C{rc} requests have been sent; after the last
one the client waits C{rm} * RTO and then gives up.  With the RFC's defaults
(RTO 500 ms, Rc 7, Rm 16) the requests go out at 0, 0.5, 1.5, 3.5, 7.5, 15.5
and 31.5 s and the transaction fails at 39.5 s.  The number of transactions
in flight is bounded, so a caller cannot make us keep unbounded state.

Time is the reactor's (L{IReactorTime}), so tests drive it with task.Clock.
The client does not own a socket: it is given a C{send(data, addr)} callable
and fed every STUN response that arrives (see L{meshvpn.nat.endpoint}).
"""

from twisted.internet import defer
from twisted.logger import Logger

from meshvpn.errors import MeshVPNError
from meshvpn.hostport import formatHostPort
from meshvpn.nat import stun

RTO = 0.5
RC = 7
RM = 16
MAX_PENDING = 256


class StunTimeout(MeshVPNError):
    """No response to a STUN request after all retransmissions."""


class TooManyTransactions(MeshVPNError):
    """The client already has the maximum number of requests in flight."""


class StunResult:
    """
    A response to one request.

    @ivar message: the decoded L{stun.StunMessage} (success or error class).
    @ivar source: the address the response came from.
    @ivar rtt: seconds from the first transmission to the response (RFC 8489
        suggests Karn's algorithm; this is the raw time, callers decide).
    @ivar attempts: how many requests were sent.
    """

    __slots__ = ("message", "source", "rtt", "attempts")

    def __init__(self, message, source, rtt, attempts):
        self.message, self.source, self.rtt, self.attempts = message, source, rtt, attempts


class _Transaction:
    __slots__ = ("data", "addr", "deferred", "started", "attempts", "call", "rto")


class StunClient:
    """
    Runs STUN client transactions.

    @param reactor: an L{IReactorTime}.
    @param send: C{callable(data, addr)} that sends a datagram.
    """

    log = Logger()

    def __init__(self, reactor, send, maxPending=MAX_PENDING):
        self._reactor = reactor
        self._send = send
        self._maxPending = maxPending
        self._pending = {}

    def request(self, message, addr, rto=RTO, rc=RC, rm=RM, integrityKey=None, integritySha256Key=None, fingerprint=True):
        """
        Send request C{message} to C{addr} with retransmissions.

        @return: a Deferred firing with a L{StunResult} for the first response
            (success or error class) with the same transaction id, or failing
            with L{StunTimeout}, or at once with L{TooManyTransactions}.
            Cancelling it stops the retransmissions.
        """
        if len(self._pending) >= self._maxPending:
            return defer.fail(TooManyTransactions(f"{len(self._pending)} STUN requests already in flight"))
        if message.transactionId in self._pending:
            return defer.fail(ValueError("a transaction with this id is already in flight"))
        t = _Transaction()
        t.data = message.encode(integrityKey, integritySha256Key, fingerprint)
        t.addr = addr
        t.attempts = 0
        t.rto = rto
        t.started = self._reactor.seconds()
        t.call = None
        txid = message.transactionId

        def cancel(d):
            self._finish(txid)

        t.deferred = defer.Deferred(cancel)
        self._pending[txid] = t
        self._transmit(txid, rc, rm)
        return t.deferred

    def _transmit(self, txid, rc, rm):
        t = self._pending.get(txid)
        if t is None:
            return
        self._send(t.data, t.addr)
        t.attempts += 1
        # Deadlines are counted from the first transmission, so a late timer
        # does not push every later retransmission back.
        now = self._reactor.seconds()
        if t.attempts < rc:
            due = t.started + t.rto * (2**t.attempts - 1)
            t.call = self._reactor.callLater(max(0, due - now), self._transmit, txid, rc, rm)
        else:
            due = t.started + t.rto * (2 ** (rc - 1) - 1) + t.rto * rm
            t.call = self._reactor.callLater(max(0, due - now), self._timedOut, txid)

    def _timedOut(self, txid):
        t = self._pending.pop(txid, None)
        if t is not None:
            t.call = None
            t.deferred.errback(StunTimeout(f"no STUN response from {formatHostPort(*t.addr)} after {t.attempts} requests"))

    def _finish(self, txid):
        t = self._pending.pop(txid, None)
        if t is not None and t.call is not None and t.call.active():
            t.call.cancel()
        return t

    def responseReceived(self, message, source):
        """
        Feed a decoded success or error response.

        @return: True if it answered one of our transactions.
        """
        if message.cls not in (stun.SUCCESS, stun.ERROR):
            return False
        t = self._pending.get(message.transactionId)
        if t is None:
            return False
        self._finish(message.transactionId)
        t.deferred.callback(StunResult(message, source, self._reactor.seconds() - t.started, t.attempts))
        return True

    def pendingCount(self):
        return len(self._pending)

    def cancelAll(self):
        for txid in list(self._pending):
            t = self._pending.get(txid)
            if t is not None:
                t.deferred.cancel()
