"""IPv4 packets as the packet exit and the client TUN see them: strict parsing,
address rewriting with checksum fix-up, and the ICMP errors we send back.

Every packet here came from someone else (an app on the client, a circuit's
origin, a host on the internet), so the parser checks each length field
against the bytes actually present and raises L{PacketError} on anything
malformed; callers drop that one packet.  Nothing is allocated beyond the
packet itself, and only the headers we act on are read: the IPv4 header,
then the TCP/UDP ports or the ICMP type of a first fragment.

Rewriting a source or destination uses the incremental checksum update of
RFC 1624, so a packet is copied once and its payload never re-summed.
"""

import struct

from meshvpn.errors import MeshVPNError

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_NAMES = {PROTO_ICMP: "icmp", PROTO_TCP: "tcp", PROTO_UDP: "udp"}

ICMP_ECHO_REPLY = 0
ICMP_UNREACH = 3
ICMP_ECHO = 8
ICMP_TIME_EXCEEDED = 11
UNREACH_PORT = 3
UNREACH_FRAG_NEEDED = 4
UNREACH_ADMIN_PROHIBITED = 13
ICMP_ERRORS = (ICMP_UNREACH, ICMP_TIME_EXCEEDED, 4, 5, 12)


class PacketError(MeshVPNError):
    """A malformed IP packet (the message says what is wrong; never the payload)."""


class IPv4:
    """
    The fields of one IPv4 packet the exit and the client act on.

    @ivar sport / dport: TCP/UDP ports, or C{None} (other protocols, later fragments).
    @ivar icmpType: the ICMP type, or C{None}.
    """

    __slots__ = ("ihl", "total", "proto", "src", "dst", "fragOffset", "moreFragments", "dontFragment",
                 "sport", "dport", "icmpType")

    def __repr__(self):
        return f"<IPv4 {PROTO_NAMES.get(self.proto, self.proto)} {ipStr(self.src)}:{self.sport} -> {ipStr(self.dst)}:{self.dport}>"


def ipStr(raw):
    return "%d.%d.%d.%d" % tuple(raw)


def ipBytes(text):
    parts = text.split(".")
    if len(parts) != 4:
        raise ValueError(f"not an IPv4 address: {text!r}")
    return bytes(int(p) for p in parts)


def parseIPv4(packet):
    """
    @param packet: C{bytes}, one whole IPv4 packet (as a TUN reads it).
    @return: an L{IPv4}.
    @raise PacketError: not IPv4, truncated, lengths inconsistent, bad checksum.
    """
    n = len(packet)
    if n < 20:
        raise PacketError(f"{n} bytes: shorter than an IPv4 header")
    vihl = packet[0]
    if vihl >> 4 != 4:
        raise PacketError(f"IP version {vihl >> 4}, not 4")
    ihl = (vihl & 0x0F) * 4
    if ihl < 20 or ihl > n:
        raise PacketError(f"header length {ihl} with {n} bytes")
    total = (packet[2] << 8) | packet[3]
    if total != n:
        raise PacketError(f"total length {total} but {n} bytes")
    if checksum(packet[:ihl]) != 0:
        raise PacketError("bad IPv4 header checksum")
    p = IPv4()
    p.ihl = ihl
    p.total = total
    p.proto = packet[9]
    p.src = packet[12:16]
    p.dst = packet[16:20]
    flags = (packet[6] << 8) | packet[7]
    p.fragOffset = (flags & 0x1FFF) * 8
    p.moreFragments = bool(flags & 0x2000)
    p.dontFragment = bool(flags & 0x4000)
    p.sport = p.dport = p.icmpType = None
    if p.fragOffset == 0:
        rest = n - ihl
        if p.proto in (PROTO_TCP, PROTO_UDP):
            need = 20 if p.proto == PROTO_TCP else 8
            if rest < need:
                raise PacketError(f"{PROTO_NAMES[p.proto]} header truncated ({rest} bytes)")
            p.sport, p.dport = struct.unpack_from("!HH", packet, ihl)
            if p.proto == PROTO_TCP and not 20 <= (packet[ihl + 12] >> 4) * 4 <= rest:
                raise PacketError("bad TCP data offset")
            if p.proto == PROTO_UDP and struct.unpack_from("!H", packet, ihl + 4)[0] != rest:
                raise PacketError("UDP length does not match the packet")
        elif p.proto == PROTO_ICMP:
            if rest < 8:
                raise PacketError(f"ICMP header truncated ({rest} bytes)")
            p.icmpType = packet[ihl]
    return p


def checksum(data):
    """The Internet checksum (RFC 1071) of C{data}: 0 when C{data} holds a correct one."""
    if len(data) & 1:
        data = data + b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _adjust(csum, old, new):
    # RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), over 16-bit words of old/new.
    s = ~csum & 0xFFFF
    for i in range(0, len(old), 2):
        s += (~((old[i] << 8) | old[i + 1]) & 0xFFFF) + ((new[i] << 8) | new[i + 1])
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _delta4(old, new):
    """
    RFC 1624 eqn. 3's address terms for a 4-byte address: the sum of ~m over
    C{old}'s two 16-bit words and of m' over C{new}'s (~x is 0xFFFF - x).
    The same for the IP and the TCP/UDP checksum: computed once per change.
    """
    return (0x1FFFE - ((old[0] << 8) | old[1]) - ((old[2] << 8) | old[3])
            + ((new[0] << 8) | new[1]) + ((new[2] << 8) | new[3]))


