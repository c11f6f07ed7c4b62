"""Is the circuit a waiting stream sits on alive?  An end-to-end probe, for a hung middle or exit that no link PING sees.

A guard that hangs or is cut is found by the client's own link PING
(L{meshvpn.link.liveness}).  A hung middle or exit is not: the guard still
answers, and the guard's own PING to the middle only closes that link at
its verdict (4-10 s), after which a DESTROY reaches the client.  Until then
a stream waiting for CONNECTED waited for the attach timeout (10-20 s,
L{meshvpn.streams.attachtimeout}).

So when a stream has waited past L{CircuitProbe.waitBound} (2 x the
measured circuit round trip, at least L{WAIT_FLOOR_S}), the client asks the
exit something it answers at once with no connect and no DNS: a RESOLVE of
the literal C{127.0.0.1} (the same question the VPN asks each new circuit).
An answer within L{CircuitProbe.answerBound} (4 x the round trip, at least
L{ANSWER_FLOOR_S}) proves every hop forwards: the stream keeps waiting (the
exit's connect is merely slow).  No answer: the circuit is taken for hung,
it takes no new streams, and the waiting stream moves at once.

The floors are wide on purpose: this machine's loopback round trips are
milliseconds, but at load 30 a live circuit answers in hundreds of them,
and a false verdict retires a circuit (a rebuild, more load).  One probe
per circuit at a time (streams waiting on the same circuit share it).
"""

from twisted.internet import defer

PROBE_NAME = "127.0.0.1"
WAIT_FLOOR_S = 0.5
ANSWER_FLOOR_S = 1.5
DEFAULT_RTT_S = 0.1
_ALPHA = 1 / 8


class CircuitProbe:
    def __init__(self, reactor):
        self.reactor = reactor
        self.srtt = None
        self.sent = 0
        self.unanswered = 0
        self._pending = {}  # circuit -> Deferred(bool alive) shared by its waiting streams

    def waitBound(self):
        return max(WAIT_FLOOR_S, 2 * (self.srtt or DEFAULT_RTT_S))

    def answerBound(self):
        return max(ANSWER_FLOOR_S, 4 * (self.srtt or DEFAULT_RTT_S))

    def watch(self, circuit, attaching, onHung):
        """
        Probe C{circuit} if C{attaching} is still waiting after the wait
        bound; C{onHung()} if the probe goes unanswered (C{attaching} still
        waiting).  @return: a callable that stops watching.
        """
        state = {"timer": None, "probe": None}

        def due():
            state["timer"] = None
            if attaching.called:
                return
            d = self._probe(circuit)
            state["probe"] = d

            def verdict(alive):
                if not alive and not attaching.called:
                    onHung()

            d.addCallback(verdict)

        state["timer"] = self.reactor.callLater(self.waitBound(), due)

        def stop():
            if state["timer"] is not None and state["timer"].active():
                state["timer"].cancel()
            state["timer"] = None

        return stop

    def _probe(self, circuit):
        """@return: a Deferred firing C{True} (answered in time) or C{False}; shared per circuit."""
        shared = self._pending.get(circuit)
        if shared is None:
            shared = self._pending[circuit] = defer.Deferred()
            self.sent += 1
            started = self.reactor.seconds()
            handler = getattr(circuit, "streamHandler", None)
            asking = handler.resolve(PROBE_NAME) if handler is not None else defer.Deferred()
            asking.addTimeout(self.answerBound(), self.reactor)

            def answered(_):
                self._measured(self.reactor.seconds() - started)
                return True

            def failed(f):
                if f.check(defer.TimeoutError):
                    self.unanswered += 1
                    return False
                return True  # refused or the circuit closed: not hung (its close moves the stream)

            def done(alive):
                waiters = self._pending.pop(circuit, None)
                if waiters is not None:
                    waiters.callback(alive)

            asking.addCallbacks(answered, failed).addCallback(done)
        # each caller gets its own view of the shared answer
        mine = defer.Deferred()
        shared.addCallback(lambda alive: (mine.callback(alive), alive)[1])
        return mine

    def _measured(self, rtt):
        self.srtt = rtt if self.srtt is None else (1 - _ALPHA) * self.srtt + _ALPHA * rtt
