"""Browse the web through MeshVPN, in network namespaces (root; runs in CI).

Client -> TUN -> 3-hop circuit over TLS links -> exit's packet exit -> NAT
-> a made-up internet with an HTTP server and a DNS server for a made-up
domain.  A capture on the client's uplink shows only the link to the guard;
with the guard stopped, fetches fail and still nothing else leaves; on stop
the client's kill switch, routes and resolv.conf are gone.  All nodes are
real ``twistd meshvpn-relay``/``meshvpn-client`` processes that find each
other through the DHT (see L{TunWorld.buildTwistd} for the layout).
"""

import os
import shutil
import subprocess
import tempfile
import time

from twisted.trial import unittest

from meshvpn.tools.netns import Netns, requireRoot, run
from meshvpn.tools.tunworld import DNS, DOMAIN, WEB, TunWorld
from meshvpn.tools.webfixture import body

SIZE = 300_000


def captured(pcap):
    """@return: the capture as tcpdump text lines (one per packet, no link-layer noise)."""
    out = run("tcpdump", "-nn", "-r", pcap, check=False)
    return [line for line in out.splitlines() if line.strip()]


def waitFetch(world, url, out, deadline, *curlArgs, maxTime=10):
    """Retry C{curl url} until the client has its first circuit. @return: curl's http code."""
    while True:
        result = world.inClient("curl", "-sS", "--max-time", str(maxTime), *curlArgs, "-o", out, "-w", "%{http_code}",
                                url, check=False)
        if result == "200" or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


def fetched(case, url, deadline, *curlArgs, log=None):
    """
    C{url} fetched in the client namespace of C{case.world} (retried until
    C{deadline}), asserted 200; C{log()} says why not (default: the client
    node's log).  @return: the body, to compare byte for byte.
    """
    out = os.path.join(case.workdir, "fetched")
    code = waitFetch(case.world, url, out, deadline, *curlArgs, maxTime=15)
    if code != "200":
        case.fail(f"{url}: {code} {log() if log else case.world.nodeLog('client')[-3000:]}")
    with open(out, "rb") as f:
        return f.read()


class BrowseThroughVPNTests(unittest.TestCase):
    def setUp(self):
        requireRoot(self, tools=("ip", "nft", "tcpdump", "curl"))
        self.workdir = tempfile.mkdtemp(prefix="mvtun-")
        self.addCleanup(shutil.rmtree, self.workdir, True)  # runs last: after the namespaces' processes die
        self.world = TunWorld(Netns(self, "mvw"), self.addCleanup, self.workdir).buildTwistd()

    def startCapture(self):
        # Everything the client sends on its uplink (what the inet side sends
        # to it, e.g. its own IPv6 router solicitations, is not a leak).
        pcap = os.path.join(self.workdir, "uplink.pcap")
        proc = self.world.netns.popen(
            self.world.ns["cl"],
            ["tcpdump", "-i", self.world.uplink["cl"], "-Q", "out", "-nn", "-U", "-w", pcap, "not", "arp"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        proc.stderr.readline()  # "listening on ...": the capture is live
        return proc, pcap

    def stopCapture(self, proc):
        time.sleep(0.3)  # -U writes each packet as it comes; let the last ones land
        proc.terminate()
        proc.wait(10)

    def test_browseKillGuardAndRestore(self):
        w = self.world
        w.startTwistdClient()
        # From here on the VPN is up (the kill switch is in place before the
        # node reports ready); before it, the uplink's own IPv6 link-local
        # chatter (DAD, MLD) is the host's, not a leak.
        capture, pcap = self.startCapture()
        relayPorts = {f"{w.address['g']}.9001", f"{w.address['g']}.9000", f"{w.address['g']}.9100",
                      f"{w.address['ex']}.9000"}

        out = os.path.join(self.workdir, "fetched")
        code = waitFetch(w, f"http://{DOMAIN}/bytes/{SIZE}", out, time.monotonic() + 40)
        self.assertEqual(code, "200", w.nodeLog("client")[-3000:])
        with open(out, "rb") as f:
            self.assertEqual(f.read(), body(SIZE))
        self.assertIn(f"webfixture: {w.address['ex']} GET /bytes/{SIZE}", w.log("web"))

        # Leak bait: an app binding to the uplink itself (bypassing the routes)
        # is stopped by the kill switch, not sent.
        leak = subprocess.run(["ip", "netns", "exec", w.ns["cl"], "curl", "-sS", "--max-time", "2",
                               "--interface", w.uplink["cl"], f"http://{WEB}/"], capture_output=True)
        self.assertNotEqual(leak.returncode, 0)
        # The guard's address is routed off the tunnel, but only its relay
        # ports are let out: anything else there is dropped, not sent.
        other = subprocess.run(["ip", "netns", "exec", w.ns["cl"], "curl", "-sS", "--max-time", "2",
                                f"http://{w.address['g']}:8080/"], capture_output=True)
        self.assertNotEqual(other.returncode, 0)
        # IPv6 is blocked, not leaked: even link-local multicast on the uplink.
        v6 = subprocess.run(["ip", "netns", "exec", w.ns["cl"], "ping", "-6", "-c", "1", "-W", "1", "-I",
                             w.uplink["cl"], "ff02::1"], capture_output=True)
        self.assertNotEqual(v6.returncode, 0)

        w.stop("guard")
        for url in (f"http://{DOMAIN}/bytes/1000", f"http://{WEB}/bytes/1000"):
            failed = subprocess.run(["ip", "netns", "exec", w.ns["cl"], "curl", "-sS", "--max-time", "3", "-o",
                                     "/dev/null", url], capture_output=True)
            self.assertNotEqual(failed.returncode, 0, url)
        self.stopCapture(capture)

        lines = captured(pcap)
        if os.environ.get("MESHVPN_SHOW_CAPTURE"):
            print(len(lines), "packets;", "\n".join(lines[:3] + lines[-3:]))
        self.assertTrue(lines, "capture saw nothing at all")
        for line in lines:
            self.assertNotIn("IP6", line, line)
            parts = line.split()
            # "TIME IP SRC > DST: ..."
            self.assertEqual(parts[1], "IP", line)
            self.assertIn(parts[4].rstrip(":"), relayPorts, f"packet to something other than a relay: {line}")
        self.assertTrue(any(f"{w.address['g']}.9001:" in line for line in lines), "no guard link traffic captured")

        # Clean stop: kill switch, routes, TUN and resolver restored.
        self.assertEqual(w.stop("client"), 0, w.nodeLog("client")[-2000:])
        self.assertNotIn("meshvpn-client-", w.inClient("nft", "list", "tables"))
        self.assertNotIn("0.0.0.0/1", w.inClient("ip", "route"))
        self.assertNotIn("mvpn", w.inClient("ip", "link"))
        with open(w.resolvConf) as f:
            self.assertEqual(f.read(), f"nameserver {DNS}\n")
        # And the exit removes its nftables table on stop.
        self.assertIn("meshvpn-exit-", run("ip", "netns", "exec", w.ns["ex"], "nft", "list", "tables"))
        self.assertEqual(w.stop("exit"), 0)
        self.assertNotIn("meshvpn-exit-", run("ip", "netns", "exec", w.ns["ex"], "nft", "list", "tables"))
