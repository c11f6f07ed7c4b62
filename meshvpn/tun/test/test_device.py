"""The TUN device in a network namespace: a ping routed into it is read, answered and succeeds."""

import struct

from twisted.internet import defer, reactor, utils
from twisted.trial import unittest

from meshvpn.tun import packets as pp
from meshvpn.tools.netns import Netns, requireRoot


def echoReply(packet):
    if pp.isIPv6(packet):
        return None  # router solicitations when the link comes up
    info = pp.parseIPv4(packet)
    if info.proto != pp.PROTO_ICMP or info.icmpType != pp.ICMP_ECHO:
        return None
    icmp = bytearray(packet[info.ihl:])
    icmp[0] = pp.ICMP_ECHO_REPLY
    struct.pack_into("!H", icmp, 2, 0)
    struct.pack_into("!H", icmp, 2, pp.checksum(bytes(icmp)))
    return pp.ipv4Header(info.dst, info.src, pp.PROTO_ICMP, len(icmp)) + bytes(icmp)


class TunDeviceTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_pingThroughTun(self):
        requireRoot(self)
        from meshvpn.tools.netnsenter import netnsEntered
        from meshvpn.tun.device import TunDevice

        nets = Netns(self, "mvt")
        ns = nets.add("tun")
        with netnsEntered(ns):
            tun = TunDevice(reactor, "mvtest%d", mtu=1400)
            self.addCleanup(tun.close)
            tun.configure(addresses=["10.77.0.1/32"], routes=["198.18.77.0/24"])
        seen = []

        def received(packets):
            seen.extend(packets)
            replies = [r for r in map(echoReply, packets) if r is not None]
            tun.writePackets(replies)

        from zope.interface.verify import verifyObject

        from meshvpn.interfaces import ITunDevice

        verifyObject(ITunDevice, tun)
        tun.setPacketReceiver(received)
        out, err, code = yield utils.getProcessOutputAndValue(
            "/usr/sbin/ip", ["netns", "exec", ns, "ping", "-c", "3", "-i", "0.2", "-W", "2", "198.18.77.5"]
        )
        self.assertEqual(code, 0, (out + err).decode())
        self.assertIn(b"3 received", out)
        self.assertGreaterEqual(tun.packetsRead, 3)
        link = nets.exec(ns, "ip", "link", "show", tun.name)
        self.assertIn("mtu 1400", link)
        tun.close()
        self.assertNotIn(tun.name, nets.exec(ns, "ip", "link"))
