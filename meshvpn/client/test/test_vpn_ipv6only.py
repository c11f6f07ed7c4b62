"""An IPv6-only VPN client: no IPv4 on its uplink at all, yet IPv4 and IPv6 both go through the tunnel (root; CI).

The world is L{meshvpn.tools.dualstackworld.DualStackWorld}: real
``twistd`` relays in both DHTs; the client knows one IPv6 bootstrap node
and finds every relay in the IPv6 DHT.  It is started and stopped with
``meshvpn up`` / ``meshvpn down``, so the tests of
L{test_updown_netns.UpDownLeavesNoTraceTests} (the system as found after
``down``, also after ``kill -9``) run here too, over IPv6.
"""

import json
import os
import re
import subprocess
import time

from meshvpn.client.test import test_updown_netns
from meshvpn.client.test.test_vpn_e2e import captured, fetched
from meshvpn.tools.dualstackworld import CLIENT6, EXIT, EXIT6, GUARD6, DualStackWorld
from meshvpn.tools.netns import Netns, requireRoot
from meshvpn.tools.tunworld import DOMAIN, WEB6
from meshvpn.tools.webfixture import body

SIZE = 250_000
# What an IPv6 host says on its link whatever the VPN does (ARP's counterpart): never a leak.
_LINK_CHATTER = ("ICMP6, neighbor solicitation", "ICMP6, neighbor advertisement", "ICMP6, router solicitation",
                 "ICMP6, router advertisement", "multicast listener")
_ENDS = re.compile(r"\bIP6 (\S+) > (\S+): ")


def _host(end):
    """C{2001:2:1::2.40000} -> C{2001:2:1::2} (tcpdump puts the port after the last dot)."""
    host, _, port = end.rpartition(".")
    return host if port.isdigit() else end


class IPv6OnlyVpnTests(test_updown_netns.UpDownLeavesNoTraceTests):
    def setUp(self):
        requireRoot(self, tools=("ip", "nft", "tcpdump", "curl"))
        super().setUp()

    def buildWorld(self):
        return DualStackWorld(Netns(self, "mv6v"), self.addCleanup, self.workdir).build()

    def configText(self):
        return f'udp = "[::]:0"\nbootstrap = ["{self.world.boot6}"]\ndht-sample-interval = 5\n'

    def fetch(self, *curlArgs, url, deadline):
        return fetched(self, url, deadline, *curlArgs, log=self.clientLog)

    def clientStatus(self):
        with open(os.path.join(self.dataDir, "status.json")) as f:
            return json.load(f)

    def test_browsesIPv4AndIPv6NothingOutsideButRelays(self):
        w = self.world
        self.assertEqual(w.inClient("ip", "-4", "addr", "show", w.uplink["cl"]), "")  # no IPv4 on the uplink at all
        pcap = os.path.join(self.workdir, "uplink.pcap")
        capture = w.netns.popen(w.ns["cl"], ["tcpdump", "-i", w.uplink["cl"], "-nn", "-U", "-w", pcap, "not", "arp"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.addCleanup(_stopped, capture)
        capture.stderr.readline()  # listening: from here on every packet is in the file
        self.up()  # meshvpn up, and a first fetch by name

        # By name: the A record's target over IPv4, the AAAA record's over IPv6; both answered through the exit.
        deadline = time.monotonic() + 60
        self.assertEqual(self.fetch("-4", url=f"http://{DOMAIN}/bytes/{SIZE}", deadline=deadline), body(SIZE))
        self.assertEqual(self.fetch("-6", url=f"http://{DOMAIN}/bytes/{SIZE + 1}", deadline=deadline), body(SIZE + 1))
        self.assertEqual(self.fetch(url=f"http://[{WEB6}]/bytes/{SIZE + 2}", deadline=deadline), body(SIZE + 2))
        # The web servers saw the exit (its IPv4, its IPv6 by NAT66), never the client.
        self.assertIn(f"webfixture: {EXIT} GET /bytes/{SIZE}", w.log("web"))
        self.assertIn(f"webfixture: {EXIT6} GET /bytes/{SIZE + 1}", w.log("web6"))
        self.assertNotIn(CLIENT6, w.log("web6"))

        # An app binding to the uplink itself (SO_BINDTODEVICE: its packets take the uplink, not the
        # TUN) is stopped by the kill switch; so is ICMPv6 other than neighbour discovery, even with
        # the hop limit of 255 that the neighbour-discovery exception asks for.
        uplink = w.uplink["cl"]
        for attack in (["curl", "-sS", "--max-time", "3", "--interface", uplink, f"http://[{WEB6}]/"],
                       ["ping", "-6", "-c", "1", "-W", "2", "-t", "255", "-I", uplink, WEB6]):
            leak = subprocess.run(["ip", "netns", "exec", w.ns["cl"], *attack], capture_output=True)
            self.assertNotEqual(leak.returncode, 0, (attack, leak.stdout))
        routes6 = w.inClient("ip", "-6", "route")
        self.assertIn("::/1 dev mvpn", routes6)
        self.assertIn("8000::/1 dev mvpn", routes6)
        self.assertIn(f"{GUARD6} via 2001:2:1::1", w.inClient("ip", "-6", "route", "show", "proto", "196"))

        # Three hops, found in the DHT: the client was told only the bootstrap node's IPv6 address.
        status = self.clientStatus()
        self.assertEqual(status["tun"]["state"], "up", status["tun"])
        paths = [c["path"] for c in status["circuits"]["circuits"]]
        self.assertTrue(paths and all(len(p) == 3 for p in paths), status["circuits"])
        with open(os.path.join(self.dataDir, "relays.json")) as f:
            self.assertEqual(len(json.load(f)["relays"]), 3)

        time.sleep(0.3)
        _stopped(capture)
        lines = captured(pcap)
        relays = {GUARD6, EXIT6}
        linkLines = 0
        for line in lines:
            self.assertIn(" IP6 ", line, line)  # no IPv4 at all
            if any(chatter in line for chatter in _LINK_CHATTER):
                continue
            ends = _ENDS.search(line)
            self.assertIsNotNone(ends, line)
            hosts = {_host(ends.group(1)), _host(ends.group(2))}
            self.assertEqual(len(hosts & relays), 1, line)  # only to and from a relay
            self.assertIn(CLIENT6, hosts, line)
            linkLines += f"{GUARD6}.9001" in line
        self.assertGreater(linkLines, 10, lines[:40])  # it entered through the guard's IPv6 link port
        print(f"\nIPv6-only VPN client: {len(lines)} uplink packets checked, {linkLines} on the guard link")


def _stopped(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
