"""Fuzz target: IP packets as the VPN client's TUN and the packet exit read them (tun/packets.py).

Half the inputs get their IPv4 total length and header checksum made right
by the harness, so the fuzzer reaches the TCP/UDP/ICMP checks behind them.
Each parsed packet is then NAT-rewritten and answered with an ICMP error as
the packet exit does; both results must parse again.
"""

import struct

from meshvpn.fuzz.target import FuzzTarget
from meshvpn.tun import packets as pk

_EXIT = bytes([198, 18, 0, 1])
_CLIENT = bytes([10, 200, 0, 2])


def _fixHeader(data):
    buf = bytearray(data)
    if len(buf) < 20:
        return bytes(buf)
    buf[0] = 0x40 | (buf[0] & 0x0F)
    struct.pack_into("!H", buf, 2, len(buf) & 0xFFFF)
    ihl = min((buf[0] & 0x0F) * 4, len(buf))
    struct.pack_into("!H", buf, 10, 0)
    struct.pack_into("!H", buf, 10, pk.checksum(bytes(buf[:ihl])))
    return bytes(buf)


def _run(data):
    if not data:
        return
    packet = _fixHeader(data[1:]) if data[0] & 1 else data[1:]
    pk.isIPv6(packet)
    info = pk.parseIPv4(packet)
    out = pk.rewrite(packet, info, src=_EXIT)
    pk.parseIPv4(pk.rewrite(out, pk.parseIPv4(out), dst=_CLIENT))
    icmp = pk.icmpError(packet, info, pk.ICMP_UNREACH, pk.UNREACH_FRAG_NEEDED, _EXIT, mtu=1280)
    if icmp is not None:
        pk.parseIPv4(icmp)


def _udp(payload):
    body = struct.pack("!HHHH", 40000, 53, 8 + len(payload), 0) + payload
    return pk.ipv4Header(_CLIENT, bytes([198, 18, 0, 53]), pk.PROTO_UDP, len(body)) + body


def _tcp():
    body = struct.pack("!HHIIBBHHH", 40001, 443, 1, 0, 5 << 4, 0x02, 65535, 0, 0)
    return pk.ipv4Header(_CLIENT, bytes([198, 18, 0, 80]), pk.PROTO_TCP, len(body)) + body


def _seeds():
    ping = struct.pack("!BBHHH", 8, 0, 0, 1, 1) + b"ping" * 8
    icmp = pk.ipv4Header(_CLIENT, bytes([198, 18, 0, 80]), pk.PROTO_ICMP, len(ping)) + ping
    udp, tcp = _udp(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01"), _tcp()
    info = pk.parseIPv4(tcp)
    unreachable = pk.icmpError(tcp, info, pk.ICMP_UNREACH, 3, bytes([198, 18, 0, 80]))
    return [b"\0" + p for p in (icmp, udp, tcp, unreachable)] + [b"\1" + tcp]


TARGET = FuzzTarget("ip-packet", "tun/packets.py parseIPv4, rewrite, icmpError (VPN TUN and packet exit)",
                    (pk.PacketError,), _run, _seeds)
