"""Fuzz target: TURN on a stream (nat/turn_stream.py): the deframer and the opening proof's layouts."""

from meshvpn.fuzz.target import FuzzTarget
from meshvpn.nat import turn_stream as ts


def _run(data):
    kind, body = data[:1], data[1:]
    if kind == b"h":
        ts.parseHello(body)
    elif kind == b"p":
        ts.parseProof(body)
    elif kind == b"c":
        ts.parseCredsFrame(body)
    else:
        d = ts.Deframer(maxFrame=4096)
        # Cut where the input says, so partial frames are exercised too.
        step = 1 + (data[0] % 13 if data else 0)
        for i in range(0, len(body), step):
            d.feed(body[i : i + step])
        assert d.buffered <= 4096 + step


def _seeds():
    stunMsg = b"\x00\x01\x00\x04\x21\x12\xa4\x42" + bytes(12) + b"\x80\x22\x00\x00"
    return [
        b"d" + stunMsg + ts.padChannelData(b"\x40\x00\x00\x03abc"),
        b"h" + ts.encodeHello(bytes(32), bytes(32), bytes(64)),
        b"p" + bytes(96),
        b"c" + ts.encodeCredsFrame(600, "1796000600:abcd", "c2VjcmV0"),
    ]


TARGET = FuzzTarget("turn-stream", "nat/turn_stream.py Deframer + hello/proof/credentials (TURN over TCP for UDP-blocked hosts)",
                    (ts.StreamFrameError,), _run, _seeds)
