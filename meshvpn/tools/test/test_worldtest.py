"""The whole-world test (root; runs in CI): two clients, two NATs, SOCKS and VPN, relays only from the DHT.

The world is L{meshvpn.tools.worldtest.World}: a made-up internet
(198.18.0.0/15) with relays on public addresses, a web and a DNS server;
a VPN client behind a port-restricted NAT and a SOCKS client behind a
symmetric NAT, both knowing only the bootstrap node.  A capture on the VPN
client's uplink starts before the client.  Both fetch by name, byte-exact,
through 3-hop circuits (the SOCKS client's names are resolved at the exit).
The VPN client reads the DHT through circuits (doc/dht.md, "The directory
through circuits"): its capture holds, on this first start, DHT datagrams to
the bootstrap node only and, once its DHT circuits are built, nothing but its
link to its guard.  Then it is restarted with the state it saved (guards and
relays): a capture started before the restart holds only the link to its
guard, not one datagram, and it fetches byte-exact again.  Last, the guards
both clients use are killed and both fetch again through others.
"""

import os
import shutil
import subprocess
import tempfile
import time

from twisted.trial import unittest

from meshvpn.tools.netns import Netns, requireRoot
from meshvpn.tools.tunworld import DOMAIN
from meshvpn.tools.webfixture import body
from meshvpn.tools.worldtest import SOCKS, World

SIZE = 150_000


def packets(pcap):
    """The capture as C{(epoch seconds, protocol, destination "ip.port")}, one per packet."""
    from meshvpn.tools.netns import run

    out = []
    for line in run("tcpdump", "-nn", "-tt", "-r", pcap, check=False).splitlines():
        parts = line.split()
        if len(parts) > 5 and parts[1] == "IP":
            out.append((float(parts[0]), "UDP" if "UDP" in line else "TCP", parts[4].rstrip(":")))
        elif parts:
            out.append((float(parts[0]), parts[1], line))  # not IPv4: fails every check below
    return out


class WholeWorldTests(unittest.TestCase):
    timeout = 360

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

    def capture(self, name):
        """A capture of the VPN client's uplink, live when this returns. @return: (process, pcap path)."""
        w = self.world
        pcap = os.path.join(self.workdir, name)
        capture = w.netns.popen(w.ns["cl"], ["tcpdump", "-i", w.uplink["cl"], "-Q", "out", "-nn", "-U",
                                             "--immediate-mode", "-w", pcap, "not", "arp"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        capture.stderr.readline()  # listening
        return capture, pcap

    def stopCapture(self, capture, pcap):
        time.sleep(0.3)
        capture.terminate()
        capture.wait(10)
        seen = packets(pcap)
        self.assertTrue(seen)
        return seen

    def test_wholeWorld(self):
        w = self.world
        boot = "{}.{}".format(*w.endpoints["bootstrap"][1])
        guardLinks = {"{}.{}".format(*w.endpoints[g][0]) for g in w.endpoints if g.startswith("guard")}

        # -- first start: both clients browse; the VPN client's DHT reaches the bootstrap node only, until its
        # DHT circuits are built, and after that nothing but its links to guards leaves it
        capture, pcap = self.capture("first.pcap")
        w.startTwistdClient()
        w.startSocksClient()
        self.fetchWithin("client", 60)
        switched = self.waitForDhtCircuits("client")
        self.fetchWithin("socks-client", 60)
        time.sleep(2)  # DHT traffic goes on: samplings, the directory's live checks
        seen = self.stopCapture(capture, pcap)
        for when, proto, dst in seen:
            self.assertIn(dst, guardLinks | {boot}, f"packet to something other than a guard or the bootstrap: {dst}")
        self.assertTrue(any(dst == boot for _, _, dst in seen), "a first start asks the bootstrap node")
        late = [round(when - switched, 3) for when, _, dst in seen if dst == boot and when > switched]
        self.assertEqual(late, [], "DHT datagrams to the bootstrap node after the DHT circuits were built")
        firstGuards = {dst for _, _, dst in seen if dst in guardLinks}
        self.assertEqual(len(firstGuards), 1, firstGuards)

        # -- restarted with the state it saved (guards, relays): the only packets are the link to its guard
        self.assertEqual(w.stop("client"), 0)
        capture, pcap = self.capture("restart.pcap")
        started = time.monotonic()
        w.startTwistdClient()
        took = self.fetchWithin("client", 60) - started
        self.waitForDhtCircuits("client")
        deadline = time.monotonic() + 30
        while not self.dhtCircuits("client").get("counters", {}).get("answers"):
            if time.monotonic() > deadline:
                self.fail(f"no DHT answer through circuits after a restart: {self.dhtCircuits('client')}")
            time.sleep(0.2)
        seen = self.stopCapture(capture, pcap)
        for when, proto, dst in seen:
            self.assertEqual(proto, "TCP", f"a datagram after a restart with saved state: {dst}\n"
                             + "\n".join(x for x in w.nodeLog("client").splitlines()[-300:] if "DHT" in x))
        self.assertEqual({dst for _, _, dst in seen}, firstGuards, "packets to something other than its guard")
        self.assertEqual(self.dhtCircuits("client")["counters"].get("sends_direct", 0), 0)
        print(f"\nrestart with saved state: fetch by name after {took:.1f} s; {len(seen)} packets, all to its guard")
        guards = {self.waitForGuard("client"), self.waitForGuard("socks-client")}
        self.assertFalse(guards - {"guard1", "guard2", "guard3"}, guards)
        for client in ("client", "socks-client"):
            self.assertEqual(len(self._path(client)), 3, client)

        # -- the guards in use die (one or two of the three): both clients move on, the VPN client's DHT too
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
        self.waitForDhtCircuits("client")
        print(f"guards killed: {sorted(guards)}; fetch by name again after "
              + ", ".join(f"{c} {s:.1f} s" for c, s in recovered.items()))
        self.assertEqual(w.stop("client"), 0)
        self.assertEqual(w.stop("socks-client"), 0)

    def dhtCircuits(self, client):
        from meshvpn.control.status import readStatus

        return (readStatus(self.world.dataDirs[client]) or {}).get("dht_circuits") or {}

    def waitForDhtCircuits(self, client, seconds=30):
        """Until C{client}'s DHT goes through circuits (status: written every second). @return: the time seen."""
        deadline = time.monotonic() + seconds
        while (s := self.dhtCircuits(client)).get("mode") != "circuits" or not s.get("circuits"):
            if time.monotonic() > deadline:
                self.fail(f"{client}: DHT not through circuits after {seconds}s: {self.dhtCircuits(client)}")
            time.sleep(0.2)
        return time.time()

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