def _apply(csum, delta):
    """C{_adjust} with the address terms already summed: HC' = ~(~HC + delta)."""
    s = 0xFFFF - csum + delta
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return 0xFFFF - s


def rewrite(packet, info, src=None, dst=None, partial=False):
    """
    @param partial: the TCP/UDP checksum is unfinished (offload,
        L{meshvpn.tun.offload}): it holds the pseudo-header sum itself, not
        its complement, so the address change is added, not subtracted, and
        UDP's "no checksum" 0 does not apply.
    @return: C{packet} with its source and/or destination replaced (4-byte
        C{bytes}), IP and TCP/UDP checksums fixed, and for an ICMP error the
        quoted packet's matching address rewritten too (so the receiver
        matches it to its socket).
    """
    buf = bytearray(packet)
    ihl = info.ihl
    changes = []
    if src is not None and src != info.src:
        changes.append((12, info.src, src))
    if dst is not None and dst != info.dst:
        changes.append((16, info.dst, dst))
    if not changes:
        return packet
    # Per packet at an exit and a client: plain integer arithmetic, no struct calls.
    transport = info.fragOffset == 0 and info.proto in (PROTO_TCP, PROTO_UDP)
    at = ihl + (16 if info.proto == PROTO_TCP else 6)
    for offset, old, new in changes:
        buf[offset:offset + 4] = new
        delta = _delta4(old, new)
        ipc = _apply((buf[10] << 8) | buf[11], delta)
        buf[10], buf[11] = ipc >> 8, ipc & 0xFF
        if transport:
            old4 = (buf[at] << 8) | buf[at + 1]
            if partial:
                # HC holds the sum S, not ~S: ~HC' = ~(~S + delta) gives S' = S + delta.
                new4 = 0xFFFF - _apply(0xFFFF - old4, delta)
                buf[at], buf[at + 1] = new4 >> 8, new4 & 0xFF
                continue
            if info.proto == PROTO_UDP and old4 == 0:
                continue  # no UDP checksum sent: keep none
            new4 = _apply(old4, delta)
            if info.proto == PROTO_UDP and new4 == 0:
                new4 = 0xFFFF
            buf[at], buf[at + 1] = new4 >> 8, new4 & 0xFF
    if info.proto == PROTO_ICMP and info.icmpType in ICMP_ERRORS and info.fragOffset == 0:
        _rewriteQuoted(buf, ihl, src, dst)
    return bytes(buf)


def _rewriteQuoted(buf, ihl, src, dst):
    # The quoted packet went the other way: our new destination was its source.
    inner = ihl + 8
    if len(buf) < inner + 20 or buf[inner] >> 4 != 4:
        return
    innerIhl = (buf[inner] & 0x0F) * 4
    if innerIhl < 20 or len(buf) < inner + innerIhl:
        return
    if dst is not None:
        buf[inner + 12:inner + 16] = dst
    if src is not None:
        buf[inner + 16:inner + 20] = src
    struct.pack_into("!H", buf, inner + 10, 0)
    struct.pack_into("!H", buf, inner + 10, checksum(bytes(buf[inner:inner + innerIhl])))
    struct.pack_into("!H", buf, ihl + 2, 0)
    struct.pack_into("!H", buf, ihl + 2, checksum(bytes(buf[ihl:])))


def ipv4Header(src, dst, proto, payloadLength, ttl=64):
    header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + payloadLength, 0, 0x4000, ttl, proto, 0, src, dst))
    struct.pack_into("!H", header, 10, checksum(bytes(header)))
    return bytes(header)


def icmpError(original, info, icmpType, code, source, mtu=0):
    """
    An ICMP error about C{original} (RFC 792/1191), sent by C{source} (4 bytes)
    to C{original}'s source, quoting its IP header and 8 bytes of payload.
    Never about an ICMP error (RFC 1122 3.2.2) or a later fragment: then C{None}.
    """
    if info.proto == PROTO_ICMP and info.icmpType in ICMP_ERRORS:
        return None
    if info.fragOffset != 0:
        return None
    quoted = original[:info.ihl + 8]
    rest = struct.pack("!HH", 0, mtu) if icmpType == ICMP_UNREACH and code == UNREACH_FRAG_NEEDED else b"\0\0\0\0"
    body = bytearray(struct.pack("!BBH", icmpType, code, 0) + rest + quoted)
    struct.pack_into("!H", body, 2, checksum(bytes(body)))
    return ipv4Header(source, info.src, PROTO_ICMP, len(body)) + bytes(body)


def isIPv6(packet):
    return len(packet) >= 1 and packet[0] >> 4 == 6
