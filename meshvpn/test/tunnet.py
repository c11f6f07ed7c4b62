"""Processes for the VPN namespace tests and ``meshvpn bench tun``: relays (one an
exit with a packet exit), a VPN client, and a made-up internet's DNS server.

Each runs as its own process inside its own network namespace
(``ip netns exec NS python -m meshvpn.test.tunnet ROLE ...``) over real TLS
links, with the path given explicitly (the relays write their hop specs to
files), so a test needs no DHT.  Every process writes a JSON ready file and
undoes its system changes (nftables tables, resolv.conf, TUN) on SIGTERM.
"""

import argparse
import json
import os
import signal
import sys

from twisted.internet import defer, endpoints
from twisted.logger import globalLogBeginner, textFileLogObserver


def _writeJson(path, value):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f)
    os.replace(tmp, path)


def _stopOnTerm(reactor):
    signal.signal(signal.SIGTERM, lambda *a: reactor.callFromThread(reactor.stop))
    signal.signal(signal.SIGINT, lambda *a: reactor.callFromThread(reactor.stop))


async def runRelay(reactor, args):
    from meshvpn.identity import NodeIdentity
    from meshvpn.link.manager import LinkManager
    from meshvpn.link.transports import TCPTransport
    from meshvpn.onion.keyring import OnionKeyRing
    from meshvpn.onion.service import linkManagerConnector
    from meshvpn.onion.switch import CircuitSwitch

    ident = NodeIdentity.generate()
    manager = LinkManager(reactor, ident, transports={"tls": TCPTransport()})
    ring = OnionKeyRing(reactor, current=bytes(ident.onionPrivateKey()))
    edge = None
    if args.exit:
        from meshvpn.exit.dns import makeUpstream
        from meshvpn.exit.packetexit import PacketExit, PacketExitEdge
        from meshvpn.exit.settings import buildExit
        from meshvpn.exit.streams import exitAcceptor, exitResolver
        from meshvpn.onion.edge import StreamExitEdge

        settings = {"exit_policy": "", "exit_dns": "system", "bandwidth_rate": None, "bandwidth_burst": None,
                    "circuit_rate": None, "circuit_burst": None}
        host, _, port = args.dns.rpartition(":")
        parts = buildExit(reactor, settings, ownAddresses=[args.host], upstream=makeUpstream(reactor, (host, int(port))))
        streams = StreamExitEdge(exitAcceptor(parts.connector, parts.limiter), exitResolver(parts.resolver))
        pe = PacketExit(reactor, parts.policy, ident.nodeId.hex()[:8])
        pe.startService()
        reactor.addSystemEventTrigger("before", "shutdown", pe.stopService)
        edge = PacketExitEdge(streams, pe)
    switch = CircuitSwitch(reactor, ident.nodeId, ring, linkManagerConnector(manager), edge)
    manager.setCellHandler(switch)
    port = await endpoints.TCP4ServerEndpoint(reactor, args.port, interface=args.host).listen(manager.serverFactory("tls"))
    _writeJson(args.ready, {
        "nodeId": ident.nodeId.hex(),
        "onionKey": bytes(ring.publicKeys()["current"]).hex(),
        "address": f"{args.host}:{port.getHost().port}",
    })


class FixedPathCircuits:
    """A stand-in for the circuit manager: one circuit along a fixed path, rebuilt when it dies."""

    def __init__(self, reactor, manager, switch, hops, guardAddress):
        self.reactor = reactor
        self.manager = manager
        self.switch = switch
        self.hops = hops
        self.guardAddress = guardAddress
        self._circuit = None
        self._building = None

    def getCircuit(self, target=None, isolation=None):
        if self._circuit is not None:
            return defer.succeed(self._circuit)
        if self._building is None:
            self._waiters = []
            self._building = defer.Deferred.fromCoroutine(self._build())
            self._building.addBoth(self._built)
        d = defer.Deferred()
        self._waiters.append(d)
        return d

    def _built(self, result):
        from twisted.python.failure import Failure

        self._building = None
        waiters, self._waiters = self._waiters, []
        if isinstance(result, Failure):
            for d in waiters:
                d.errback(result)
            return None
        self._circuit = result
        result.whenClosed().addBoth(lambda _: setattr(self, "_circuit", None))
        for d in waiters:
            d.callback(result)
        return None

    async def _build(self):
        from meshvpn.link.manager import LinkTarget
        from meshvpn.onion.edge import attachStreams
        from meshvpn.onion.origin import OriginCircuit

        link = await self.manager.getLink(LinkTarget(self.hops[0].nodeId, (("tls", self.guardAddress),)))
        circuit = OriginCircuit(self.switch, link, self.hops)
        attachStreams(circuit)
        await circuit.build()
        return circuit


