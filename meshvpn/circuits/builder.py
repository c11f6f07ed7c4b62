"""Builds one origin circuit along a chosen path: link to the guard, CREATE2, EXTEND2 twice.

This is the C{buildCircuit(path)} the L{CircuitManager} is given.  Every
failure comes out as L{CircuitBuildFailed} naming the hop that failed, so the
manager retries around it (and marks a dead guard down).
"""

from twisted.internet import defer

from meshvpn.errors import LinkError
from meshvpn.circuits.manager import CircuitBuildFailed
from meshvpn.onion.origin import OriginCircuit
from meshvpn.circuits.relayinfo import hopSpec
from meshvpn.onion.destroy import CircuitDestroyed


# The circuit's own build timer is only a backstop: the manager's timeout
# (adaptive, L{meshvpn.circuits.buildtimeout}) cancels a build first.
BACKSTOP_TIMEOUT = 120.0


class CircuitBuilder:
    """
    @param onCircuit: called with each new L{OriginCircuit} before it is
        built, so the layer above (streams) can attach itself; circuits know
        nothing of streams.
    """

    def __init__(self, reactor, switch, links, buildTimeout=BACKSTOP_TIMEOUT, onCircuit=lambda circuit: None):
        self.reactor = reactor
        self.onCircuit = onCircuit
        self.switch = switch
        self.links = links
        self.buildTimeout = buildTimeout

    def __call__(self, path):
        return defer.Deferred.fromCoroutine(self._build(path))

    async def _build(self, path):
        now = self.reactor.seconds()
        try:
            hops = [hopSpec(r, now) for r in path]
        except ValueError as e:
            raise CircuitBuildFailed(str(e)) from None
        try:
            link = await self.links.getLink(path[0].descriptor)
        except LinkError as e:
            raise CircuitBuildFailed(f"no link to the guard: {e}", hop=0) from None
        circuit = OriginCircuit(self.switch, link, hops, buildTimeout=self.buildTimeout)
        self.onCircuit(circuit)
        try:
            await circuit.build()
        except CircuitDestroyed as e:
            raise CircuitBuildFailed(str(e), hop=e.hop, extending=e.extending, silent=e.silent) from None
        except defer.CancelledError:
            # The manager's (adaptive) build timeout gave up on it: the half-built
            # circuit must not stay in its channel's map until the link closes.
            circuit.close("timeout")
            raise
        return circuit
