"""A dual-stack client browses IPv6 and IPv4 targets through the VPN; no IPv6 leaves outside the tunnel (root; CI).

The made-up internet of L{TunWorld.buildTwistd} with IPv6 on every uplink
(2001:2::/48), a web server on L{WEB6}, an AAAA record for L{DOMAIN} and an
exit that carries IPv6 (NAT66 behind its own address).  The client's links
to relays stay IPv4 here; an IPv6-only client (DHT and links over IPv6) is
L{meshvpn.client.test.test_ipv6only}.
"""

import os
import shutil
import subprocess
import tempfile
import time

from twisted.trial import unittest

from meshvpn.client.test.test_vpn_e2e import captured, fetched, waitFetch
from meshvpn.tools.netns import Netns, requireRoot
from meshvpn.tools.tunworld import DOMAIN, WEB6, TunWorld
from meshvpn.tools.webfixture import body

SIZE = 200_000


class DualStackThroughVPNTests(unittest.TestCase):
    def setUp(self):
        requireRoot(self, tools=("ip", "nft", "tcpdump", "curl"))
        self.workdir = tempfile.mkdtemp(prefix="mvtun6-")
        self.addCleanup(shutil.rmtree, self.workdir, True)
        self.world = TunWorld(Netns(self, "mv6"), self.addCleanup, self.workdir).buildTwistd(ipv6=True)

    def fetch(self, *curlArgs, url, deadline):
        return fetched(self, url, deadline, *curlArgs)

    def test_browseIPv6AndIPv4NoIPv6Outside(self):
        w = self.world
        w.startTwistdClient()
        capture = w.netns.popen(w.ns["cl"], ["tcpdump", "-i", w.uplink["cl"], "-Q", "out", "-nn", "-U", "-w",
                                             os.path.join(self.workdir, "uplink.pcap"), "not", "arp"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        capture.stderr.readline()
        # IPv4 first: the VPN is up once this works.
        code = waitFetch(w, f"http://{DOMAIN}/bytes/1000", os.path.join(self.workdir, "v4"), time.monotonic() + 60)
        self.assertEqual(code, "200", w.nodeLog("client")[-3000:])

        # An IPv6 literal, then the name by its AAAA (answered through the exit).
        deadline = time.monotonic() + 30
        self.assertEqual(self.fetch("-6", url=f"http://[{WEB6}]/bytes/{SIZE}", deadline=deadline), body(SIZE))
        self.assertEqual(self.fetch("-6", url=f"http://{DOMAIN}/bytes/{SIZE + 1}", deadline=deadline), body(SIZE + 1))
        # The web server saw the exit's IPv6 address (NAT66), never the client's.
        web6 = w.log("web6")
        self.assertIn(f"webfixture: {w.address6['ex']} GET /bytes/{SIZE}", web6)
        self.assertNotIn(w.address6["cl"], web6)
        self.assertNotIn("fd6d:", web6)
        # And IPv4 still works beside it.
        self.assertEqual(self.fetch("-4", url=f"http://{DOMAIN}/bytes/{SIZE + 2}", deadline=deadline), body(SIZE + 2))

        # An app binding to the uplink itself is stopped by the kill switch.  (Binding to the uplink's
        # address instead would not test it: the route still takes such packets into the TUN, and the
        # replies, to an address that is not the TUN's, are refused by the circuit filter.)
        leak = subprocess.run(["ip", "netns", "exec", w.ns["cl"], "curl", "-sS", "-6", "--max-time", "2",
                               "--interface", w.uplink["cl"], f"http://[{WEB6}]/"], capture_output=True)
        self.assertNotEqual(leak.returncode, 0)

        time.sleep(0.3)
        capture.terminate()
        capture.wait(10)
        lines = captured(os.path.join(self.workdir, "uplink.pcap"))
        self.assertTrue(lines)
        for line in lines:
            self.assertNotIn("IP6", line, line)

        status = w.inClient("ip", "-6", "route")
        self.assertIn("::/1 dev mvpn", status)
        self.assertEqual(w.stop("client"), 0, w.nodeLog("client")[-2000:])
        after = w.inClient("ip", "-6", "route")
        self.assertNotIn("::/1", after)
        self.assertNotIn("8000::/1", after)
