"""Fuzz target: packet mode's offload records and what an edge does with them (onion/packets.py, tun/offload.py).

With the first byte's high bit clear, the bytes stand for a circuit's
PACKET bodies on a circuit with FLOW_GSO: the first byte chooses where the
stream is cut into cell bodies, the rest is fed to a L{PacketReader} with
offload (a hostile far end chooses every byte).  Each packet it yields goes where an edge sends it: an
L{OffloadPacket} gets its virtio header built and is cut in software (both
may refuse it with L{OffloadError}, never anything else), and the cut
packets must be plain, within 64 KB.  With the high bit set, the rest is
one TUN read with its virtio header (L{fromRead}), which may keep, finish,
cut or drop it but never raises.  The reader's buffer stays below one record and one cell.
"""

import struct

from meshvpn.fuzz.target import FuzzTarget
from meshvpn.onion.cells import RELAY_DATA_LEN, CellError
from meshvpn.onion.packets import OFFLOAD_CSUM, OFFLOAD_TCP, OffloadPacket, PacketReader, packetRecords
from meshvpn.tun import offload as ol
from meshvpn.tun import packets as pk


def _run(data):
    if not data:
        return
    stream = data[1:]
    if data[0] & 0x80:
        out = []
        if ol.fromRead(stream.ljust(ol.VNET_HDR_LEN + 1, b"\0"), out) not in (0, 1):
            raise AssertionError("fromRead drops one read at most")
        for p in ol.plainPackets(out):
            if type(p) is not bytes:
                raise AssertionError("a cut packet is not plain")
        return
    size = min((data[0] & 0x7F) * 4 + 1, RELAY_DATA_LEN)
    reader = PacketReader(offload=True)
    for i in range(0, len(stream), size):
        packets = reader.feed(stream[i:i + size])
        if len(reader._buf) > 7 + 65535 + size:
            raise AssertionError(f"reader holds {len(reader._buf)} bytes")
        for p in packets:
            if type(p) is OffloadPacket:
                try:
                    ol.vnetHeader(p)
                    pieces = ol.segment(p)
                except ol.OffloadError:
                    continue
                if any(type(q) is not bytes or not 0 < len(q) <= 65535 for q in pieces):
                    raise AssertionError("a cut packet is not plain")


def _tcp(payload, partial=True):
    a, b = bytes([198, 18, 0, 80]), bytes([10, 200, 0, 2])
    tcp = bytearray(struct.pack("!HHIIBBHHH", 443, 40001, 1, 1, 5 << 4, 0x10, 65535, 0, 0) + payload)
    pseudo = a + b + struct.pack("!BBH", 0, 6, len(tcp))
    s = sum(struct.unpack(f"!{len(pseudo) // 2}H", pseudo))
    s = (s & 0xFFFF) + (s >> 16)
    tcp[16:18] = s.to_bytes(2, "big") if partial else pk.checksum(pseudo + bytes(tcp)).to_bytes(2, "big")
    return pk.ipv4Header(a, b, pk.PROTO_TCP, len(tcp)) + bytes(tcp)


def _seeds():
    big = OffloadPacket(_tcp(b"x" * 4000), OFFLOAD_CSUM | OFFLOAD_TCP, 1400)
    small = OffloadPacket(_tcp(b"y" * 10), OFFLOAD_CSUM)
    plain = _tcp(b"z" * 100, partial=False)
    return [bytes([0x7F]) + packetRecords([big, plain, small]),
            bytes([30]) + packetRecords([small]),
            b"\x80" + ol.VNET_HDR.pack(ol.NEEDS_CSUM, ol.GSO_TCPV4, 40, 1400, 20, 16) + big,
            b"\x80" + ol.VNET_HDR.pack(ol.NEEDS_CSUM | ol.DATA_VALID, ol.GSO_NONE, 40, 0, 20, 16) + small]


TARGET = FuzzTarget("tun-offload", "onion/packets.py offload records (PacketReader with FLOW_GSO) and tun/offload.py "
                    "(virtio header, software segmentation, TUN reads with a virtio header): what a far circuit end "
                    "and a TUN hand an edge", (CellError,), _run, _seeds)
