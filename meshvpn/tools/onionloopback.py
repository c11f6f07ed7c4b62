"""Circuits over real TLS links on loopback, all nodes in this process.

Three relays (link manager listening on 127.0.0.1, onion key ring, circuit
switch registered as the manager's cell handler, EXTEND2 through the manager)
and an anonymous client.  Used by a test (a 3-hop circuit over real links,
packets both ways) and by ``meshvpn bench circuit`` (build times).  The
DHT-driven version, one process per node, is ``meshvpn testnet``.
"""

import time

import attrs

from twisted.internet import defer, endpoints
from zope.interface import implementer

from meshvpn.identity import NodeIdentity
from meshvpn.interfaces import ICircuitEdge
from meshvpn.link.manager import LinkManager, LinkTarget
from meshvpn.link.protocol import LinkSettings
from meshvpn.link.transports import TCPTransport
from meshvpn.onion.keyring import OnionKeyRing
from meshvpn.onion.origin import HopSpec, OriginCircuit
from meshvpn.onion.service import linkManagerConnector
from meshvpn.onion.switch import CircuitSwitch, SwitchLimits


@implementer(ICircuitEdge)
class _EchoEdge:
    """Exit edge: send every packet back."""

    def relayReceived(self, circuit, command, streamId, data):
        pass

    def packetsReceived(self, circuit, packets):
        circuit.sendPackets(packets)

    def circuitWindowOpened(self, circuit):
        pass

    def circuitClosed(self, circuit, reason):
        pass


class LoopbackNet:
    def __init__(self, reactor):
        self.reactor = reactor
        self.transports = {"tls": TCPTransport()}
        self.relays = []
        self.ports = []
        self.managers = []

    async def start(self, relays=3):
        for i in range(relays):
            ident = NodeIdentity.generate()
            manager = LinkManager(self.reactor, ident, transports=self.transports)
            ring = OnionKeyRing(self.reactor, current=bytes(ident.onionPrivateKey()))
            edge = _EchoEdge() if i == relays - 1 else None
            # Every relay here is on 127.0.0.1: extending between them needs the test-network opt-in.
            switch = CircuitSwitch(self.reactor, ident.nodeId, ring, linkManagerConnector(manager), edge,
                                   SwitchLimits(extendAllowPrivate=True))
            manager.setCellHandler(switch)
            port = await endpoints.TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1").listen(
                manager.serverFactory("tls")
            )
            self.ports.append(port)
            self.managers.append(manager)
            address = f"127.0.0.1:{port.getHost().port}"
            self.relays.append((HopSpec(ident.nodeId, ring.publicKeys()["current"], (), (f"tls {address}",),
                                        switch.advertisedHandshakes()), address))
        cid = NodeIdentity.generate()
        self.client = LinkManager(self.reactor, cid, LinkSettings(authenticate=False), transports=self.transports)
        self.managers.append(self.client)
        self.clientSwitch = CircuitSwitch(self.reactor, cid.nodeId)
        self.client.setCellHandler(self.clientSwitch)

    async def build(self, hybrid=False):
        """
        @return: C{(circuit, seconds)}: a 3-hop circuit and how long it took;
            classic (ntor) unless C{hybrid} (X25519 + ML-KEM-768 on every hop).
        """
        t0 = time.perf_counter()
        guard, address = self.relays[0]
        link = await self.client.getLink(LinkTarget(guard.nodeId, (("tls", address),)))
        circuit = OriginCircuit(self.clientSwitch, link,
                                [spec if hybrid else attrs.evolve(spec, handshakes=()) for spec, _ in self.relays])
        await circuit.build()
        return circuit, time.perf_counter() - t0

    async def stop(self):
        for manager in self.managers:
            await defer.maybeDeferred(manager.stopService)
        for port in self.ports:
            await defer.maybeDeferred(port.stopListening)


async def buildTimes(reactor, builds):
    """
    @return: a dict: first build (opens the TLS links), then the median and
        95th percentile of C{builds} more with the links open.
    """
    net = LoopbackNet(reactor)
    await net.start()
    try:
        circuit, first = await net.build()
        circuit.close()
        times, hybrid = [], []
        for _ in range(builds):
            for hybridBuild, out in ((False, times), (True, hybrid)):
                circuit, took = await net.build(hybridBuild)
                out.append(took)
                circuit.close()
        times.sort()
        hybrid.sort()
        return {
            "build_time_tls_loopback_first_s": round(first, 6),
            "build_time_tls_loopback_median_s": round(times[len(times) // 2], 6) if times else None,
            "build_time_tls_loopback_p95_s": round(times[min(len(times) - 1, int(len(times) * 0.95))], 6) if times else None,
            "hybrid_build_time_tls_loopback_median_s": round(hybrid[len(hybrid) // 2], 6) if hybrid else None,
        }
    finally:
        await net.stop()
