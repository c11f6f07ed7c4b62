"""Exercise every TURN operation of our client against a server, for interop tests (e.g. coturn).

``python -m meshvpn.tools.turncheck --server IP:PORT --user U --password P --peer IP:PORT``
allocates (``--family 6``: an IPv6 relayed address, RFC 8656 REQUESTED-ADDRESS-FAMILY), refreshes, permits the peer, sends through a SEND indication and
through a bound channel (the peer must echo: ``--echo PORT`` runs such a
peer), checks both echoes came back (as a DATA indication, then as
ChannelData), releases, and prints one JSON object with what happened.
"""

import argparse
import json
import socket
import sys

from twisted.internet import defer, task

from meshvpn.hostport import parseIPPort
from meshvpn.nat import stun
from meshvpn.nat.endpoint import StunEndpoint
from meshvpn.nat.turn_client import TurnAllocation
from meshvpn.udpmux import STUN_BYTES, DatagramMultiplexer


async def check(reactor, server, user, password, peer, family=None):
    mux = DatagramMultiplexer()
    port = reactor.listenUDP(0, mux, interface="::" if ":" in server[0] else "")
    ep = StunEndpoint(reactor, mux.sendDatagram)
    mux.register("stun", STUN_BYTES, ep, accept=stun.isStun)
    alloc = TurnAllocation(reactor, ep, mux.sendDatagram, server, user, password)
    got = []
    alloc.setReceiver(lambda data, addr: got.append((data, addr)))
    result = {}

    async def echo(payload):
        before = len(got)
        alloc.send(peer, payload)
        for _ in range(40):
            if len(got) > before:
                break
            await task.deferLater(reactor, 0.05, lambda: None)
        return [d for d, a in got[before:] if a == peer] == [payload]

    await alloc.allocate(600, family=family)
    alloc.registerChannelData(mux)
    result.update(relayed=list(alloc.relayedAddress), mapped=list(alloc.mappedAddress), lifetime=alloc.lifetime)
    result["refreshed_lifetime"] = await alloc.refresh(300)
    await alloc.createPermission(peer)
    result["echo_via_indication"] = await echo(b"via SEND/DATA indications")
    result["channel"] = await alloc.channelBind(peer)
    result["echo_via_channel"] = await echo(b"via ChannelData")
    await alloc.release()
    result["released"] = alloc.released
    result["counters"] = dict(alloc.counters)
    await port.stopListening()
    return result


def echoServer(port, family=4, host=None):
    """A plain UDP echo, the TURN peer (on C{host}: its replies must come from the address permitted)."""
    s = socket.socket(socket.AF_INET6 if family == 6 else socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host or ("::" if family == 6 else "0.0.0.0"), port))
    print(json.dumps({"event": "ready"}), flush=True)
    while True:
        data, addr = s.recvfrom(65535)
        s.sendto(data, addr)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="turncheck")
    parser.add_argument("--server", type=parseIPPort)
    parser.add_argument("--user")
    parser.add_argument("--password")
    parser.add_argument("--peer", type=parseIPPort)
    parser.add_argument("--family", type=int, choices=(4, 6), help="the relayed address's family (default: the server's)")
    parser.add_argument("--echo", type=int, help="run a UDP echo peer on this port instead (of --family, default 4)")
    parser.add_argument("--echo-host", help="the echo peer's address (default: any)")
    args = parser.parse_args(argv)
    if args.echo:
        return echoServer(args.echo, args.family or 4, args.echo_host)

    def go(reactor):
        d = defer.Deferred.fromCoroutine(check(reactor, args.server, args.user, args.password, args.peer, args.family))
        d.addCallback(lambda r: print(json.dumps(r), flush=True))
        return d

    task.react(go)


if __name__ == "__main__":
    sys.exit(main())
