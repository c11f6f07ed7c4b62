"""Fuzz target: IPv6 packets as the packet exit reads them (tun/packets6.py), then judged, rewritten and answered.

Half the inputs get their payload length (and a UDP length) made right by
the harness, so the fuzzer reaches the extension-header walk and the
upper-layer checks behind it.  A parsed packet is judged by an exit policy
with IPv6 rules (exit/packetexit.py packetAllowed6), its source rewritten
to a pool address and back as the exit does, and answered with ICMPv6
errors.  Everything the exit makes must parse again, and a rewrite must
keep a correct upper-layer checksum correct (RFC 1624).
"""

import struct

from meshvpn.exit.packetexit import packetAllowed6
from meshvpn.exit.policy import ExitPolicy
from meshvpn.fuzz.target import FuzzTarget
from meshvpn.tun import packets6 as p6
from meshvpn.tun.packets import PacketError

_POOL = bytes.fromhex("fd6d65736801000000000000000000ff")
_EXIT = bytes.fromhex("fd6d6573680100000000000000000001")
_CLIENT = bytes.fromhex("fd000000000000000000000000000002")
_POLICY = ExitPolicy.fromText("accept6 [2001:2::]/32:443\naccept6 [2001:2::]/32:80\naccept6 *:53\nreject *:*")


def _fixLengths(data):
    buf = bytearray(data)
    if len(buf) < p6.HEADER:
        return bytes(buf)
    buf[0] = 0x60 | (buf[0] & 0x0F)
    struct.pack_into("!H", buf, 4, (len(buf) - p6.HEADER) & 0xFFFF)
    return bytes(buf)


def _checksumOk(packet, info):
    if info.proto not in (p6.PROTO_TCP, p6.PROTO_UDP, p6.PROTO_ICMPV6):
        return None
    return p6.upperChecksum(bytes(info.src), bytes(info.dst), info.proto, bytes(packet[info.upper:])) == 0


def _run(data):
    if not data:
        return
    packet = _fixLengths(data[1:]) if data[0] & 1 else data[1:]
    info = p6.parseIPv6(packet)
    packetAllowed6(_POLICY, info)
    before = _checksumOk(packet, info)
    out = p6.rewrite6(packet, info, src=_POOL)
    outInfo = p6.parseIPv6(out)
    if before and not _checksumOk(out, outInfo):
        raise AssertionError("rewriting the source broke a correct checksum")
    back = p6.rewrite6(out, outInfo, dst=_CLIENT)
    backInfo = p6.parseIPv6(back)
    if before and not _checksumOk(back, backInfo):
        raise AssertionError("rewriting the destination broke a correct checksum")
    for kind, code, mtu in ((p6.ICMP6_UNREACH, p6.UNREACH6_ADMIN_PROHIBITED, 0), (p6.ICMP6_PACKET_TOO_BIG, 0, 1280)):
        err = p6.icmp6Error(packet, info, kind, code, _EXIT, mtu)
        if err is not None:
            errInfo = p6.parseIPv6(err)
            if len(err) > p6.MIN_MTU6 or not _checksumOk(err, errInfo):
                raise AssertionError(f"an ICMPv6 error of {len(err)} bytes or with a bad checksum")


def _packet(proto, upper, src=_CLIENT, dst=bytes.fromhex("20010002010000000000000000000001"), ext=b""):
    nxt = proto if not ext else p6.HOP_BY_HOP
    header = struct.pack("!IHBB16s16s", 6 << 28, len(ext) + len(upper), nxt, 64, src, dst)
    body = bytearray(upper)
    offset = {p6.PROTO_TCP: 16, p6.PROTO_UDP: 6, p6.PROTO_ICMPV6: 2}[proto]
    struct.pack_into("!H", body, offset, p6.upperChecksum(src, dst, proto, bytes(body)))
    return header + ext + bytes(body)


def _seeds():
    tcp = struct.pack("!HHIIBBHHH", 40001, 443, 1, 0, 5 << 4, 0x02, 65535, 0, 0)
    dnsQuery = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x1c\x00\x01"
    udp = struct.pack("!HHHH", 40000, 53, 8 + len(dnsQuery), 0) + dnsQuery
    echo = struct.pack("!BBHHH", p6.ICMP6_ECHO, 0, 0, 7, 1) + b"ping" * 8
    hopByHop = bytes([p6.PROTO_UDP, 0]) + bytes(6)  # next header UDP, 8 bytes of padding options
    seeds = [_packet(p6.PROTO_TCP, tcp), _packet(p6.PROTO_UDP, udp), _packet(p6.PROTO_ICMPV6, echo),
             _packet(p6.PROTO_UDP, udp, ext=hopByHop)]
    info = p6.parseIPv6(seeds[0])
    seeds.append(p6.icmp6Error(seeds[0], info, p6.ICMP6_PACKET_TOO_BIG, 0, _EXIT, 1280))
    return [b"\0" + s for s in seeds] + [b"\1" + seeds[1]]


TARGET = FuzzTarget("ip-packet6", "tun/packets6.py parseIPv6, rewrite6, icmp6Error; packetAllowed6 (packet exit, IPv6)",
                    (PacketError,), _run, _seeds)
