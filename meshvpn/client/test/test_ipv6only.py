"""An IPv6-only client joins the IPv6 DHT, enters through a dual-stack guard and fetches byte-exact (root; CI).

The world is L{meshvpn.tools.dualstackworld.DualStackWorld}: real
``twistd`` relays in both DHTs, a client namespace with no IPv4 at all.
A capture on the client's uplink shows that nothing but IPv6 left it,
and the client's own node.json and DHT table show it bound and learned
IPv6 only.
"""

import json
import os
import shutil
import subprocess
import tempfile
import time

from twisted.trial import unittest

from meshvpn.client.test.test_vpn_e2e import captured, fetched
from meshvpn.dht.descriptor import IPV6_EXIT
from meshvpn.tools.dualstackworld import GUARD6, DualStackWorld
from meshvpn.tools.netns import Netns, requireRoot
from meshvpn.tools.tunworld import WEB, WEB6
from meshvpn.tools.webfixture import body

SIZE = 300_000


class IPv6OnlyClientTests(unittest.TestCase):
    def setUp(self):
        requireRoot(self, tools=("ip", "tcpdump", "curl"))
        self.workdir = tempfile.mkdtemp(prefix="mv6only-")
        self.addCleanup(shutil.rmtree, self.workdir, True)
        self.world = DualStackWorld(Netns(self, "mv6o"), self.addCleanup, self.workdir).build()

    def fetch(self, url, deadline):
        return fetched(self, url, deadline, "--socks5-hostname", "127.0.0.1:1080")

    def test_bootstrapsBuildsThreeHopsAndFetches(self):
        w = self.world
        capture = w.netns.popen(w.ns["cl"], ["tcpdump", "-i", w.uplink["cl"], "-nn", "-U", "-w",
                                             os.path.join(self.workdir, "uplink.pcap"), "not", "arp"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        capture.stderr.readline()
        info = w.startSocksClient()
        self.assertTrue(info["udp"].startswith("[::]:"), info)

        deadline = time.monotonic() + 90
        # an IPv4 and an IPv6 target on the made-up internet, both through the exit
        self.assertEqual(self.fetch(f"http://{WEB}/bytes/{SIZE}", deadline), body(SIZE))
        self.assertEqual(self.fetch(f"http://[{WEB6}]/bytes/{SIZE + 1}", deadline), body(SIZE + 1))
        # the web server saw the exit, never the client
        self.assertNotIn(w.address6["cl"], w.log("web6") + w.log("web"))

        # three hops, and the relays' descriptors as the client verified them: both families announced
        status = self.status()
        paths = [c["path"] for c in status["circuits"]["circuits"]]
        self.assertTrue(paths and all(len(p) == 3 for p in paths), status["circuits"])
        with open(os.path.join(w.dataDirs["client"], "relays.json")) as f:
            relays = json.load(f)["relays"]
        self.assertEqual(len(relays), 3)
        for r in relays:
            udp = [a for t, a in r["all_addresses"] if t == "udp"]
            self.assertEqual(len(udp), 2, r)
            self.assertEqual(sum(a.startswith("[2001:2:") for a in udp), 1, r)
        # the exit says it carries IPv6, which is why the client chose it for WEB6
        self.assertEqual([IPV6_EXIT in r["handshakes"] for r in relays if "exit" in r["flags"]], [True])
        time.sleep(0.3)
        capture.terminate()
        capture.wait(10)
        lines = captured(os.path.join(self.workdir, "uplink.pcap"))
        self.assertTrue(lines)
        for line in lines:
            self.assertIn("IP6", line, line)
        # it entered through the guard's IPv6 link address
        self.assertTrue(any(f"{GUARD6}.9001" in line for line in lines), lines[:20])
        self.assertEqual(w.stop("client"), 0, w.nodeLog("client")[-2000:])
        with open(os.path.join(w.dataDirs["client"], "dht-table.json")) as f:
            contacts = json.load(f)["contacts"]
        self.assertTrue(contacts)
        self.assertTrue(all(":" in host for _, host, _ in contacts), contacts)

    def status(self):
        path = os.path.join(self.world.dataDirs["client"], "status.json")
        deadline = time.monotonic() + 10
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not os.path.exists(path):
            self.fail(f"{os.listdir(os.path.dirname(path))} {self.world.nodeLog('client')[-3000:]}")
        with open(path) as f:
            return json.load(f)
