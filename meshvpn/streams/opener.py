"""The stream opener the SOCKS server uses in a real client: streams on circuits.

It asks the circuit manager for a circuit whose exit accepts the target,
per isolation key, and opens the stream on it (L{ICircuit.openStream},
which the circuit's L{meshvpn.streams.mux.StreamMux} serves); names are
resolved by the exit through the same mux.  A stream whose circuit died
before the exit answered (END reason DESTROY, or the circuit closed) is
retried on a fresh circuit at once, as Tor does; any other refusal goes
back to the app as its SOCKS reply.

A stream the exit does not answer in time (L{meshvpn.streams.attachtimeout}:
Tor's 10 s, longer when measured attaches are slow, at most 20 s; later attempts half as long again) is
cancelled (END to the exit), its circuit is retired for new streams
(L{meshvpn.interfaces.ICircuitManager.streamTimedOut}), and it is tried on
another circuit.  After L{MAX_ATTEMPTS} circuits the app gets a clear
answer (SOCKS TTL expired, END reason TIMEOUT): never a hang.

A stream still waiting for its answer when its circuit's guard becomes
suspected (a PING unanswered past a bound from measured round trips:
L{meshvpn.interfaces.ICircuitManager.whenSuspect}) is cancelled the same
way and moved at once, well before the attach timeout: a silently cut or
hung guard costs the waiting stream under a second plus the move, not
10 s.  A move does not count against L{MAX_ATTEMPTS} more than once per
circuit, as any attempt.

A hung middle or exit is not seen by the client's link PING (its guard
answers): a stream that waits past a bound from the measured circuit round
trip gets its circuit probed end to end (L{meshvpn.streams.circuitprobe});
no answer, and the circuit is retired, its middle and exit avoided for a
while (L{meshvpn.interfaces.ICircuitManager.circuitUnanswered}) and the
stream moved, in about 2 s instead of the attach timeout.  Sooner, as a
rule: the relay before a hung one tells every circuit through it
(NEXT_HOP_SUSPECTED, L{meshvpn.onion.nexthop}), and the manager's
L{whenSuspect} fires for all of them at once.
"""

import ipaddress

from twisted.internet import defer
from zope.interface import implementer

from meshvpn.circuits.mpauto import MultipathRule
from meshvpn.circuits.mpbulk import BulkDetector
from meshvpn.circuits.mpload import ThreadBusy
from meshvpn.errors import StreamRefused
from meshvpn.interfaces import IStreamOpener
from meshvpn.onion.endreasons import EndReason
from meshvpn.onion.streammsgs import AnswerType
from meshvpn.streams.attachtimeout import AttachTimeout
from meshvpn.streams.bulkstream import BulkStream
from meshvpn.streams.circuitprobe import CircuitProbe

MAX_ATTEMPTS = 3
_RETRYABLE = {EndReason.DESTROY, EndReason.HIBERNATING, EndReason.RESOURCELIMIT}


def _addresses(name, answers):
    found = []
    for kind, value, _ttl in answers:
        if kind == AnswerType.IPV4:
            found.append(str(ipaddress.IPv4Address(value)))
        elif kind == AnswerType.IPV6:
            found.append(str(ipaddress.IPv6Address(value)))
    if not found:
        raise StreamRefused(EndReason.RESOLVEFAILED, f"exit could not resolve {name}")
    return found


def _names(address, answers):
    found = [value.decode("ascii", "replace") for kind, value, _ in answers if kind == AnswerType.HOSTNAME]
    if not found:
        raise StreamRefused(EndReason.RESOLVEFAILED, f"exit found no name for {address}")
    return found


