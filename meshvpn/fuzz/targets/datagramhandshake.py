"""Fuzz target: the datagram link's handshake messages through their crypto (link/datagram_crypto.py).

A responder answers a parsed INIT (the peer's ephemeral key is hostile
bytes); an initiator reads a parsed RESP; a responder reads a FINISH.
Anything but the framing's or the handshake's own error is a bug.
"""

from meshvpn.fuzz import realmsgs
from meshvpn.fuzz.target import FuzzTarget
from meshvpn.link import datagram_wire as dw
from meshvpn.link.datagram_crypto import DatagramHandshakeError, HandshakeKeys

_ME = realmsgs.identity(5)


def _run(data):
    msg = dw.parse(data)
    kind = msg[0]
    if kind == dw.INIT:
        HandshakeKeys(_ME).respMessage(data, msg[2], dw.encodeRespHeader(9, msg[1], bytes(32)))
    elif kind == dw.RESP:
        keys = HandshakeKeys(_ME)
        keys.initMessage(dw.encodeInit(msg[2], keys.ephemeral.public))
        keys.readResp(msg[4], msg[5], msg[3], None)
    elif kind == dw.FINISH:
        keys = HandshakeKeys(_ME)
        keys.respMessage(dw.encodeInit(1, bytes(range(1, 33))), bytes(range(1, 33)), dw.encodeRespHeader(msg[1], 1, bytes(32)))
        keys.readFinish(msg[2], msg[3])


def _seeds():
    initiator, responder = HandshakeKeys(realmsgs.identity(6)), HandshakeKeys(_ME)
    init = dw.encodeInit(7, initiator.ephemeral.public)
    initiator.initMessage(init)
    resp = responder.respMessage(init, initiator.ephemeral.public, dw.encodeRespHeader(8, 7, responder.ephemeral.public))
    return [init, resp, dw.encodeFinishHeader(8) + bytes(dw.FINISH_LEN - dw.FINISH_HEADER_LEN)]


TARGET = FuzzTarget("datagram-handshake", "link/datagram_crypto.py INIT/RESP/FINISH through the handshake crypto",
                    (dw.LinkParseError, DatagramHandshakeError), _run, _seeds)
