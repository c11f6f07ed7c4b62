"""`meshvpn bench datagram-link`: the per-packet cost of the datagram link, in one process.

Two endpoints handshake in memory, then one seals C{count} packets of
C{size} bytes straight into the other's receive path (parse, replay
check, decrypt, window update, delivery).  No sockets: this is the
Python + crypto cost per packet, the number that bounds a link's speed.
"""

import json
import time

from twisted.internet import task

from meshvpn.identity import NodeIdentity
from meshvpn.link.datagram import DatagramLinkEndpoint


class _Wire:
    def __init__(self):
        self.peer = None
        self.addr = None

    def sendDatagram(self, data, addr):
        self.peer.datagramReceived(data, self.addr)


def measure(count=50000, size=1200):
    clock = task.Clock()
    wa, wb = _Wire(), _Wire()
    a = DatagramLinkEndpoint(clock, NodeIdentity.generate(), wa)
    b = DatagramLinkEndpoint(clock, NodeIdentity.generate(), wb)
    wa.peer, wa.addr = b, ("198.18.0.1", 1)
    wb.peer, wb.addr = a, ("198.18.0.2", 2)
    links = []
    a.connect(b.identity.nodeId, ("198.18.0.2", 2)).addCallback(links.append)
    received = [0]
    (inbound,) = b.links()
    inbound.setPacketReceiver(lambda data: received.__setitem__(0, received[0] + 1))
    link = links[0]
    payload = b"\0" * size
    start = time.perf_counter()
    for _ in range(count):
        link.sendPacket(payload)
    elapsed = time.perf_counter() - start
    return {
        "packets": count,
        "packet_bytes": size,
        "received": received[0],
        "us_per_packet": round(elapsed / count * 1e6, 2),
        "mbit_per_s": round(count * size * 8 / elapsed / 1e6, 1),
    }


def run(args, out):
    result = measure(args.count, args.size)
    if args.json:
        out(json.dumps(result))
    else:
        out(f"{result['packets']} packets of {result['packet_bytes']} B: {result['us_per_packet']} us each "
            f"(seal + parse + open + replay window), {result['mbit_per_s']} Mbit/s on one core")
    return 0 if result["received"] == result["packets"] else 1
