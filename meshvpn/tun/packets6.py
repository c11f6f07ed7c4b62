"""IPv6 packets as the VPN will carry them: strict parsing, address rewriting, ICMPv6 errors.

The first piece of carrying IPv6 through the VPN instead of blocking it (the
client and the packet exit still drop IPv6 today; doc/vpn.md).  The same
rules as L{meshvpn.tun.packets} for IPv4: every length is checked against
the bytes present, anything malformed raises L{PacketError} and costs only
that packet, and only the headers acted on are read.

What is refused on purpose, not for lack of parsing:

 - a Routing header (any type): source routing through an exit would let a
   client steer the exit's packets (type 0 was deprecated for that, RFC 5095);
 - fragments: like later IPv4 fragments, the exit cannot check a policy on
   a fragment without its ports (RFC 8200 lets endpoints, not us, reassemble);
 - jumbograms and more than L{MAX_EXTENSIONS} extension headers (RFC 7112:
   the upper-layer header must be findable).

Rewriting an address fixes the TCP, UDP or ICMPv6 checksum incrementally
(RFC 1624): each covers a pseudo-header holding both addresses (RFC 8200 8.1).
"""

import ipaddress
import struct

from meshvpn.tun.packets import PROTO_TCP, PROTO_UDP, PacketError, _adjust, checksum

PROTO_ICMPV6 = 58
HOP_BY_HOP = 0
ROUTING = 43
FRAGMENT = 44
DEST_OPTIONS = 60
NO_NEXT_HEADER = 59
MAX_EXTENSIONS = 4
HEADER = 40

ICMP6_UNREACH = 1
ICMP6_PACKET_TOO_BIG = 2
ICMP6_TIME_EXCEEDED = 3
ICMP6_PARAM_PROBLEM = 4
ICMP6_ECHO = 128
ICMP6_ECHO_REPLY = 129
UNREACH6_ADMIN_PROHIBITED = 1
MIN_MTU6 = 1280  # RFC 8200: every IPv6 link carries 1280 bytes


class IPv6:
    """
    @ivar proto: the upper-layer protocol after the extension headers.
    @ivar upper: offset of the upper-layer header.
    @ivar sport / dport: TCP/UDP ports or C{None}; C{icmpType} likewise.
    """

    __slots__ = ("proto", "upper", "src", "dst", "hopLimit", "sport", "dport", "icmpType")

    def __repr__(self):
        return f"<IPv6 {self.proto} [{ip6Str(self.src)}]:{self.sport} -> [{ip6Str(self.dst)}]:{self.dport}>"


def ip6Str(raw):
    return str(ipaddress.IPv6Address(bytes(raw)))


def parseIPv6(packet):
    """
    @param packet: one whole IPv6 packet (as a TUN reads it).
    @return: an L{IPv6}.
    @raise PacketError: not IPv6, truncated, inconsistent, or refused (see the module docstring).
    """
    n = len(packet)
    if n < HEADER:
        raise PacketError(f"{n} bytes: shorter than an IPv6 header")
    if packet[0] >> 4 != 6:
        raise PacketError(f"IP version {packet[0] >> 4}, not 6")
    payload = (packet[4] << 8) | packet[5]
    if payload == 0:
        raise PacketError("payload length 0 (a jumbogram or empty): refused")
    if payload != n - HEADER:
        raise PacketError(f"payload length {payload} but {n - HEADER} bytes follow the header")
    p = IPv6()
    p.src, p.dst, p.hopLimit = packet[8:24], packet[24:40], packet[7]
    nxt, at = packet[6], HEADER
    for _ in range(MAX_EXTENSIONS + 1):
        if nxt in (HOP_BY_HOP, DEST_OPTIONS):
            if n - at < 8:
                raise PacketError("extension header truncated")
            length = (packet[at + 1] + 1) * 8
            if n - at < length:
                raise PacketError("extension header longer than the packet")
            nxt, at = packet[at], at + length
            continue
        if nxt == ROUTING:
            raise PacketError("routing header: refused")
        if nxt == FRAGMENT:
            raise PacketError("fragment: refused")
        break
    else:
        raise PacketError(f"more than {MAX_EXTENSIONS} extension headers")
    p.proto, p.upper = nxt, at
    p.sport = p.dport = p.icmpType = None
    rest = n - at
    if nxt in (PROTO_TCP, PROTO_UDP):
        need = 20 if nxt == PROTO_TCP else 8
        if rest < need:
            raise PacketError(f"{'tcp' if nxt == PROTO_TCP else 'udp'} header truncated ({rest} bytes)")
        p.sport, p.dport = struct.unpack_from("!HH", packet, at)
        if nxt == PROTO_TCP and not 20 <= (packet[at + 12] >> 4) * 4 <= rest:
            raise PacketError("bad TCP data offset")
        if nxt == PROTO_UDP:
            if struct.unpack_from("!H", packet, at + 4)[0] != rest:
                raise PacketError("UDP length does not match the packet")
            if struct.unpack_from("!H", packet, at + 6)[0] == 0:
                raise PacketError("UDP checksum 0 is not allowed over IPv6")
    elif nxt == PROTO_ICMPV6:
        if rest < 8:
            raise PacketError(f"ICMPv6 header truncated ({rest} bytes)")
        p.icmpType = packet[at]
    elif nxt != NO_NEXT_HEADER:
        raise PacketError(f"upper-layer protocol {nxt} not carried")
    return p


