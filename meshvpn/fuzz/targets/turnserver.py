"""Fuzz target: the node's STUN endpoint with its STUN server and TURN server behind it (nat/).

An input is a short conversation: datagrams from a few sources, each
either STUN (to the endpoint) or TURN ChannelData.  The harness holds the
credentials of one static TURN user and re-signs any MESSAGE-INTEGRITY
(and FINGERPRINT) the fuzzer left in, with a fixed nonce key and clock, so
the fuzzer gets past authentication into ALLOCATE, REFRESH,
CREATE-PERMISSION, CHANNEL-BIND and SEND instead of only meeting a 401.
Relayed sockets are in-memory.  Nothing may escape the endpoint: a server
that raises on a datagram would drop every other client's.
"""

import hashlib
import hmac
import struct
import zlib

from twisted.internet.task import Clock

from meshvpn.fuzz.target import FuzzTarget
from meshvpn.nat import stun
from meshvpn.nat.endpoint import StunEndpoint
from meshvpn.nat.server import PRIMARY, StunServer
from meshvpn.nat.turn_server import TurnServer

_KEY = stun.longTermKey("alice", "meshvpn", "secret")
_NONCE_KEY = bytes(16)
_START = 1000
_SOURCES = [("198.18.0.7", 40000), ("198.18.0.8", 40001), ("2001:db8::7", 40002), ("198.18.0.7", 40003)]


class _Port:
    def __init__(self, port):
        self._port = port

    def getHost(self):
        class Host:
            host, port = "198.18.0.1", self._port
        return Host()

    def write(self, data, addr):
        pass

    def stopListening(self):
        pass


def _listenUDP(port, protocol, interface=""):
    # one process runs many inputs: stay inside the port range
    _listenUDP.next = 50000 + (_listenUDP.next - 49999) % 15000
    return _Port(_listenUDP.next)


_listenUDP.next = 50000


def nonce(seconds=_START):
    stamp = b"%x" % seconds
    return stamp + b"-" + hmac.new(_NONCE_KEY, stamp, hashlib.sha256).hexdigest()[:16].encode()


def _resign(raw):
    """Recompute MESSAGE-INTEGRITY and FINGERPRINT of a decodable message with the harness's key."""
    try:
        msg = stun.StunMessage.decode(raw)
    except stun.StunParseError:
        return raw
    found = msg._integrity
    if found is not None:
        pos, _ = found
        header = raw[:2] + struct.pack("!H", pos + 24 - stun.HEADER_LENGTH) + raw[4:20]
        mac = hmac.digest(_KEY, header + raw[stun.HEADER_LENGTH:pos], "sha1")
        raw = raw[: pos + 4] + mac + raw[pos + 24 :]
    if msg.hasFingerprint:
        crc = zlib.crc32(raw[:-8]) ^ stun.FINGERPRINT_XOR
        raw = raw[:-4] + struct.pack("!I", crc)
    return raw


def build():
    clock = Clock()
    clock.advance(_START)
    sent = []
    endpoint = StunEndpoint(clock, lambda data, addr: sent.append((data, addr)))
    server = StunServer(clock, {PRIMARY: (endpoint.send, ("198.18.0.1", 3478))})
    endpoint.setMethodHandler(stun.BINDING, server.requestReceived)
    turn = TurnServer(clock, endpoint, endpoint.send, "198.18.0.1", users={"alice": "secret"}, listenUDP=_listenUDP)
    turn._nonceKey = _NONCE_KEY
    return clock, endpoint, turn, sent


def _run(data):
    clock, endpoint, turn, _ = build()
    pos = 0
    while pos + 3 <= len(data):
        control, n = data[pos], int.from_bytes(data[pos + 1 : pos + 3], "big")
        chunk = data[pos + 3 : pos + 3 + n]
        pos += 3 + n
        source = _SOURCES[control & 3]
        if control & 4:
            turn.datagramReceived(chunk, source)
        else:
            endpoint.datagramReceived(_resign(chunk), source)
        if control & 8:
            clock.advance(300)
    turn.stop()


def frame(datagram, control=0):
    return bytes([control]) + len(datagram).to_bytes(2, "big") + datagram


def _request(method, *attributes, tid=None):
    msg = stun.StunMessage(method, stun.REQUEST, tid or bytes([method]) * 12)
    for attrType, value in attributes:
        msg.add(attrType, value)
    return msg


def _seeds():
    auth = ((stun.USERNAME, b"alice"), (stun.REALM, b"meshvpn"), (stun.NONCE, nonce()))
    allocate = _request(stun.ALLOCATE, (stun.REQUESTED_TRANSPORT, bytes([17, 0, 0, 0])), *auth).encode(integrityKey=_KEY, fingerprint=True)
    peer = ("198.18.0.9", 7000)
    tid = bytes(range(12))
    permission = _request(stun.CREATE_PERMISSION, (stun.XOR_PEER_ADDRESS, stun.encodeXorAddress(peer, tid)), *auth,
                          tid=tid).encode(integrityKey=_KEY)
    bind = _request(stun.CHANNEL_BIND, (stun.CHANNEL_NUMBER, struct.pack("!HH", 0x4000, 0)),
                    (stun.XOR_PEER_ADDRESS, stun.encodeXorAddress(peer, tid)), *auth, tid=tid).encode(integrityKey=_KEY)
    send = stun.StunMessage(stun.SEND, stun.INDICATION, tid)
    send.add(stun.XOR_PEER_ADDRESS, stun.encodeXorAddress(peer, tid)).add(stun.DATA_ATTR, b"hello peer")
    refresh = _request(stun.REFRESH, (stun.LIFETIME, stun.encodeUint32(0)), *auth).encode(integrityKey=_KEY)
    binding = _request(stun.BINDING).encode(fingerprint=True)
    return [
        frame(binding),
        frame(_request(stun.ALLOCATE, (stun.REQUESTED_TRANSPORT, bytes([17, 0, 0, 0]))).encode()),
        frame(allocate) + frame(permission) + frame(bind) + frame(send.encode())
        + frame(struct.pack("!HH", 0x4000, 5) + b"hello\0\0\0", 4) + frame(refresh, 8),
    ]


TARGET = FuzzTarget("turn-server", "nat/endpoint.py + server.py (STUN) + turn_server.py: conversations of datagrams",
                    (), _run, _seeds)
