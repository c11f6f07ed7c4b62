"""TCP segments joined into one TUN write: receive offload (GRO) done in user space.

Each packet written to a TUN is one system call and one pass of the
kernel's IP and TCP receive code; for a bulk download those writes were a
third of a mesh receiver's CPU.  A TUN opened with C{IFF_VNET_HDR} takes a
C{virtio_net_hdr} before each packet, and with it one large TCP packet
that the kernel treats as what its own GRO would have built from the
segments (C{gso_size} says where they were cut).

L{coalesce} joins runs of consecutive IPv4 TCP segments that Linux's GRO
would join too: same addresses, ports, ACK, window and options (so the
same timestamps), same TOS, TTL and DF, sequence numbers that follow each
other, every payload as long as the first (an even size) but the last,
which may be shorter and may carry PSH; nothing but ACK (and PSH on the
last) set, no IP options, no fragments.  Everything else is written as it
came, in order.

The end-to-end TCP checksum is kept: the joined segment carries a complete
checksum, derived from the segments' own checksums and headers without
reading their payloads (in one's complement arithmetic each valid
segment's pseudo-header, header and payload sum to zero), and the header
asks the kernel for no shortcut (no C{NEEDS_CSUM}, no C{DATA_VALID}), so it
checks the whole joined segment as it would a packet from the wire.  A
segment damaged anywhere on its way (the exit's internet side is not
authenticated) makes the run's checksum wrong and the kernel drops the
run; TCP sends it again.
"""

import struct

from meshvpn.tun.packets import checksum

VNET_HDR_LEN = 10
PLAIN_HDR = bytes(VNET_HDR_LEN)  # no offload: the kernel checks the packet as it is
_VNET_HDR = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
_NEEDS_CSUM = 1
_GSO_TCPV4 = 1
_ACK, _ACK_PSH = 0x10, 0x18
MAX_JOINED = 65535  # the IPv4 total length field


def _segment(p):
    """
    @return: C{(signature, seq, header length, payload length)} of a
        joinable IPv4 TCP segment, or C{None}.
    """
    n = len(p)
    if n < 41 or p[0] != 0x45 or p[9] != 6 or p[6] & 0x3F or p[7] or (p[2] << 8 | p[3]) != n:
        return None
    thl = (p[32] >> 4) * 4
    if thl < 20 or 20 + thl >= n or p[33] not in (_ACK, _ACK_PSH):
        return None
    # Addresses and ports, ACK and data offset, window, urgent pointer and options; TOS, DF, TTL.
    sig = p[12:24] + p[28:33] + p[34:36] + p[38:20 + thl] + bytes((p[1], p[6], p[8]))
    return sig, int.from_bytes(p[24:28], "big"), 20 + thl, n - 20 - thl


def coalesce(packets):
    """
    @param packets: IP packets (C{bytes}) in the order they are to be written.
    @return: a list of writes, each a list of buffers for C{os.writev}
        starting with its C{virtio_net_hdr}; C{(writes, packets joined)}.
    """
    writes = []
    joined = 0
    run = []  # segments of the open run
    sig = seq = hlen = size = total = None
    for p in packets:
        info = _segment(p)
        if info is not None and run:
            s, q, h, length = info
            if s == sig and q == seq and length <= size and total + length <= MAX_JOINED:
                run.append(p)
                seq = (seq + length) & 0xFFFFFFFF
                total += length
                if length < size or p[33] == _ACK_PSH:
                    joined += _flush(writes, run, hlen, size, total)
                    run = []
                continue
        if run:
            joined += _flush(writes, run, hlen, size, total)
            run = []
        if info is None:
            writes.append([PLAIN_HDR, p])
            continue
        sig, seq, hlen, size = info
        total = hlen + size
        seq = (seq + size) & 0xFFFFFFFF
        if p[33] == _ACK_PSH or size & 1:
            # An odd size would put the next payload off the 16-bit words the checksum adds.
            writes.append([PLAIN_HDR, p])
        else:
            run = [p]
    if run:
        joined += _flush(writes, run, hlen, size, total)
    return writes, joined


def _words(data):
    """The one's complement sum of C{data}'s 16-bit words (even length), as a residue mod 0xFFFF (2**16 = 1 there)."""
    return int.from_bytes(data, "big") % 0xFFFF


def _flush(writes, run, hlen, size, total):
    first = run[0]
    if len(run) == 1:
        writes.append([PLAIN_HDR, first])
        return 0
    ip = bytearray(first[:20])
    ip[2:4] = total.to_bytes(2, "big")
    ip[10:12] = b"\0\0"
    ip[10:12] = checksum(bytes(ip)).to_bytes(2, "big")
    tcp = bytearray(first[20:hlen])
    tcp[13] = run[-1][33]  # PSH of the last segment
    tcp[16:18] = b"\0\0"
    # The joined segment's checksum from the segments' own, headers only: each valid segment's
    # pseudo-header + TCP header (with its checksum) + payload sums to 0, so the payloads sum to
    # minus the rest.  A damaged segment makes the joined checksum wrong, and the kernel, which
    # checks it in full, drops the run.
    addresses = _words(first[12:20]) + 6
    sums = sum(_words(p[20:hlen]) + len(p) for p in run) + len(run) * (addresses - 20)
    joined = (sums - addresses - (total - 20) - _words(tcp)) % 0xFFFF
    tcp[16:18] = joined.to_bytes(2, "big")
    header = _VNET_HDR.pack(0, _GSO_TCPV4, hlen, size, 0, 0)
    writes.append([header, ip, tcp, *(memoryview(p)[hlen:] for p in run)])
    return len(run)
