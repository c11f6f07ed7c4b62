"""One peer process of the NAT connectivity matrix (the relay is a real ``twistd meshvpn-relay``).

``python -m meshvpn.tools.natmatrixagent peer --relay IP:P --relay-id HEX --turn
IP:T [--turn-user U --turn-password P] [--turn-tcp IP:S]`` runs a peer: one UDP socket carrying link, punch probes, STUN and
TURN (with ``--turn-tcp``, for a host whose UDP is blocked, that socket is
a TURN allocation reached over TCP, L{meshvpn.nat.turn_stream_client}); it
registers with the relay and then obeys JSON commands on stdin:

    {"cmd": "allow", "peer": HEX}    -> {"event": "allowed", "peer"}  (act on that peer's offers)
    {"cmd": "connect", "peer": HEX}  -> {"event": "connected", "peer", "path", "connect_time_s"}

C{path} is the connector's (C{"direct"} or C{"relay"}), except that a link
that runs through a TURN allocation over TCP (ours, or the peer's: its
address is then the relay's) is C{"turn-tcp"}.

Whenever a link to a peer exists (opened by us or by it) both sides push
C{--bytes} of deterministic data (SHAKE-256 of the sender's node id) over it
with a small selective-repeat protocol (the link itself is lossy) and
report ``{"event": "done", "peer", "received_ok", "sent_ok"}`` once their
data was acknowledged and the peer's arrived byte for byte.  Every line
on stdout is one JSON object; the first is ``{"event": "ready", ...}``.
"""

import argparse
import hashlib
import json
import struct
import sys

from twisted.internet import defer, stdio
from twisted.protocols.basic import LineReceiver

from meshvpn.hostport import parseIPPort
from meshvpn.identity import NodeIdentity
from meshvpn.link.datagram import DatagramLinkEndpoint
from meshvpn.nat import stun
from meshvpn.nat.endpoint import StunEndpoint
from meshvpn.udpmux import STUN_BYTES, DatagramMultiplexer

CHUNK = 1100
WINDOW = 96
RTO = 0.25


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def expectedData(nodeId, size):
    return hashlib.shake_256(b"matrix" + nodeId).digest(size)


class Transfer:
    """Reliable push of C{size} bytes each way over one lossy link (selective repeat)."""

    def __init__(self, reactor, link, myId, size, done):
        self.reactor, self.link, self.size, self.done = reactor, link, size, done
        self.data = expectedData(myId, size)
        self.expect = expectedData(link.peerId, size)
        self.total = (size + CHUNK - 1) // CHUNK
        self.unacked = {}  # seq -> last send time
        self.next = 0
        self.acked = 0
        self.received = {}
        self.finished = False
        link.setPacketReceiver(self.packet)
        self.tick()

    def chunk(self, seq):
        return self.data[seq * CHUNK : (seq + 1) * CHUNK]

    def fill(self):
        while self.next < self.total and len(self.unacked) < WINDOW:
            self.send(self.next)
            self.next += 1

    def send(self, seq):
        self.unacked[seq] = self.reactor.seconds()
        self.link.sendPacket(b"D" + struct.pack("!I", seq) + self.chunk(seq))

    def tick(self):
        if self.finished:
            return
        now = self.reactor.seconds()
        for seq, t in list(self.unacked.items()):
            if now - t > RTO:
                self.send(seq)
        self.fill()
        self.check()
        self.reactor.callLater(0.05, self.tick)

    def packet(self, data):
        if len(data) < 5:
            return
        kind, (seq,) = data[:1], struct.unpack_from("!I", data, 1)
        if kind == b"D" and seq < self.total:
            if seq not in self.received:
                self.received[seq] = data[5:]
            self.link.sendPacket(b"A" + struct.pack("!I", seq))
            self.check()
        elif kind == b"A":
            if self.unacked.pop(seq, None) is not None:
                self.acked += 1
                self.fill()
                self.check()

    def check(self):
        if self.finished or self.acked < self.total or len(self.received) < self.total:
            return
        self.finished = True
        got = b"".join(self.received[i] for i in range(self.total))
        # Keep acking the peer's retransmissions for a while after we finish.
        emit({"event": "done", "peer": self.link.peerId.hex(), "received_ok": got == self.expect,
              "sent_ok": True, "bytes": len(got)})


def buildSocket(reactor, host, port):
    mux = DatagramMultiplexer()
    if ":" in host:
        import socket

        from meshvpn.ports import bindIPv6Only

        sock = bindIPv6Only(host, port)
        reactor.adoptDatagramPort(sock.fileno(), socket.AF_INET6, mux)
        sock.close()
    else:
        reactor.listenUDP(port, mux, interface=host)
    stunEp = StunEndpoint(reactor, mux.sendDatagram)
    mux.register("stun", STUN_BYTES, stunEp, accept=stun.isStun)
    return mux, stunEp


def hostCandidates(port, family=4):
    """This host's addresses of C{family} (4 or 6), but loopback and link-local, with C{port}."""
    import ipaddress
    import socket

    from pyroute2 import IPRoute

    out = []
    with IPRoute() as ipr:
        for a in ipr.get_addr(family=socket.AF_INET6 if family == 6 else socket.AF_INET):
            ip = a.get_attr("IFA_ADDRESS")
            if not ip or ipaddress.ip_address(ip).is_loopback or ipaddress.ip_address(ip).is_link_local:
                continue
            out.append((ip, port))
    return out


