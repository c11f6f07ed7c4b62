"""UDP hole punching: both peers probe each other's candidates at once until a pair answers.

Probes and acks go out of the node's one UDP socket (first bytes 0x9E/0x9F),
so the mapping they open is the one the datagram link then uses.  Both
peers learned a shared punch id and secret through signalling; every probe
and ack carries an HMAC tag over them and the sender's role, so a stranger
cannot fake success and our own reflected probe is not mistaken for the
peer's answer.

Timing: rounds start quickly and back off (50 ms growing to 400 ms, with
jitter), and inside a round the candidates are spread a few milliseconds
apart, so that both NATs see outgoing traffic before the other side's
probes arrive even when the two peers start at slightly different times.
A probe from an address we did not know (a peer-reflexive candidate: the
peer's NAT picked a new port for us) is answered and then probed too --
that is what lets a symmetric NAT reach an address-restricted one.
The first address that acks our probe wins.  Afterwards the link's own
keepalives hold the mapping open.
"""

import hashlib
import hmac
import random
import struct

from twisted.internet import defer
from zope.interface import implementer

from meshvpn.errors import PunchFailed
from meshvpn.interfaces import IHolePuncher

PROBE, ACK = 0x9E, 0x9F
PUNCH_FIRST_BYTES = (PROBE, ACK)
_LEN = 1 + 8 + 16
MAX_SESSIONS = 256


def _tag(secret, kind, punchId, role):
    return hmac.new(secret, struct.pack("!B8sB", kind, punchId, role), hashlib.sha256).digest()[:16]


class PunchSession:
    """What signalling agreed: punch id, shared secret, and our role (0 offerer, 1 answerer)."""

    def __init__(self, punchId, secret, role):
        self.punchId, self.secret, self.role = punchId, secret, role
        peerRole = 1 - role
        self.probe = bytes((PROBE,)) + punchId + _tag(secret, PROBE, punchId, role)
        self.ack = bytes((ACK,)) + punchId + _tag(secret, ACK, punchId, role)
        self.peerProbeTag = _tag(secret, PROBE, punchId, peerRole)
        self.peerAckTag = _tag(secret, ACK, punchId, peerRole)


class _Attempt:
    def __init__(self, session, remote, deferred, deadline):
        self.session, self.remote, self.deferred, self.deadline = session, remote, deferred, deadline
        self.timers = []
        self.round = 0
        self.result = None


@implementer(IHolePuncher)
class HolePuncher:
    """
    Registered on the node's multiplexer for 0x9E-0x9F; runs any number
    (bounded) of punch attempts at once, keyed by punch id.
    """

    def __init__(self, reactor, send, deadline=3.0, rng=None, linger=10.0):
        self.reactor = reactor
        self._send = send
        self.deadline = deadline
        self.linger = linger
        self._rng = rng or random.Random()
        self._attempts = {}  # punch id -> _Attempt
        self.counters = {"probes_sent": 0, "garbage": 0, "bad_tag": 0, "unknown": 0, "succeeded": 0, "failed": 0}

    def register(self, mux):
        mux.register("punch", PUNCH_FIRST_BYTES, self)

    def punch(self, peerId, localCandidates, remoteCandidates, session=None):
        """
        Probe every remote candidate until one acks.

        @param session: the L{PunchSession} agreed through signalling
            (required: the probes must be authenticated).
        @return: a Deferred firing with the remote address that answered;
            fails with L{PunchFailed} after the deadline.
        """
        if session is None:
            raise ValueError("hole punching needs the PunchSession agreed through signalling")
        if len(self._attempts) >= MAX_SESSIONS:
            return defer.fail(PunchFailed("too many punch attempts at once"))
        old = self._attempts.get(session.punchId)
        if old is not None:
            return defer.fail(PunchFailed("punch id already in use"))
        remote = []
        for c in remoteCandidates:
            c = (c[0], int(c[1]))
            if c not in remote:
                remote.append(c)
        d = defer.Deferred()
        a = _Attempt(session, remote, d, self.reactor.seconds() + self.deadline)
        self._attempts[session.punchId] = a
        self._round(a)
        a.timers.append(self.reactor.callLater(self.deadline, self._expire, a))
        return d

    def _round(self, a):
        if a.result is not None:
            return
        # Spread: candidate i goes out i*5 ms into the round.
        for i, addr in enumerate(list(a.remote)):
            if i == 0:
                self._probe(a, addr)
            else:
                a.timers.append(self.reactor.callLater(0.005 * i, self._probe, a, addr))
        gap = min(0.05 * (1.6**a.round), 0.4) * self._rng.uniform(0.8, 1.2)
        a.round += 1
        a.timers.append(self.reactor.callLater(gap, self._round, a))

    def _probe(self, a, addr):
        if a.result is None and self._attempts.get(a.session.punchId) is a:
            self.counters["probes_sent"] += 1
            self._send(a.session.probe, addr)

    def _expire(self, a):
        if a.result is None:
            self.counters["failed"] += 1
            self._finish(a)
            a.deferred.errback(PunchFailed(f"no candidate answered within {self.deadline:.1f}s"))

    def _finish(self, a):
        for t in a.timers:
            if t.active():
                t.cancel()
        a.timers = []
        # Keep answering the peer's probes for a while: its ack may still be missing.
        a.timers.append(self.reactor.callLater(self.linger, self._forget, a))

    def _forget(self, a):
        if self._attempts.get(a.session.punchId) is a:
            del self._attempts[a.session.punchId]

    def cancel(self, punchId):
        a = self._attempts.get(punchId)
        if a is not None and a.result is None:
            a.result = False
            self._finish(a)

    def datagramReceived(self, data, addr):
        if len(data) != _LEN:
            self.counters["garbage"] += 1
            return
        kind, punchId, tag = data[0], data[1:9], data[9:]
        a = self._attempts.get(punchId)
        if a is None:
            self.counters["unknown"] += 1
            return
        s = a.session
        if kind == PROBE and hmac.compare_digest(tag, s.peerProbeTag):
            self._send(s.ack, addr)
            if a.result is None and addr not in a.remote and len(a.remote) < 32:
                a.remote.append(addr)  # peer-reflexive
                self._probe(a, addr)
        elif kind == ACK and hmac.compare_digest(tag, s.peerAckTag):
            if a.result is None:
                a.result = addr
                self.counters["succeeded"] += 1
                self._finish(a)
                a.deferred.callback(addr)
        else:
            self.counters["bad_tag"] += 1
