"""Fuzz target: a DHT datagram (dht/wire.py decode), the records a VALUE carries, and a signed answer's check."""

from meshvpn.dht import records, wire
from meshvpn.fuzz import realmsgs
from meshvpn.fuzz.target import FuzzTarget


def _run(data):
    msg = wire.decode(data)
    if msg.kind == wire.VALUE:
        for raw in msg.payload[0]:
            try:
                records.parseRecord(raw)
            except records.RecordError:
                pass
    elif msg.kind == wire.STORE:
        try:
            records.parseRecord(msg.payload)
        except records.RecordError:
            pass


def _seeds():
    me, other = realmsgs.identity(10), realmsgs.identity(11)
    key = me.identityPublicKey
    peers = [wire.Peer.of(other.identityPublicKey, bytes(8), ("198.18.0.11", 9000)),
             wire.Peer.of(realmsgs.identity(12).identityPublicKey, bytes(8), ("2001:db8::12", 9000))]
    record = records.makeRecord(me, b"relay", b"descriptor bytes", 1, realmsgs.NOW + 3600).raw
    tx = bytes(range(8))
    return [
        wire.encode(wire.PING, tx, key),
        wire.encode(wire.PONG, tx, key, ("198.18.0.7", 40000), sign=me.sign),
        wire.encode(wire.FIND_NODE, tx, key, bytes(32), flags=wire.FLAG_PROVE, padTo=200),
        wire.encode(wire.NODES, tx, key, peers),
        wire.encode(wire.FIND_VALUE, tx, key, bytes(32)),
        wire.encode(wire.VALUE, tx, key, ([record], peers), sign=me.sign),
        wire.encode(wire.STORE, tx, key, record),
        wire.encode(wire.STORE_RESULT, tx, key, wire.STORED),
        wire.encode(wire.SAMPLE, tx, key, (bytes(32), b"relay"), flags=wire.FLAG_CLIENT),
    ]


TARGET = FuzzTarget("dht-wire", "dht/wire.py decode (every DHT datagram) + records in VALUE/STORE", (wire.WireError,),
                    _run, _seeds)
