"""Fuzz target: DHT datagrams carried on circuits, at both ends (onion/dhtmsgs.py, onion/dhtrelay.py, client/dhtcircuits.py).

The input is a script of steps for a relay's carrier with three circuits
and a client's leg, interleaved as the network would: DHT_SEND pieces from
a circuit's origin, datagrams arriving at the relay's DHT socket, DHT_RECEIVED
and DHT_REFUSED pieces reaching the client, datagrams the client sends, time
passing.  The only error is the protocol's own (C{CellError}: that circuit is
destroyed); the carrier's outstanding answers and learned addresses and the
client's expected answers stay within their bounds, and what comes back to a
circuit is never longer than the DHT's 1400 bytes.
"""

import collections

from twisted.internet.task import Clock

from meshvpn.dht import wire
from meshvpn.fuzz.target import FuzzTarget
from meshvpn.onion.cells import CellError, RelayCommand

ADDRS = [("198.18.0.7", 9000), ("198.18.0.8", 9000), ("2001:db8::1", 9000), ("198.18.200.1", 53)]


class _Circuit:
    maxData = 488

    def __init__(self):
        self.back = []

    def sendRelay(self, command, streamId, data):
        if len(data) > self.maxData:
            raise AssertionError(f"a relay body of {len(data)} bytes")
        self.back.append((command, data))
        return True


def _parts():
    from meshvpn.client.dhtcircuits import _Leg
    from meshvpn.onion.dhtrelay import DatagramRelayLimits, DHTDatagramRelay

    clock = Clock()
    clock.advance(1_800_000_000)
    sent = []
    limits = DatagramRelayLimits(pendingPerCircuit=8, pending=16, learned=32, perCircuitBurst=20, burst=40)
    carrier = DHTDatagramRelay(clock, lambda d, a: sent.append((d, a)), set(ADDRS[:3]).__contains__, limits)
    delivered = []
    transport = type("T", (), {})()
    transport.counters = collections.Counter()
    transport.deliver = lambda data, addr: delivered.append((data, addr))
    leg = _Leg(transport, _Circuit(), [])
    return clock, carrier, sent, leg, delivered


def _run(data):
    clock, carrier, sent, leg, delivered = _parts()
    circuits = [_Circuit() for _ in range(3)]
    pos = 0
    while pos + 4 <= len(data):
        op, which, n = data[pos], data[pos + 1], int.from_bytes(data[pos + 2:pos + 4], "big") & 0x7FF
        body = data[pos + 4:pos + 4 + n]
        pos += 4 + n
        kind = op % 6
        try:
            if kind == 0:
                carrier.received(circuits[which % 3], body)
            elif kind == 1 and body:
                carrier.datagramReceived(body, ADDRS[which % len(ADDRS)])
            elif kind == 2:
                leg.receive(RelayCommand.DHT_RECEIVED, body)
            elif kind == 3:
                leg.receive(RelayCommand.DHT_REFUSED, body)
            elif kind == 4:
                leg.expect(ADDRS[which % len(ADDRS)], clock.seconds() + 10)
            else:
                clock.advance(which / 16)
                leg.expire(clock.seconds())
        except CellError:
            pass
        if kind == 5 and which & 0x80:
            carrier.circuitClosed(circuits[which % 3])
        status = carrier.status()
        if status["pending"] > carrier.limits.pending or status["learned"] > carrier.limits.learned:
            raise AssertionError(f"carrier past its bounds: {status}")
        if any(len(d) > wire.MAX_DATAGRAM for d, _ in delivered):
            raise AssertionError("a datagram longer than the DHT's cap delivered")
        if leg.outstanding() < 0:
            raise AssertionError("negative outstanding answers")


def _seeds():
    from meshvpn.onion.dhtmsgs import encodePieces, encodeRefusal

    request = wire.encode(wire.FIND_NODE, b"T" * 8, bytes(32), b"\x01" * 32, wire.FLAG_CLIENT)
    peers = [wire.Peer.of(bytes([i]) * 32, bytes(8), (f"198.18.1.{i}", 9000)) for i in range(1, 21)]
    answer = wire.encode(wire.NODES, b"T" * 8, bytes(32), peers)

    def step(op, which, body):
        return bytes([op, which]) + len(body).to_bytes(2, "big") + body

    script = b"".join(step(0, 0, p) for p in encodePieces(request, ADDRS[0], 488))
    script += step(1, 0, answer)
    script += step(4, 0, b"")
    script += b"".join(step(2, 0, p) for p in encodePieces(answer, ADDRS[0], 488))
    script += step(3, 0, encodeRefusal(2))
    return [script]


TARGET = FuzzTarget("dht-circuit", "onion/dhtrelay.py + client/dhtcircuits.py: DHT datagrams carried on circuits",
                    (), _run, _seeds)
