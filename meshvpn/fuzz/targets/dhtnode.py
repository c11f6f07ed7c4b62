"""Fuzz target: a DHT node (dht/rpc.py DHTNode) answering and reading datagrams from several sources.

An input is a conversation: datagrams framed like the turn-server
target's, from a few addresses, with the clock moved on between some.  The
node has a bootstrap and a ping of its own outstanding, with transaction ids
the fuzzer can guess (0, 1, 2, ...), so answers reach the response
handlers too.  Proof of work is off (0 bits) so contacts are not all
dropped at the door.  A node must never raise on what a peer sends.
"""

import itertools

from twisted.internet.task import Clock

from meshvpn.dht import records, wire
from meshvpn.dht.records import RecordStore
from meshvpn.dht.rpc import DHTConfig, DHTNode
from meshvpn.fuzz import realmsgs
from meshvpn.fuzz.target import FuzzTarget

_ME = realmsgs.identity(20)
_PEER = realmsgs.identity(21)
_SOURCES = [("198.18.0.21", 9000), ("198.18.0.22", 9000), ("198.19.0.23", 9000), ("198.18.0.21", 9001)]


def build():
    clock = Clock()
    clock.advance(realmsgs.NOW)
    sent = []
    counter = itertools.count()
    node = DHTNode(clock, _ME, lambda data, addr: sent.append((data, addr)), RecordStore(),
                   config=DHTConfig(powBits=0), txid=lambda: next(counter).to_bytes(8, "big"))
    return clock, node, sent


def _run(data):
    clock, node, _ = build()
    # its own requests in flight: a bootstrap (FIND_NODE to a known address) and a ping
    node.bootstrap([_SOURCES[0]]).addErrback(lambda f: None)
    node.ping(_SOURCES[1]).addErrback(lambda f: None)
    pos = 0
    while pos + 3 <= len(data):
        control, n = data[pos], int.from_bytes(data[pos + 1 : pos + 3], "big")
        chunk = data[pos + 3 : pos + 3 + n]
        pos += 3 + n
        node.datagramReceived(chunk, _SOURCES[control & 3])
        if control & 4:
            clock.advance(1)
        if control & 8:
            clock.advance(600)
    node.stop()
    clock.advance(3600)


def frame(datagram, control=0):
    return bytes([control]) + len(datagram).to_bytes(2, "big") + datagram


def _seeds():
    key = _PEER.identityPublicKey
    record = records.makeRecord(_PEER, b"relay", b"a descriptor", 1, realmsgs.NOW + 3600).raw
    peers = [wire.Peer.of(realmsgs.identity(22).identityPublicKey, bytes(8), ("198.18.0.22", 9000))]
    tx = lambda i: i.to_bytes(8, "big")  # noqa: E731
    requests = [
        wire.encode(wire.PING, bytes(8), key),
        wire.encode(wire.FIND_NODE, bytes(8), key, bytes(32), flags=wire.FLAG_PROVE),
        wire.encode(wire.FIND_VALUE, bytes(8), key, records.ownedKey(_PEER.nodeId, b"relay")),
        wire.encode(wire.STORE, bytes(8), key, record),
        wire.encode(wire.SAMPLE, bytes(8), key, (bytes(32), b"relay")),
    ]
    # the bootstrap's PING is tx 0 to source 0, the ping tx 1 to source 1; then the bootstrap's lookup
    answers = [
        frame(wire.encode(wire.PONG, tx(0), key, ("198.18.0.20", 9000), sign=_PEER.sign), 0),
        frame(wire.encode(wire.PONG, tx(1), realmsgs.identity(22).identityPublicKey, ("198.18.0.20", 9000)), 1),
        frame(wire.encode(wire.NODES, tx(2), key, peers), 4),
        frame(wire.encode(wire.VALUE, tx(3), key, ([record], peers)), 4),
    ]
    return [b"".join(frame(r, i & 3) for i, r in enumerate(requests)),
            b"".join(answers) + frame(requests[3], 8)]


TARGET = FuzzTarget("dht-node", "dht/rpc.py DHTNode: conversations of DHT datagrams (requests and answers)",
                    (), _run, _seeds)
