"""Helper processes for the VPN namespace tests and ``meshvpn bench tun``: a
mesh-only VPN client behind a NAT box, and a made-up internet's DNS server.

(Relays and the full VPN client are real ``twistd`` processes; the client
role does not attach a hole-punching L{PeerConnector} yet, so the mesh
client here builds one the way L{meshvpn.nat.matrixagent} does.)  Each runs
in its own network namespace (``ip netns exec NS python -m
meshvpn.test.tunnet ROLE ...``), writes a JSON ready file and undoes its
system changes on SIGTERM.
"""

import argparse
import json
import os
import signal
import sys

from twisted.internet import defer
from twisted.logger import globalLogBeginner, textFileLogObserver


def _writeJson(path, value):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f)
    os.replace(tmp, path)


def _stopOnTerm(reactor):
    signal.signal(signal.SIGTERM, lambda *a: reactor.callFromThread(reactor.stop))
    signal.signal(signal.SIGINT, lambda *a: reactor.callFromThread(reactor.stop))


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
        reactor.callWhenRunning(lambda: defer.Deferred.fromCoroutine(runMesh(reactor, args)).addErrback(failed))
    reactor.run()


if __name__ == "__main__":
    main()
