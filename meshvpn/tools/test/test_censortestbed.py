"""Behind a censor (root): a plain client is stopped and says why; an obfs4 bridge line gets through, unseen.

The censor (L{meshvpn.tools.censortestbed}) drops every public relay and
DHT address, all UDP, and TLS-looking first payloads.  The test first
checks the censor itself (an HTTP request passes, a TLS-looking first
payload to the same server is dropped), then runs a plain client (it must
fail and name what it could not reach), then a client given only the
bridge line, under a capture of its uplink started before it: a 3-hop
circuit through the bridge, a byte-exact fetch through SOCKS, and a
capture holding only the bridge's address, no UDP and nothing starting
like TLS.
"""

import os
import shutil
import tempfile
import time

from twisted.trial import unittest

from meshvpn.control.status import readStatus
from meshvpn.tools import webfixture
from meshvpn.tools.censortestbed import BRIDGE_ADDRESS, BRIDGE_PORT, CensorWorld, analyseCapture
from meshvpn.tools.netns import Netns, requireRoot
from meshvpn.tools.tunworld import DNS, DOMAIN, WEB

SIZE = 300_000
PROBE = """
import socket, sys
s = socket.create_connection((sys.argv[1], 80), timeout=4)
s.sendall(bytes.fromhex(sys.argv[2]))
s.settimeout(4)
try:
    print("answered" if s.recv(100) else "closed")
except socket.timeout:
    print("silence")
"""

UDP_PROBE = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.sendto(bytes.fromhex("12340100000100000000000007657861"  "6d706c6503636f6d0000010001"), (sys.argv[1], 53))
try:
    s.recv(512)
    print("answered")
except socket.timeout:
    print("silence")
"""


class CensorTests(unittest.TestCase):
    timeout = 400

    def setUp(self):
        requireRoot(self, tools=("ip", "nft", "tcpdump", "curl", "obfs4proxy"))
        self.workdir = tempfile.mkdtemp(prefix="mvcensor-")
        self.addCleanup(shutil.rmtree, self.workdir, True)
        self.world = CensorWorld(Netns(self, "mvc"), self.addCleanup, self.workdir).build()

    def waitFor(self, what, predicate, timeout, name):
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline or self.world.procs[name].poll() is not None:
                self.fail(f"no {what}; {name} log:\n{self.world.nodeLog(name)[-3000:]}")
            time.sleep(0.25)

    def probe(self, payload):
        return self.world.inClient("python3", "-c", PROBE, WEB, payload.hex(), check=False, timeout=20).strip()

    def test_bridgeGetsThroughTheCensor(self):
        w = self.world
        # -- the censor works: plain HTTP passes, a TLS-looking first payload to the same server does not
        self.assertEqual(self.probe(b"GET /bytes/10 HTTP/1.0\r\n\r\n"), "answered")
        self.assertEqual(self.probe(b"\x16\x03\x01\x00\x05hello"), "silence")
        drops = w.drops()
        self.assertGreater(sum(v for k, v in drops.items() if k.startswith("TLS ClientHello")), 0, drops)

        # -- a plain client, bootstrapping from the public DHT: fails, and says what it could not reach
        w.startClient("plain", ["--bootstrap", "198.18.1.2:9000", "--socks-listen", "127.0.0.1:1081"])
        self.waitFor("DHT failure message", lambda: "198.18.1.2:9000" in _dhtFailures(w.nodeLog("plain")), 60, "plain")
        log = w.nodeLog("plain")
        self.assertNotIn("DHT joined", log)
        self.assertIn("UDP", _dhtFailures(log))
        w.stop("plain")
        self.assertGreater(w.drops()["public relays and DHT bootstrap"], 0)
        # UDP to an address the censor does not list is dropped too (a DNS query to the internet's server)
        self.assertEqual(w.inClient("python3", "-c", UDP_PROBE, DNS, check=False, timeout=20).strip(), "silence")
        self.assertGreater(w.drops()["all UDP"], 0)

        # -- a client given only the bridge line, captured from before its start
        pcap = os.path.join(self.workdir, "uplink.pcap")
        capture = w.startCapture(pcap)
        w.startClient("bridged", ["--transport", w.transportLine, "--bridge", w.bridgeLine,
                                  "--socks-listen", "127.0.0.1:1080"])
        dataDir = w.dataDirs["bridged"]

        def circuits():
            return (readStatus(dataDir) or {}).get("circuits", {}).get("circuits", [])

        built = self.waitFor("circuit through the bridge", circuits, 120, "bridged")
        self.assertEqual(len(built[0]["path"]), 3)
        self.assertEqual(built[0]["path"][0], w.nodeIds["bridge"][:len(built[0]["path"][0])])

        out = os.path.join(self.workdir, "fetched")
        w.inClient("curl", "-sS", "--max-time", "60", "--socks5-hostname", "127.0.0.1:1080", "-o", out,
                   f"http://{WEB}/bytes/{SIZE}", timeout=90)
        with open(out, "rb") as f:
            self.assertEqual(f.read(), webfixture.body(SIZE))
        time.sleep(1)
        capture.terminate()
        capture.wait(10)

        seen = analyseCapture(pcap, w.address["cl"])
        print(f"\ncensored uplink: {seen['packets']} packets, destinations {sorted(seen['destinations'])}, "
              f"censor drops {w.drops()}")
        self.assertGreater(seen["packets"], 20)
        self.assertEqual(seen["destinations"], {("tcp", BRIDGE_ADDRESS, BRIDGE_PORT)})
        self.assertEqual(seen["udp"], 0)
        self.assertEqual(seen["tls_like"], 0)
        w.stop("bridged")

        # -- VPN mode through the same bridge: the whole namespace's traffic, DNS included, in the tunnel
        pcap = os.path.join(self.workdir, "uplink-vpn.pcap")
        capture = w.startCapture(pcap)
        w.startClient("vpn", ["--transport", w.transportLine, "--bridge", w.bridgeLine, "--tun",
                              "--socks-listen", "127.0.0.1:1082"])
        vpnDir = w.dataDirs["vpn"]
        self.waitFor("VPN up through the bridge",
                     lambda: ((readStatus(vpnDir) or {}).get("tun") or {}).get("state") == "up", 120, "vpn")
        self.assertEqual(readStatus(vpnDir)["tun"]["circuit"][0], w.nodeIds["bridge"])
        out = os.path.join(self.workdir, "fetched-vpn")
        w.inClient("curl", "-sS", "--max-time", "60", "-o", out, f"http://{DOMAIN}/bytes/{SIZE}", timeout=90)
        with open(out, "rb") as f:
            self.assertEqual(f.read(), webfixture.body(SIZE))
        time.sleep(1)
        capture.terminate()
        capture.wait(10)
        seen = analyseCapture(pcap, w.address["cl"])
        print(f"censored uplink, VPN mode: {seen['packets']} packets, destinations {sorted(seen['destinations'])}")
        self.assertEqual(seen["destinations"], {("tcp", BRIDGE_ADDRESS, BRIDGE_PORT)})
        self.assertEqual(seen["udp"], 0)
        self.assertEqual(seen["tls_like"], 0)


def _dhtFailures(log):
    return "\n".join(line for line in log.splitlines() if "DHT bootstrap failed" in line or "censor" in line)
