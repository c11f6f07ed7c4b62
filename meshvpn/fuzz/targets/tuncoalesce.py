"""Fuzz target: joining TCP segments into one TUN write (tun/coalesce.py), the packets a client writes to its TUN.

Those packets come from the network (a mesh peer, or the internet through
an exit), so any bytes may arrive.  The input is cut into packets, and
runs of well-formed TCP segments built by the harness (one in two inputs)
are mixed in, so the fuzzer reaches the joining code.  Nothing may raise:
every packet must be written exactly once, in order, either as it came or
as part of one joined write, and no joined write may exceed IPv4's length.
"""

import struct

from meshvpn.fuzz.target import FuzzTarget
from meshvpn.tun import coalesce as co
from meshvpn.tun import packets as pk

_A, _B = bytes([198, 18, 0, 80]), bytes([10, 200, 0, 2])


def _segment(seq, payload, flags=co._ACK):
    tcp = struct.pack("!HHIIBBHHH", 443, 40001, seq, 1, 5 << 4, flags, 65535, 0, 0) + payload
    return pk.ipv4Header(_A, _B, pk.PROTO_TCP, len(tcp)) + tcp


def _packets(data):
    out = []
    i = 0
    while i + 2 <= len(data):
        n = data[i] << 8 | data[i + 1]
        out.append(data[i + 2 : i + 2 + n])
        i += 2 + n
    if data[:1] and data[0] & 1:
        # a run of real segments whose sizes come from the input
        seq = int.from_bytes(data[:4].ljust(4, b"\0"), "big")
        for b in data[4:12]:
            size = (b % 8 + 1) * 2 * 50
            out.append(_segment(seq, bytes([b]) * size))
            seq = (seq + size) & 0xFFFFFFFF
    return out


def _run(data):
    packets = _packets(data)
    writes, joined = co.coalesce(packets)
    written = 0
    for w in writes:
        if len(w[0]) != co.VNET_HDR_LEN:
            raise AssertionError("a write without its virtio header")
        body = b"".join(bytes(b) for b in w[1:])
        if len(body) > co.MAX_JOINED and len(w) > 2:
            raise AssertionError(f"joined write of {len(body)} bytes")
        written += 1 if len(w) == 2 else len(w) - 3
    if written != len(packets) or not 0 <= joined <= len(packets):
        raise AssertionError(f"{len(packets)} packets in, {written} written ({joined} joined)")


def _frame(packets):
    return b"".join(len(p).to_bytes(2, "big") + p for p in packets)


def _seeds():
    run = [_segment(1000 + i * 1000, bytes([i]) * 1000) for i in range(4)]
    return [_frame(run), _frame(run + [_segment(5000, b"x" * 10, co._ACK | 0x08)]),
            b"\1\0\0\0" + bytes(range(8)), _frame([b"\x45" + bytes(39), b"\x60" + bytes(60)])]


TARGET = FuzzTarget("tun-coalesce", "tun/coalesce.py coalesce: any packets in, each written once, joined runs "
                    "within IPv4's length (what a client writes to its TUN)", (), _run, _seeds)