async def runClient(reactor, args):
    from meshvpn.client.circuitopener import CircuitStreamOpener
    from meshvpn.client.tunclient import TunClient
    from meshvpn.client.tunmesh import meshAddress
    from meshvpn.client.tunroutes import RouteController
    from meshvpn.identity import NodeIdentity
    from meshvpn.link.manager import LinkManager
    from meshvpn.link.protocol import LinkSettings
    from meshvpn.link.transports import TCPTransport
    from meshvpn.onion.origin import HopSpec
    from meshvpn.onion.switch import CircuitSwitch

    hops, addresses = [], []
    for path in args.path.split(","):
        with open(path) as f:
            spec = json.load(f)
        hops.append(HopSpec(bytes.fromhex(spec["nodeId"]), bytes.fromhex(spec["onionKey"]), (), (f"tls {spec['address']}",)))
        addresses.append(spec["address"])
    ident = NodeIdentity.generate()
    manager = LinkManager(reactor, ident, LinkSettings(authenticate=False), transports={"tls": TCPTransport()})
    switch = CircuitSwitch(reactor, ident.nodeId)
    manager.setCellHandler(switch)
    circuits = FixedPathCircuits(reactor, manager, switch, hops, addresses[0])
    guardHost = addresses[0].rpartition(":")[0]
    tag = ident.nodeId.hex()[:8]
    routes = RouteController(tag, args.data_dir, meshAddress(ident.nodeId), args.resolv_conf) if args.capture else None
    client = TunClient(reactor, ident.nodeId, lambda: circuits.getCircuit(), CircuitStreamOpener(circuits),
                       keepSource=lambda: {guardHost}, routes=routes, mtu=args.mtu)
    client.startService()
    reactor.addSystemEventTrigger("before", "shutdown", client.stopService)
    await circuits.getCircuit()
    _writeJson(args.ready, {"nodeId": ident.nodeId.hex(), "address": client.address, "tun": client.tun.name,
                            "table": routes.table if routes else None})


async def runMesh(reactor, args):
    """A mesh-only VPN client behind a NAT: TUN with its mesh address, peers over punched/relayed links."""
    from meshvpn.client.tunclient import TunClient
    from meshvpn.identity import NodeIdentity
    from meshvpn.link.datagram import DatagramLinkEndpoint
    from meshvpn.nat.connect import PeerConnector
    from meshvpn.nat.matrixagent import buildSocket, hostCandidates
    from meshvpn.nat.punch import HolePuncher
    from meshvpn.nat.signal import RelaySignalling
    from meshvpn.nat.turn_client import TurnAllocation

    identity = NodeIdentity.loadOrCreate(args.data_dir)
    mux, stunEp = buildSocket(reactor, "0.0.0.0", 0)
    endpoint = DatagramLinkEndpoint(reactor, identity, mux)
    endpoint.register(mux)
    puncher = HolePuncher(reactor, mux.sendDatagram, deadline=args.punch_deadline)
    puncher.register(mux)
    relayHost, relayPort = args.relay.rsplit(":", 1)
    turnHost, turnPort = args.turn.rsplit(":", 1)
    signalling = RelaySignalling(reactor, endpoint, bytes.fromhex(args.relay_id), (relayHost, int(relayPort)))
    candidates = hostCandidates(mux.getHost().port)

    async def allocate():
        lifetime, user, password = await signalling.requestCredentials()
        alloc = TurnAllocation(reactor, stunEp, mux.sendDatagram, (turnHost, int(turnPort)), user, password)
        await alloc.allocate(lifetime)
        alloc.registerChannelData(mux)
        return alloc

    connector = PeerConnector(reactor, endpoint, puncher, signalling, lambda: candidates, allocate)
    await signalling.start()
    peers = [bytes.fromhex(p) for p in args.peers.split(",") if p]
    client = TunClient(reactor, identity.nodeId, None, meshConnector=connector, meshPeers=peers, mtu=args.mtu)
    client.startService()
    reactor.addSystemEventTrigger("before", "shutdown", client.stopService)
    from twisted.internet import task

    def status():
        _writeJson(args.ready, {"nodeId": identity.nodeIdHex, "address": client.address, "tun": client.tun.name,
                                "mesh": client.mesh.status()})

    loop = task.LoopingCall(status)
    loop.start(0.25)