def _checksumOffset(info):
    if info.proto == PROTO_TCP:
        return info.upper + 16
    if info.proto == PROTO_UDP:
        return info.upper + 6
    if info.proto == PROTO_ICMPV6:
        return info.upper + 2
    return None


def rewrite6(packet, info, src=None, dst=None, partial=False):
    """
    @param partial: the checksum is unfinished (holds the pseudo-header sum;
        L{meshvpn.tun.packets.rewrite}).
    @return: C{packet} with its source and/or destination (16-byte C{bytes})
        replaced and its upper-layer checksum fixed.
    """
    buf = bytearray(packet)
    at = _checksumOffset(info)
    for offset, old, new in ((8, info.src, src), (24, info.dst, dst)):
        if new is None or new == old:
            continue
        if len(new) != 16:
            raise ValueError("an IPv6 address is 16 bytes")
        buf[offset:offset + 16] = new
        if at is not None:
            if partial:
                fixed = 0xFFFF - _adjust(0xFFFF - struct.unpack_from("!H", buf, at)[0], old, new)
                struct.pack_into("!H", buf, at, fixed)
                continue
            fixed = _adjust(struct.unpack_from("!H", buf, at)[0], old, new)
            if info.proto == PROTO_UDP and fixed == 0:
                fixed = 0xFFFF
            struct.pack_into("!H", buf, at, fixed)
    return bytes(buf)


def upperChecksum(src, dst, proto, upper):
    """The checksum of an upper-layer segment C{upper} (checksum field zeroed) over the RFC 8200 pseudo-header."""
    pseudo = src + dst + struct.pack("!I3xB", len(upper), proto)
    return checksum(pseudo + upper)


def icmp6Error(original, info, icmpType, code, source, mtu=0):
    """
    An ICMPv6 error about C{original} from C{source} (16 bytes) to its
    source, quoting as much of it as fits in the minimum MTU (RFC 4443 2.4).
    Never about an ICMPv6 error (types below 128), nor to a multicast or
    unspecified source: then C{None}.
    """
    if info.proto == PROTO_ICMPV6 and info.icmpType is not None and info.icmpType < 128:
        return None
    if info.src[0] == 0xFF or info.src == bytes(16):
        return None
    quoted = original[:MIN_MTU6 - HEADER - 8]
    rest = struct.pack("!I", mtu if icmpType == ICMP6_PACKET_TOO_BIG else 0)
    body = bytearray(struct.pack("!BBH", icmpType, code, 0) + rest + quoted)
    struct.pack_into("!H", body, 2, upperChecksum(source, info.src, PROTO_ICMPV6, bytes(body)))
    header = struct.pack("!IHBB16s16s", 6 << 28, len(body), PROTO_ICMPV6, 64, source, info.src)
    return header + bytes(body)
