"""VPN mode with relays found only through the DHT, from behind a NAT (root; runs in CI).

The world is L{TunWorld.buildDirectory}: a bootstrap node that is no guard,
two guards and two middles, a packet exit, and a client behind a
port-restricted NAT box running ``twistd -n meshvpn-client --bootstrap B
--tun`` with every other option at its default.  A capture on the client's
uplink, started before the client, shows only relay traffic (DHT ports of
the relays and the bootstrap node, link ports of the guards).  The client
fetches by name byte-exact; the test prints how long that took from the
spawn of twistd to the first byte.  The kept host routes follow a change of
the default gateway; the guard in use is killed and fetches continue
through the other one; after stop the namespace's routes, nftables ruleset
and resolver file are as they were before the client started.
"""

import os
import shutil
import subprocess
import tempfile
import time

from twisted.trial import unittest

from meshvpn.control.status import readStatus
from meshvpn.tools.netns import Netns, requireRoot
from meshvpn.client.test.test_vpn_e2e import captured
from meshvpn.tools.tunworld import DNS, DOMAIN, WEB, TunWorld
from meshvpn.tools.webfixture import body

SIZE = 200_000
NEW_GATEWAY = "198.19.5.254"


class DirectoryVPNTests(unittest.TestCase):
    timeout = 150

    def setUp(self):
        requireRoot(self, tools=("ip", "nft", "tcpdump", "curl"))
        self.workdir = tempfile.mkdtemp(prefix="mvdir-")
        self.addCleanup(shutil.rmtree, self.workdir, True)  # runs last: after the namespaces' processes die
        self.world = TunWorld(Netns(self, "mvd"), self.addCleanup, self.workdir).buildDirectory()

    def snapshot(self):
        w = self.world
        with open(w.resolvConf) as f:
            resolv = f.read()
        return {"routes": w.inClient("ip", "route"), "nft": w.inClient("nft", "list", "ruleset"), "resolv": resolv}

    def fetch(self, maxTime=10):
        """One ``curl`` by name in the client. @return: (http code, seconds to first byte, when it started)."""
        out = os.path.join(self.workdir, "fetched")
        if os.path.exists(out):
            os.unlink(out)
        started = time.monotonic()
        result = subprocess.run(
            ["ip", "netns", "exec", self.world.ns["cl"], "curl", "-sS", "--max-time", str(maxTime), "-o", out,
             "-w", "%{http_code} %{time_starttransfer}", f"http://{DOMAIN}/bytes/{SIZE}"],
            capture_output=True, text=True)
        code, _, ttfb = result.stdout.partition(" ")
        if code == "200":
            with open(out, "rb") as f:
                self.assertEqual(f.read(), body(SIZE))
        return code, float(ttfb or 0), started

    def fetchWithin(self, seconds, maxTime=10):
        """Retry until a fetch by name succeeds. @return: (when the good one started, its first-byte delay)."""
        deadline = time.monotonic() + seconds
        while True:
            code, ttfb, started = self.fetch(maxTime)
            if code == "200":
                return started, ttfb
            if time.monotonic() > deadline:
                self.fail(f"no fetch by name within {seconds}s (last: {code!r}):\n"
                          + self.world.nodeLog("client")[-4000:])
            time.sleep(0.3)

    def status(self):
        return (readStatus(self.world.dataDirs["client"]) or {}).get("tun") or {}

    def waitFor(self, what, check, seconds):
        deadline = time.monotonic() + seconds
        while not check():
            if time.monotonic() > deadline:
                self.fail(f"{what} not within {seconds}s:\n" + self.world.nodeLog("client")[-3000:])
            time.sleep(0.2)

    def hostRoutes(self):
        return self.world.inClient("ip", "route", "show", "proto", "196")

    def startCapture(self):
        pcap = os.path.join(self.workdir, "uplink.pcap")
        proc = self.world.netns.popen(
            self.world.ns["cl"],
            # --immediate-mode: each packet reaches the file at once, not in ring blocks a stop could lose
            ["tcpdump", "-i", self.world.uplink["cl"], "-Q", "out", "-nn", "-U", "--immediate-mode", "-w", pcap,
             "not", "arp"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        proc.stderr.readline()  # "listening on ...": the capture is live
        return proc, pcap

    def test_relaysFromTheDHTOnly(self):
        w = self.world
        before = self.snapshot()
        capture, pcap = self.startCapture()

        # -- start-up: twistd spawn -> the first byte of a fetch by name, default options
        spawned = time.monotonic()
        w.startTwistdClient()  # node.json: the kill switch and the resolver are in place
        started, ttfb = self.fetchWithin(40, maxTime=20)
        startup = started - spawned + ttfb
        self.waitFor("state 'up'", lambda: self.status().get("state") == "up", 5)
        print(f"\nstart-up, twistd spawn -> first byte of http://{DOMAIN}/bytes/{SIZE} (default options): "
              f"{startup:.2f} s; the client logged 'VPN up' {self.status()['up_after_s']:.2f} s after its service "
              f"started")
        self.assertIn("VPN up: circuit", w.nodeLog("client"))
        self.assertLess(startup, 30)  # the goal is 10 s; this only catches a regression to the old 300 s sampling

        guardId = self.status()["circuit"][0]
        byId = {v: k for k, v in w.nodeIds.items()}
        guard = byId[guardId]
        self.assertIn(guard, ("guard1", "guard2"))
        routes = self.hostRoutes()
        self.assertIn(f"{w.endpoints[guard][0][0]} via {w.gateway}", routes)
        self.assertIn(f"198.18.1.2 via {w.gateway}", routes)  # the bootstrap node (DHT)

        # -- a new default gateway: the kept routes follow it, fetches go on
        w.netns.exec(w.ns["nat"], "ip", "addr", "add", f"{NEW_GATEWAY}/24", "dev", w.boxLan)
        w.inClient("ip", "route", "replace", "default", "via", NEW_GATEWAY)
        self.waitFor("host routes via the new gateway",
                     lambda: w.gateway not in self.hostRoutes() and NEW_GATEWAY in self.hostRoutes(), 10)
        self.fetchWithin(15)
        w.inClient("ip", "route", "replace", "default", "via", w.gateway)
        self.waitFor("host routes back via the first gateway", lambda: NEW_GATEWAY not in self.hostRoutes(), 10)

        # -- leak bait: the exceptions are the client's own, per protocol, not the relay addresses
        # (UDP to its guard's DHT port from another socket; TCP to that UDP port).  The guard's address
        # is the one with a host route outside the tunnel: the DHT goes through circuits in VPN mode, so
        # another relay's address is simply inside the tunnel.
        guardIp = w.endpoints[guard][0][0]
        bait = ["python3", "-c", "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                      f"s.bind(('', 45678)); s.sendto(b'bait', ('{guardIp}', 9000))"]
        self.assertNotEqual(subprocess.run(["ip", "netns", "exec", w.ns["cl"], *bait], capture_output=True)
                            .returncode, 0)  # EPERM from the kill switch
        tcp = subprocess.run(["ip", "netns", "exec", w.ns["cl"], "curl", "-sS", "--max-time", "2",
                              f"http://{guardIp}:9000/"], capture_output=True)
        self.assertNotEqual(tcp.returncode, 0)

        # -- the guard in use dies: the client moves to the other guard
        w.procs[guard].kill()
        w.procs[guard].wait()
        killed = time.monotonic()
        started, ttfb = self.fetchWithin(45)
        other = {"guard1": "guard2", "guard2": "guard1"}[guard]
        self.waitFor("a circuit through the other guard",
                     lambda: (self.status().get("circuit") or [None])[0] == w.nodeIds[other], 10)
        print(f"guard {guard} killed; fetch by name through {other} after {started + ttfb - killed:.2f} s")

        # -- only relay traffic left the client's uplink, from before the client started
        time.sleep(0.3)  # let the last packets land
        capture.terminate()
        capture.wait(10)
        allowed = {f"{ip}.{port}" for name, (_link, (ip, port)) in w.endpoints.items()}
        allowed |= {f"{ip}.{port}" for name, ((ip, port), _dht) in w.endpoints.items() if name.startswith("guard")}
        lines = captured(pcap)
        self.assertTrue(lines, "capture saw nothing at all")
        for line in lines:
            parts = line.split()
            self.assertEqual(parts[1], "IP", line)  # "TIME IP SRC > DST: ..."
            self.assertIn(parts[4].rstrip(":"), allowed, f"packet to something other than a relay: {line}")
        self.assertFalse([line for line in lines if ".45678 >" in line or f"{guardIp}.9000: Flags" in line])
        for g in ("guard1", "guard2"):
            ip, port = w.endpoints[g][0]
            self.assertTrue(any(f"> {ip}.{port}: Flags [S]" in line for line in lines), f"no SYN to {g}")

        # -- clean stop: routes, nftables and resolver as before
        self.assertEqual(w.stop("client"), 0, w.nodeLog("client")[-2000:])
        after = self.snapshot()
        self.assertEqual(after, before)
        self.assertEqual(before["resolv"], f"nameserver {DNS}\n")
        self.assertNotIn(WEB, before["routes"])