def runDNS(reactor, args):
    """A made-up internet's authoritative DNS: fixed A records, NXDOMAIN otherwise."""
    from twisted.names import dns, error, server
    from twisted.names.common import ResolverBase

    records = dict(item.split("=", 1) for item in args.zone.split(","))

    class Zone(ResolverBase):
        def _lookup(self, name, cls, type, timeout):
            key = name.decode().lower().rstrip(".")
            if key not in records:
                return defer.fail(error.DomainError(name))
            if type != dns.A:
                return defer.succeed(([], [], []))
            print(f"dns: query {key}", flush=True)
            return defer.succeed(([dns.RRHeader(name, dns.A, dns.IN, 30, dns.Record_A(records[key], 30), auth=True)], [], []))

    factory = server.DNSServerFactory(authorities=[Zone()])
    reactor.listenUDP(53, dns.DNSDatagramProtocol(factory), interface=args.listen)
    reactor.listenTCP(53, factory, interface=args.listen)
    _writeJson(args.ready, {"listen": args.listen})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="role", required=True)
    r = sub.add_parser("relay")
    r.add_argument("--host", required=True)
    r.add_argument("--port", type=int, default=0)
    r.add_argument("--exit", action="store_true")
    r.add_argument("--dns", default="198.18.100.53:53")
    r.add_argument("--ready", required=True)
    c = sub.add_parser("client")
    c.add_argument("--path", required=True, help="comma-separated relay ready files, guard first")
    c.add_argument("--data-dir", required=True)
    c.add_argument("--resolv-conf", default="/etc/resolv.conf")
    c.add_argument("--mtu", type=int, default=1480)
    c.add_argument("--no-capture", dest="capture", action="store_false")
    c.add_argument("--ready", required=True)
    m = sub.add_parser("mesh")
    m.add_argument("--data-dir", required=True)
    m.add_argument("--relay", required=True)
    m.add_argument("--relay-id", required=True)
    m.add_argument("--turn", required=True)
    m.add_argument("--peers", default="")
    m.add_argument("--punch-deadline", type=float, default=2.5)
    m.add_argument("--mtu", type=int, default=1480)
    m.add_argument("--ready", required=True)
    d = sub.add_parser("dns")
    d.add_argument("--listen", required=True)
    d.add_argument("--zone", required=True, help="name=address,...")
    d.add_argument("--ready", required=True)
    args = parser.parse_args(argv)

    from twisted.internet import reactor

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)
    _stopOnTerm(reactor)

    def failed(f):
        print(f"tunnet {args.role}: {f.getTraceback()}", file=sys.stderr, flush=True)
        reactor.stop()

    if args.role == "dns":
        reactor.callWhenRunning(runDNS, reactor, args)
    else:
        run = {"relay": runRelay, "client": runClient, "mesh": runMesh}[args.role]
        reactor.callWhenRunning(lambda: defer.Deferred.fromCoroutine(run(reactor, args)).addErrback(failed))
    reactor.run()


if __name__ == "__main__":
    main()
