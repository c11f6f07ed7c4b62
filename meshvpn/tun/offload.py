"""TUN offload: 64 KB TCP segments and unfinished checksums between the kernel and circuits.

A TUN opened with C{IFF_VNET_HDR} and told C{TUNSETOFFLOAD(TUN_F_CSUM |
TUN_F_TSO4 | TUN_F_TSO6)} hands us what a NIC with segmentation offload
would get: a local TCP sender's (or a forwarded, GRO-joined) run of
segments as one packet of up to 64 KB with a C{virtio_net_hdr} saying
where to cut it (C{gso_size}), and its TCP/UDP checksum left unfinished
(C{NEEDS_CSUM}: the field holds the pseudo-header sum, the rest is summed
from C{csum_start} by whoever sends it on).  Carried across the circuit as
one offload record (L{meshvpn.onion.packets}) and written to the far TUN
with the same header, it costs one pass through Python at each end instead
of ~40.

This module turns read headers into L{OffloadPacket}s (L{fromRead}), builds
the header to write one (L{vnetHeader}), and does in software what the
kernel would when the other side cannot take them: finishes the checksum
and cuts a segment into MSS-sized packets (L{segment}, L{plainPackets}),
exactly as Linux's GSO does (IPv4 ids counting up, PSH and FIN on the last
segment only, CWR on the first only).  Only the layouts whose header
offsets follow from the packet are kept as L{OffloadPacket}s: IPv4 (any
header length, not a fragment) or IPv6 without extension headers, carrying
TCP (or, without segmentation, UDP); anything else the kernel gives us is
finished here in software, and anything else a peer sends is dropped.
"""

import struct

from meshvpn.onion.packets import MAX_PACKET, MIN_GSO_SIZE, OFFLOAD_CSUM, OFFLOAD_TCP, OffloadPacket

VNET_HDR_LEN = 10
VNET_HDR = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
TUNSETOFFLOAD = 0x400454D0
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04
NEEDS_CSUM, DATA_VALID = 0x01, 0x02
GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_ECN = 0, 1, 4, 0x80
_TCP, _UDP = 6, 17
_FIN_PSH, _CWR = 0x09, 0x80


class OffloadError(ValueError):
    """An offloaded packet whose headers do not hold what its offload needs."""


def layout(p):
    """
    @return: C{(version, transport offset, protocol)} of a packet whose
        offload this module handles, else C{None}.
    """
    n = len(p)
    if n < 28:
        return None
    version = p[0] >> 4
    if version == 4:
        ihl = (p[0] & 15) * 4
        if ihl < 20 or (p[6] & 0x3F) or p[7] or (p[2] << 8 | p[3]) != n or p[9] not in (_TCP, _UDP):
            return None
        return 4, ihl, p[9]
    if version == 6 and n >= 48 and p[6] in (_TCP, _UDP) and (p[4] << 8 | p[5]) == n - 40:
        return 6, 40, p[6]
    return None


def _headers(p):
    """
    @return: C{(version, transport offset, protocol, end of the transport
        header)} of C{p}.  @raise OffloadError: this module cannot offload it.
    """
    info = layout(p)
    if info is None:
        raise OffloadError("not an IPv4 or IPv6 TCP/UDP packet this offload handles")
    version, at, proto = info
    return version, at, proto, _transportEnd(p, at, proto)


def _transportEnd(p, at, proto):
    """The end of the TCP/UDP header at C{at}; @raise OffloadError: it does not fit."""
    if proto == _TCP:
        if len(p) < at + 20:
            raise OffloadError("TCP header truncated")
        end = at + (p[at + 12] >> 4) * 4
        if end < at + 20 or end > len(p):
            raise OffloadError("bad TCP data offset")
        return end
    if len(p) < at + 8:
        raise OffloadError("UDP header truncated")
    return at + 8


def vnetHeader(p):
    """
    The C{virtio_net_hdr} that writes L{OffloadPacket} C{p} to a TUN.
    @raise OffloadError: its headers do not allow its offload.
    """
    version, at, proto, end = _headers(p)
    if p.offload & OFFLOAD_TCP:
        if proto != _TCP:
            raise OffloadError("segmentation of a non-TCP packet")
        return VNET_HDR.pack(NEEDS_CSUM, GSO_TCPV4 if version == 4 else GSO_TCPV6, end, p.gsoSize, at, 16)
    return VNET_HDR.pack(NEEDS_CSUM, GSO_NONE, end, 0, at, 16 if proto == _TCP else 6)


def _sum(data):
    """The one's complement sum of C{data} as a residue mod 0xFFFF (a 16-bit word's 2**16 is 1 there)."""
    if len(data) & 1:
        data = bytes(data) + b"\0"
    return int.from_bytes(data, "big") % 0xFFFF


def _fold(residue, udp):
    """The checksum field for a one's complement sum with C{residue}."""
    c = 0xFFFF - residue if residue else 0
    return 0xFFFF if udp and c == 0 else c


