"""The whole-world test (root; runs in CI): two clients, two NATs, SOCKS and VPN, relays only from the DHT.

The world is L{meshvpn.tools.worldtest.World}: a made-up internet
(198.18.0.0/15) with relays on public addresses, a web and a DNS server;
a VPN client behind a port-restricted NAT and a SOCKS client behind a
symmetric NAT, both knowing only the bootstrap node.  A capture on the VPN
client's uplink starts before the client.  Both fetch by name, byte-exact,
through 3-hop circuits (the SOCKS client's names are resolved at the exit);
then the guards they use are killed and both fetch again through others.
The capture holds only the client's own relay traffic: DHT to relays' DHT
ports, links to guards' link ports (the client reads the directory itself,
so its DHT traffic goes to the relays directly, not through its guard).
"""

import os
import shutil
import subprocess
import tempfile
import time

from twisted.trial import unittest

from meshvpn.client.test.test_vpn_e2e import captured
from meshvpn.tools.netns import Netns, requireRoot
from meshvpn.tools.tunworld import DOMAIN
from meshvpn.tools.webfixture import body
from meshvpn.tools.worldtest import SOCKS, World

SIZE = 150_000


class WholeWorldTests(unittest.TestCase):
    timeout = 240

    def setUp(self):
        requireRoot(self, tools=("ip", "nft", "tcpdump", "curl"))
        self.workdir = tempfile.mkdtemp(prefix="mvworld-")
        self.addCleanup(shutil.rmtree, self.workdir, True)
        self.world = World(Netns(self, "mvw"), self.addCleanup, self.workdir).build()

    def fetch(self, client, maxTime=10):
        """One curl by name from C{client} ("client": VPN, "socks-client": SOCKS). @return: the HTTP code."""
        w = self.world
        out = os.path.join(self.workdir, f"fetched-{client}")
        if os.path.exists(out):
            os.unlink(out)
        via = [] if client == "client" else ["--socks5-hostname", f"{SOCKS[0]}:{SOCKS[1]}"]
        ns = w.ns["cl"] if client == "client" else w.ns["cl2"]
        result = subprocess.run(["ip", "netns", "exec", ns, "curl", "-sS", "--max-time", str(maxTime), *via,
                                 "-o", out, "-w", "%{http_code}", f"http://{DOMAIN}/bytes/{SIZE}"],
                                capture_output=True, text=True)
        if result.stdout == "200":
            with open(out, "rb") as f:
                self.assertEqual(f.read(), body(SIZE), f"{client}: bytes differ")
        return result.stdout

    def fetchWithin(self, client, seconds):
        deadline = time.monotonic() + seconds
        while self.fetch(client) != "200":
            if time.monotonic() > deadline:
                self.fail(f"{client}: no fetch by name within {seconds}s:\n" + self.world.nodeLog(client)[-3000:])
            time.sleep(0.3)
        return time.monotonic()

    def test_wholeWorld(self):
        w = self.world
        pcap = os.path.join(self.workdir, "uplink.pcap")
        capture = w.netns.popen(w.ns["cl"], ["tcpdump", "-i", w.uplink["cl"], "-Q", "out", "-nn", "-U",
                                             "--immediate-mode", "-w", pcap, "not", "arp"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        capture.stderr.readline()  # listening: the capture is live before the client exists
        w.startTwistdClient()
        w.startSocksClient()
        self.fetchWithin("client", 60)
        self.fetchWithin("socks-client", 60)
        guards = {self.waitForGuard("client"), self.waitForGuard("socks-client")}
        self.assertFalse(guards - {"guard1", "guard2", "guard3"}, guards)
        for client in ("client", "socks-client"):
            self.assertEqual(len(self._path(client)), 3, client)

        # -- the guards in use die (one or two of the three): both clients move on
        for guard in guards:
            w.procs[guard].kill()
            w.procs[guard].wait()
        killed = time.monotonic()
        recovered = {c: self.fetchWithin(c, 60) - killed for c in ("client", "socks-client")}
        for client in ("client", "socks-client"):
            deadline = time.monotonic() + 15
            while w.guardOf(client) in guards and time.monotonic() < deadline:
                time.sleep(0.2)  # the status file catches up with the new circuit
            self.assertNotIn(w.guardOf(client), guards, client)
        print(f"\nguards killed: {sorted(guards)}; fetch by name again after "
              + ", ".join(f"{c} {s:.1f} s" for c, s in recovered.items()))

        # -- the VPN client's uplink: nothing but its relay traffic, from before it started
        time.sleep(0.3)
        capture.terminate()
        capture.wait(10)
        allowed = {f"{ip}.{port}" for _link, (ip, port) in w.endpoints.values()}
        allowed |= {f"{ip}.{port}" for name, ((ip, port), _dht) in w.endpoints.items() if name.startswith("guard")}
        lines = captured(pcap)
        self.assertTrue(lines)
        for line in lines:
            parts = line.split()
            self.assertEqual(parts[1], "IP", line)
            self.assertIn(parts[4].rstrip(":"), allowed, f"packet to something other than a relay: {line}")
        self.assertEqual(w.stop("client"), 0)
        self.assertEqual(w.stop("socks-client"), 0)

    def waitForGuard(self, client, seconds=15):
        """The guard of C{client}'s circuit once its status file shows one (written every few seconds)."""
        deadline = time.monotonic() + seconds
        while (guard := self.world.guardOf(client)) is None:
            if time.monotonic() > deadline:
                self.fail(f"{client}: no circuit in its status after {seconds}s")
            time.sleep(0.2)
        return guard

    def _path(self, client):
        from meshvpn.control.status import readStatus

        status = readStatus(self.world.dataDirs[client]) or {}
        tun = status.get("tun") or {}
        if tun.get("circuit"):
            return tun["circuit"]
        circuits = (status.get("circuits") or {}).get("circuits") or []
        used = [c for c in circuits if not c.get("spare")] or circuits
        return used[0]["path"] if used else []
