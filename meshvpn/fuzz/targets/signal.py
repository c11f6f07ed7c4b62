"""Fuzz target: NAT signalling messages (nat/signal_wire.py): relay messages and the peer payloads they carry."""

from meshvpn.fuzz.target import FuzzTarget
from meshvpn.nat import signal_wire as sw


def _run(data):
    if data[:1] and data[0] in (sw.OFFER, sw.ANSWER, sw.RELAYED):
        sw.parsePeerPayload(data)
        return
    msg = sw.parseRelayMessage(data)
    if msg[0] in (sw.FORWARD, sw.DELIVER):
        sw.parsePeerPayload(msg[-1])


def _seeds():
    node = bytes(range(32))
    offer = bytes([sw.OFFER]) + bytes(8) + bytes(range(16)) + sw.encodeCandidates([("198.18.0.7", 40000), ("10.0.0.7", 40000)])
    answer = bytes([sw.ANSWER]) + bytes(8) + sw.encodeCandidates([("2001:db8::7", 40000)])
    relayed = bytes([sw.RELAYED]) + bytes(8) + sw.encodeAddress(("198.18.0.1", 50000))
    return [
        bytes([sw.REGISTER]),
        bytes([sw.REGISTERED]) + sw.encodeAddress(("198.18.0.7", 40000)),
        bytes([sw.FORWARD]) + node + offer,
        bytes([sw.DELIVER]) + node + sw.encodeAddress(("198.18.0.8", 40001)) + answer,
        bytes([sw.UNREACHABLE]) + node,
        bytes([sw.CREDS_REQUEST]),
        sw.encodeCreds(600, "1796000600:abcd", "c2VjcmV0"),
        relayed,
    ]


TARGET = FuzzTarget("signal", "nat/signal_wire.py parseRelayMessage + parsePeerPayload (signalling via NAT relays)",
                    (sw.SignalParseError,), _run, _seeds)