def _finish(buf, start, offset, udp):
    """Finish in place an unfinished checksum: the field holds the pseudo-header sum, sum all from C{start}."""
    c = _fold(_sum(memoryview(buf)[start:]), udp)
    buf[start + offset:start + offset + 2] = c.to_bytes(2, "big")


def fromRead(raw, out):
    """
    One read of a TUN with offload (header and packet): appended to C{out}
    as C{bytes}, as an L{OffloadPacket}, or as the plain packets it is cut
    into when this module does not carry its layout.
    @return: the number of packets dropped (0, or 1 for a header the kernel should never give).
    """
    flags, gsoType = raw[0], raw[1]
    if not flags & NEEDS_CSUM and gsoType == GSO_NONE:
        out.append(raw[VNET_HDR_LEN:])
        return 0
    _, _, _, gsoSize, start, offset = VNET_HDR.unpack_from(raw)
    p = raw[VNET_HDR_LEN:]
    info = layout(p)
    kind = OFFLOAD_CSUM | (OFFLOAD_TCP if gsoType != GSO_NONE else 0)
    if (info is not None and flags & NEEDS_CSUM and gsoType in (GSO_NONE, GSO_TCPV4, GSO_TCPV6)
            and start == info[1] and offset == (16 if info[2] == _TCP else 6) and len(p) <= MAX_PACKET
            and (gsoType == GSO_NONE or (info[2] == _TCP and gsoSize >= MIN_GSO_SIZE
                                         and gsoType == (GSO_TCPV4 if info[0] == 4 else GSO_TCPV6)))):
        out.append(OffloadPacket(p, kind, gsoSize if gsoType != GSO_NONE else 0))
        return 0
    if gsoType == GSO_NONE:
        if start + offset + 2 > len(p):
            return 1
        buf = bytearray(p)
        _finish(buf, start, offset, offset == 6)
        out.append(bytes(buf))
        return 0
    try:
        out.extend(segment(OffloadPacket(p, kind, gsoSize)))
    except OffloadError:
        return 1
    return 0


def segment(p):
    """
    The plain packets an L{OffloadPacket} stands for, checksums complete, as
    Linux's GSO would cut it.
    @raise OffloadError: its headers do not allow its offload.
    """
    version, at, proto, end = _headers(p)
    if not p.offload & OFFLOAD_TCP or len(p) - end <= p.gsoSize:
        if proto != _TCP and p.offload & OFFLOAD_TCP:
            raise OffloadError("segmentation of a non-TCP packet")
        buf = bytearray(p)
        _finish(buf, at, 16 if proto == _TCP else 6, proto == _UDP)
        return [bytes(buf)]
    if proto != _TCP:
        raise OffloadError("segmentation of a non-TCP packet")
    mss = p.gsoSize
    if mss <= 0:
        raise OffloadError("segmentation with gso_size 0")
    ip = bytearray(p[:at])
    tcp = bytearray(p[at:end])
    flags = tcp[13]
    seq = int.from_bytes(tcp[4:8], "big")
    ident = (ip[4] << 8 | ip[5]) if version == 4 else 0
    addresses = _sum(p[12:20]) if version == 4 else _sum(p[8:40])
    payload = memoryview(p)[end:]
    n = len(payload)
    out = []
    for i, off in enumerate(range(0, n, mss)):
        chunk = payload[off:off + mss]
        last = off + mss >= n
        length = end - at + len(chunk)
        if version == 4:
            ip[2:4] = (at + length).to_bytes(2, "big")
            ip[4:6] = ((ident + i) & 0xFFFF).to_bytes(2, "big")
            ip[10:12] = b"\0\0"
            ip[10:12] = _fold(_sum(ip), False).to_bytes(2, "big")
        else:
            ip[4:6] = length.to_bytes(2, "big")
        tcp[4:8] = ((seq + off) & 0xFFFFFFFF).to_bytes(4, "big")
        tcp[13] = flags & ~(0 if last else _FIN_PSH) & ~(0 if i == 0 else _CWR)
        tcp[16:18] = b"\0\0"
        tcp[16:18] = _fold((addresses + _TCP + length + _sum(tcp) + _sum(chunk)) % 0xFFFF, False).to_bytes(2, "big")
        out.append(b"".join((ip, tcp, chunk)))
    return out


def plainPackets(packets):
    """C{packets} with every L{OffloadPacket} replaced by the plain packets it stands for (a malformed one dropped)."""
    if not any(type(p) is OffloadPacket for p in packets):
        return packets
    out = []
    for p in packets:
        if type(p) is OffloadPacket:
            try:
                out.extend(segment(p))
            except OffloadError:
                pass
        else:
            out.append(p)
    return out


def segmentPayloadSize(p):
    """The largest IP packet C{p} becomes on the wire: itself, or one full segment of an offloaded TCP segment."""
    if type(p) is OffloadPacket and p.offload & OFFLOAD_TCP:
        info = layout(p)
        if info is not None:
            try:
                return min(len(p), _transportEnd(p, info[1], info[2]) + p.gsoSize)
            except OffloadError:
                pass
    return len(p)
