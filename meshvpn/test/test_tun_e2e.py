"""Browse the web through MeshVPN, in network namespaces (root; runs in CI).

Client -> TUN -> 3-hop circuit over TLS links -> exit's packet exit -> NAT
-> a made-up internet with an HTTP server and a DNS server for a made-up
domain.  A capture on the client's uplink shows only the link to the guard;
with the guard stopped, fetches fail and still nothing else leaves; on stop
the client's kill switch, routes and resolv.conf are gone.
"""

import os
import subprocess
import tempfile
import time

from twisted.trial import unittest

from meshvpn.test.rootenv import Netns, requireRoot, run
from meshvpn.test.tunworld import DNS, DOMAIN, WEB, TunWorld
from meshvpn.webfixture import body

SIZE = 300_000


def captured(pcap):
    """@return: the capture as tcpdump text lines (one per packet, no link-layer noise)."""
    out = run("tcpdump", "-nn", "-r", pcap, check=False)
    return [line for line in out.splitlines() if line.strip()]


class BrowseThroughVPNTests(unittest.TestCase):
    def setUp(self):
        requireRoot(self, tools=("ip", "nft", "tcpdump", "curl"))
        self.workdir = tempfile.mkdtemp(prefix="mvtun-")
        self.world = TunWorld(Netns(self, "mvw"), self.addCleanup, self.workdir).build()

    def startCapture(self):
        # Everything the client sends on its uplink (what the inet side sends
        # to it, e.g. its own IPv6 router solicitations, is not a leak).
        pcap = os.path.join(self.workdir, "uplink.pcap")
        proc = self.world.netns.popen(
            self.world.ns["cl"],
            ["tcpdump", "-i", self.world.uplink["cl"], "-Q", "out", "-nn", "-U", "-w", pcap, "not", "arp"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        # tcpdump says "listening on" once the capture is live.
        proc.stderr.readline()
        return proc, pcap

    def stopCapture(self, proc):
        time.sleep(0.3)  # let the last packets reach the file (-U flushes per packet)
        proc.terminate()
        proc.wait(10)

    def test_browseKillGuardAndRestore(self):
        w = self.world
        client = w.startClient()
        guard = w.address["r1"]
        capture, pcap = self.startCapture()

        out = os.path.join(self.workdir, "fetched")
        result = w.inClient("curl", "-sS", "--max-time", "20", "-o", out, "-w", "%{http_code}",
                            f"http://{DOMAIN}/bytes/{SIZE}")
        self.assertEqual(result, "200")
        with open(out, "rb") as f:
            self.assertEqual(f.read(), body(SIZE))
        self.assertIn(f"webfixture: {w.address['r3']} GET /bytes/{SIZE}", w.log("web"))

        # Leak bait: an app that binds to the uplink itself (bypassing the
        # routes) is stopped by the kill switch, not sent.
        leak = subprocess.run(["ip", "netns", "exec", w.ns["cl"], "curl", "-sS", "--max-time", "2",
                               "--interface", w.uplink["cl"], f"http://{WEB}/"], capture_output=True)
        self.assertNotEqual(leak.returncode, 0)

        w.stop("r1")
        failed = subprocess.run(["ip", "netns", "exec", w.ns["cl"], "curl", "-sS", "--max-time", "4", "-o", "/dev/null",
                                 f"http://{DOMAIN}/bytes/1000"], capture_output=True)
        self.assertNotEqual(failed.returncode, 0)
        byAddress = subprocess.run(["ip", "netns", "exec", w.ns["cl"], "curl", "-sS", "--max-time", "3", "-o", "/dev/null",
                                    f"http://{WEB}/bytes/1000"], capture_output=True)
        self.assertNotEqual(byAddress.returncode, 0)
        self.stopCapture(capture)

        lines = captured(pcap)
        self.lines = lines
        if os.environ.get("MESHVPN_SHOW_CAPTURE"):
            print(len(lines), "packets;", "\n".join(lines[:3] + lines[-3:]), failed.stderr, leak.stderr)
        self.assertTrue(lines, "capture saw nothing at all")
        for line in lines:
            self.assertNotIn("IP6", line, line)
            self.assertTrue(
                f"{w.address['cl']}." in line and f"{guard}.9001" in line,
                f"packet not on the guard link: {line}",
            )
        self.assertNotIn(DNS, "\n".join(lines))

        # Clean stop: kill switch, routes and resolver restored.
        self.assertEqual(w.stop("client"), 0, w.log("client")[-2000:])
        tables = w.inClient("nft", "list", "tables")
        self.assertNotIn(client["table"], tables)
        routes = w.inClient("ip", "route")
        self.assertNotIn("0.0.0.0/1", routes)
        self.assertNotIn(client["tun"], w.inClient("ip", "link"))
        with open(w.resolvConf) as f:
            self.assertEqual(f.read(), f"nameserver {DNS}\n")
        # And the exit removes its nftables table on stop.
        exitTables = run("ip", "netns", "exec", w.ns["r3"], "nft", "list", "tables")
        self.assertIn("meshvpn-exit-", exitTables)
        w.stop("r3")
        self.assertNotIn("meshvpn-exit-", run("ip", "netns", "exec", w.ns["r3"], "nft", "list", "tables"))