async def relayedSocket(reactor, identity, server, relayId):
    """A multiplexer whose socket is a TURN allocation reached over TLS at relay C{relayId}.  @return: C{(mux, stunEp, socket)}."""
    from meshvpn.link.tlsctx import sharedLinkTLS
    from meshvpn.nat.turn_stream_client import openRelayedSocket, tlsEndpoint

    mux = DatagramMultiplexer()
    stunEp = StunEndpoint(reactor, mux.sendDatagram)
    mux.register("stun", STUN_BYTES, stunEp, accept=stun.isStun)
    endpoint = tlsEndpoint(reactor, server[0], server[1], sharedLinkTLS())
    relayed = await openRelayedSocket(reactor, endpoint, identity, server, mux, relayId=relayId)
    return mux, stunEp, relayed


async def runPeer(reactor, args):
    from meshvpn.nat.connect import PeerConnector
    from meshvpn.nat.punch import HolePuncher
    from meshvpn.nat.signal import RelaySignalling
    from meshvpn.nat.turn_client import TurnAllocation

    identity = NodeIdentity.generate()
    relayed = None
    if args.turn_tcp:
        mux, stunEp, relayed = await relayedSocket(reactor, identity, args.turn_tcp, bytes.fromhex(args.relay_id))
    else:
        mux, stunEp = buildSocket(reactor, "::" if args.family == 6 else "0.0.0.0", args.port)
    endpoint = DatagramLinkEndpoint(reactor, identity, mux)
    endpoint.register(mux)
    puncher = HolePuncher(reactor, mux.sendDatagram, deadline=args.punch_deadline)
    puncher.register(mux)
    signalling = RelaySignalling(reactor, endpoint, bytes.fromhex(args.relay_id), args.relay)
    port = mux.getHost().port
    # Behind a blocked UDP the relayed address is the one address a peer can reach.
    candidates = [tuple(relayed.relayedAddress)] if args.turn_tcp else hostCandidates(port, args.family)

    async def allocate():
        if args.turn_user:
            lifetime, user, password = 600, args.turn_user, args.turn_password
        else:
            lifetime, user, password = await signalling.requestCredentials()
        alloc = TurnAllocation(reactor, stunEp, mux.sendDatagram, args.turn, user, password,
                               renew=None if args.turn_user else signalling.requestCredentials)
        await alloc.allocate(lifetime)
        alloc.registerChannelData(mux)
        return alloc

    connector = PeerConnector(reactor, endpoint, puncher, signalling, lambda: candidates, None if args.turn_tcp else allocate)
    transfers = {}

    def startTransfer(link):
        if link.peerId not in transfers:
            transfers[link.peerId] = Transfer(reactor, link, identity.nodeId, args.bytes, None)

    connector.linkObservers.append(startTransfer)
    observed = await signalling.start()
    emit({"event": "ready", "node_id": identity.nodeIdHex, "observed": list(observed), "candidates": candidates})

    async def connect(peerHex):
        start = reactor.seconds()
        try:
            link, path = await connector.connect(bytes.fromhex(peerHex))
        except Exception as e:
            emit({"event": "connected", "peer": peerHex, "connected": False, "error": str(e)})
            return
        if args.turn_tcp or (path == "direct" and link.peerAddress[0] == args.relay[0]):
            path = "turn-tcp"
        emit({"event": "connected", "peer": peerHex, "connected": True, "path": path,
              "connect_time_s": round(reactor.seconds() - start, 3), "address": list(link.peerAddress)})

    class Commands(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line):
            try:
                cmd = json.loads(line)
            except ValueError:
                return
            if cmd.get("cmd") == "allow":
                connector.allowPeer(bytes.fromhex(cmd["peer"]))
                emit({"event": "allowed", "peer": cmd["peer"]})
            elif cmd.get("cmd") == "connect":
                defer.Deferred.fromCoroutine(connect(cmd["peer"]))
            elif cmd.get("cmd") == "status":
                emit({"event": "status", "link": dict(endpoint.counters), "punch": puncher.counters,
                      "mux": mux.counters(), "connector": connector.counters, "signalling": signalling.counters,
                      "turn_tcp": relayed.counters if args.turn_tcp else None,
                      "turn_tcp_stream": relayed.stream.state.value if args.turn_tcp else None})

        def connectionLost(self, reason):
            if reactor.running:
                reactor.stop()

    stdio.StandardIO(Commands())


def main(argv=None):
    parser = argparse.ArgumentParser(prog="matrixagent")
    sub = parser.add_subparsers(dest="role", required=True)
    p = sub.add_parser("peer")
    p.add_argument("--relay", required=True, type=parseIPPort)
    p.add_argument("--relay-id", required=True)
    p.add_argument("--turn", required=True, type=parseIPPort)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--bytes", type=int, default=1 << 20)
    p.add_argument("--punch-deadline", type=float, default=2.5)
    p.add_argument("--family", type=int, choices=(4, 6), default=4, help="the address family of the peer's socket")
    p.add_argument("--turn-user", help="static TURN long-term credentials (e.g. coturn's); default: ask the relay")
    p.add_argument("--turn-password")
    p.add_argument("--turn-tcp", type=parseIPPort, help="UDP is blocked here: run on a TURN allocation over TCP to IP:PORT")
    args = parser.parse_args(argv)
    from twisted.internet import reactor


    def failed(f):
        emit({"event": "error", "error": f.getErrorMessage()})
        reactor.stop()

    reactor.callWhenRunning(lambda: defer.Deferred.fromCoroutine(runPeer(reactor, args)).addErrback(failed))
    reactor.run()


if __name__ == "__main__":
    main()
