"""The stream opener the SOCKS server uses in a real client: streams on circuits.

It asks the circuit manager for a circuit whose exit accepts the target,
per isolation key, and opens the stream on it.  A stream whose circuit died
before the exit answered (END reason DESTROY, or the circuit closed) is
retried once on a fresh circuit, as Tor does; any other refusal goes back
to the app as its SOCKS reply.

Streams and resolves on a circuit go through
L{meshvpn.streams.circuitstream} (the circuit's stream layer).
"""

from twisted.internet import defer
from zope.interface import implementer

from meshvpn.streams import circuitstream as circuitstreams
from meshvpn.errors import StreamRefused
from meshvpn.interfaces import IStreamOpener
from meshvpn.onion.endreasons import EndReason

MAX_ATTEMPTS = 2
_RETRYABLE = {EndReason.DESTROY, EndReason.HIBERNATING, EndReason.RESOURCELIMIT}


@implementer(IStreamOpener)
class CircuitStreamOpener:
    """
    @param circuits: an L{meshvpn.interfaces.ICircuitManager}.
    """

    def __init__(self, circuits, maxAttempts=MAX_ATTEMPTS, onCircuit=circuitstreams):
        self.circuits = circuits
        self.maxAttempts = maxAttempts
        self._on = onCircuit  # openStreamOn/resolveOn/resolvePTROn(circuit, ...)

    def openStream(self, host, port, isolationKey):
        return defer.Deferred.fromCoroutine(
            self._withRetry(lambda c: self._on.openStreamOn(c, host, port), (host, port), isolationKey)
        )

    def resolve(self, name, isolationKey):
        # Any exit resolves names: no target port to match.
        return defer.Deferred.fromCoroutine(self._withRetry(lambda c: self._on.resolveOn(c, name), None, isolationKey))

    def resolvePTR(self, address, isolationKey):
        return defer.Deferred.fromCoroutine(self._withRetry(lambda c: self._on.resolvePTROn(c, address), None, isolationKey))

    async def _withRetry(self, action, target, isolationKey):
        attempt = 0
        while True:
            attempt += 1
            circuit = await self.circuits.getCircuit(target=target, isolation=isolationKey)
            try:
                return await action(circuit)
            except StreamRefused as e:
                if EndReason.fromWire(int(e.reason)) not in _RETRYABLE or attempt >= self.maxAttempts:
                    raise
                # The circuit died under us: the manager hands out a new one.
