"""Fuzz target: a datagram link packet's framing (link/datagram_wire.py parse), as the node's UDP socket hands it up."""

from meshvpn.fuzz.target import FuzzTarget
from meshvpn.link import datagram_wire as dw


def _run(data):
    dw.parse(data)


def _seeds():
    eph = bytes(range(32))
    return [
        dw.encodeInit(7, eph),
        dw.encodeCookie(7, bytes(dw.COOKIE_LEN)),
        dw.encodeRespHeader(8, 7, eph) + bytes(dw.RESP_LEN - dw.RESP_HEADER_LEN),
        dw.encodeFinishHeader(8) + bytes(dw.FINISH_LEN - dw.FINISH_HEADER_LEN),
        dw.encodeDataHeader(8, 1) + bytes(530),
    ]


TARGET = FuzzTarget("datagram", "link/datagram_wire.py parse (every datagram-link packet)", (dw.LinkParseError,),
                    _run, _seeds)