@implementer(IStreamOpener)
class CircuitStreamOpener:
    """
    @param circuits: an L{meshvpn.interfaces.ICircuitManager}.
    @param multipath: C{"auto"} (L{meshvpn.circuits.mpauto}: a bulk stream
        gets a second path while the client has CPU to spare and keeps it
        while it pays), or bytes a stream moves before it is given a
        second path (L{meshvpn.streams.bulkstream}; 0 at once), or C{None}: never.
    """

    def __init__(self, circuits, maxAttempts=MAX_ATTEMPTS, multipath="auto", reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.circuits = circuits
        self.maxAttempts = maxAttempts
        self.multipath = multipath
        self.timeouts = AttachTimeout()
        self.timedOut = 0  # attaches given up on one circuit and tried on another
        self.moved = 0  # attaches moved off a circuit whose guard became suspected, or that answered no probe
        self.probe = CircuitProbe(reactor)
        self.load = ThreadBusy(reactor) if multipath == "auto" else None  # one reading of the reactor thread for all streams

    def openStream(self, host, port, isolationKey, early=None):
        def action(circuit):
            if early is None:
                d = circuit.openStream(host, port)
            else:
                # Optimistic data (meshvpn.streams.optimistic): each attempt sends it all again.
                d = circuit.streamHandler.openStream(host, port, early=early)
            if self.multipath is not None:
                d.addCallback(self._bulk, circuit)
            return d

        return defer.Deferred.fromCoroutine(self._withRetry(action, (host, port), isolationKey))

    def _bulk(self, stream, circuit):
        if self.multipath == "auto":
            return BulkStream(stream, circuit, self.circuits, rule=MultipathRule(), load=self.load)
        # A stream that moves multipath bytes gets a second path (0: at once).
        return BulkStream(stream, circuit, self.circuits, BulkDetector(threshold=self.multipath, want=True if self.multipath == 0 else None))

    def resolve(self, name, isolationKey):
        # Any exit resolves names: no target port to match.
        def action(circuit):
            return circuit.streamHandler.resolve(name).addCallback(lambda a: _addresses(name, a))

        return defer.Deferred.fromCoroutine(self._withRetry(action, None, isolationKey))

    def resolvePTR(self, address, isolationKey):
        def action(circuit):
            reverse = ipaddress.ip_address(address).reverse_pointer
            return circuit.streamHandler.resolve(reverse).addCallback(lambda a: _names(address, a))

        return defer.Deferred.fromCoroutine(self._withRetry(action, None, isolationKey))

    async def _withRetry(self, action, target, isolationKey):
        attempt = 0
        while True:
            attempt += 1
            circuit = await self.circuits.getCircuit(target=target, isolation=isolationKey)
            limit = self.timeouts.limit(attempt)
            started = self.reactor.seconds()
            attaching = action(circuit).addTimeout(limit, self.reactor)
            moved = []

            def move(why, attaching=attaching, moved=moved):
                if not attaching.called:
                    moved.append(why)
                    attaching.cancel()  # END to the exit

            # the last attempt stays put: its answer, the link's verdict or the attach timeout comes
            armed = attempt < self.maxAttempts
            suspect = self._whenSuspect(circuit, move, armed)
            stopProbe = self.probe.watch(circuit, attaching, lambda: move("hung")) if armed else (lambda: None)
            try:
                result = await attaching
            except defer.CancelledError:
                if not moved:
                    raise
                self.moved += 1
                if moved[0] == "hung":
                    # the exit did not answer the probe: a hung middle or exit; no new streams on it,
                    # and the manager avoids both for a while (the stream's next circuit too)
                    self.circuits.circuitUnanswered(circuit)
                else:
                    getattr(self.circuits, "streamMoved", lambda: None)()
                continue  # the manager hands out a circuit through other relays
            except defer.TimeoutError:
                # Cancelled (the stream's END went to the exit): the circuit
                # takes no new streams, and this one tries another.
                self.timedOut += 1
                self.circuits.streamTimedOut(circuit)
                if attempt >= self.maxAttempts:
                    raise StreamRefused(EndReason.TIMEOUT, f"no answer from the exit on {attempt} circuits") from None
                continue
            except StreamRefused as e:
                if EndReason.fromWire(int(e.reason)) not in _RETRYABLE or attempt >= self.maxAttempts:
                    raise
                continue  # the circuit died under us: the manager hands out a new one
            finally:
                stopProbe()
                if not suspect.called:
                    suspect.cancel()
            self.timeouts.attached(self.reactor.seconds() - started)
            return result

    def _whenSuspect(self, circuit, move, armed):
        """C{move("suspected")} if C{circuit}'s guard becomes suspected first."""
        whenSuspect = getattr(self.circuits, "whenSuspect", None)
        suspect = whenSuspect(circuit) if armed and whenSuspect is not None else defer.Deferred()
        suspect.addCallbacks(lambda _: move("suspected"), lambda f: f.trap(defer.CancelledError) and None)
        return suspect
