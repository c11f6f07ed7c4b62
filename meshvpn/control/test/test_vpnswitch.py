"""The VPN turned off and on through the control API and the CLI, on a real client with a real TUN (root; runs in CI).

The world is L{TunWorld.buildDirectory}: relays found through the DHT, a
packet exit, the client behind a NAT box running ``twistd -n
meshvpn-client --bootstrap B --tun``.  The test talks to the client's
control API as a user on that machine would: ``curl`` inside the client's
namespace with the cookie from the data dir (``POST /v1/vpn``), then the
``meshvpn vpn down|up`` command.  After each *down* the namespace's routes,
nftables ruleset and resolver file are exactly as before the client
started and the web server sees the client's own (NAT) address; after each
*up* fetches by name go through the circuit again (the web server sees the
exit) and the API says ``up`` with the kill switch on.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from twisted.trial import unittest

from meshvpn.tools.netns import Netns, requireRoot
from meshvpn.tools.tunworld import DNS, DOMAIN, WEB, TunWorld
from meshvpn.tools.webfixture import body

SIZE = 100_000


class VpnSwitchTests(unittest.TestCase):
    timeout = 240

    def setUp(self):
        requireRoot(self, tools=("ip", "nft", "curl"))
        self.workdir = tempfile.mkdtemp(prefix="mvsw-")
        self.addCleanup(shutil.rmtree, self.workdir, True)  # runs last: after the namespaces' processes die
        self.world = TunWorld(Netns(self, "mvs"), self.addCleanup, self.workdir).buildDirectory()

    # -- the client namespace, as its user sees it

    def snapshot(self):
        w = self.world
        with open(w.resolvConf) as f:
            resolv = f.read()
        return {"routes": w.inClient("ip", "route"), "nft": w.inClient("nft", "list", "ruleset"), "resolv": resolv,
                "tun": [line for line in w.inClient("ip", "-o", "link").splitlines() if "mvpn" in line]}

    def api(self, method, path, body=None):
        """One request to the client's control API with ``curl`` in its namespace. @return: (status, JSON)."""
        dataDir = self.world.dataDirs["client"]
        with open(os.path.join(dataDir, "node.json")) as f:
            address = json.load(f)["control"]
        headers = os.path.join(self.workdir, "auth.headers")
        with open(os.open(headers, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            # the cookie goes in a 0600 file, never on a command line other users can read
            with open(os.path.join(dataDir, "control.cookie")) as c:
                f.write(f"Authorization: Bearer {c.read().strip()}\n")
        argv = ["curl", "-sS", "--max-time", "30", "-X", method, "-H", f"@{headers}", "-w", "\n%{http_code}"]
        if body is not None:
            argv += ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
        out = self.world.inClient(*argv, f"http://{address}{path}", timeout=40)
        text, _, code = out.rpartition("\n")
        return int(code), json.loads(text)

    def cli(self, *argv):
        """``meshvpn ARGV --data-dir D`` in the client's namespace. @return: (exit code, stdout, stderr)."""
        result = subprocess.run(["ip", "netns", "exec", self.world.ns["cl"], sys.executable, "-m", "meshvpn", *argv,
                                 "--data-dir", self.world.dataDirs["client"]], capture_output=True, text=True,
                                timeout=60)
        return result.returncode, result.stdout, result.stderr

    def fetch(self, url, maxTime=10):
        out = os.path.join(self.workdir, "fetched")
        if os.path.exists(out):
            os.unlink(out)
        code = self.world.inClient("curl", "-sS", "--max-time", str(maxTime), "-o", out, "-w", "%{http_code}", url,
                                   check=False, timeout=maxTime + 10)
        if code == "200":
            with open(out, "rb") as f:
                self.assertEqual(f.read(), body(int(url.rsplit("/", 1)[1])))
        return code

    def fetchWithin(self, seconds, url):
        deadline = time.monotonic() + seconds
        while self.fetch(url) != "200":
            if time.monotonic() > deadline:
                self.fail(f"no fetch of {url} within {seconds}s:\n" + self.world.nodeLog("client")[-4000:])
            time.sleep(0.3)

    def waitVpn(self, state, seconds):
        deadline = time.monotonic() + seconds
        while True:
            code, vpn = self.api("GET", "/v1/vpn")
            if vpn.get("state") == state:
                return vpn
            if time.monotonic() > deadline:
                self.fail(f"VPN not {state!r} within {seconds}s: {vpn}\n" + self.world.nodeLog("client")[-3000:])
            time.sleep(0.3)

    def lastRequester(self, path):
        """The source address the web server logged for the last request of C{path}."""
        lines = [line for line in self.world.log("web").splitlines() if f" GET {path}" in line]
        self.assertTrue(lines, f"the web server never saw {path}")
        return lines[-1].split("webfixture: ", 1)[1].split()[0]

    # -- the checks after down and after up

    def assertOff(self, before, tag):
        self.assertEqual(self.snapshot(), before, f"{tag}: routes, nftables or resolver not restored")
        # Off means off: the namespace reaches the internet by itself again, by name, from its own address.
        path = f"/bytes/{SIZE + 1}"
        self.assertEqual(self.fetch(f"http://{DOMAIN}{path}"), "200", tag)
        self.assertEqual(self.lastRequester(path), self.world.address["nat"], tag)

    def assertOn(self, n):
        w = self.world
        path = f"/bytes/{SIZE + 10 + n}"
        self.fetchWithin(60, f"http://{DOMAIN}{path}")
        self.assertEqual(self.lastRequester(path), w.address["ex"])  # through the circuit, out of the exit
        vpn = self.waitVpn("up", 15)
        self.assertEqual((vpn["running"], vpn["kill_switch"]), (True, "on"))
        self.assertIn("meshvpn-client-", w.inClient("nft", "list", "tables"))
        self.assertIn("0.0.0.0/1", w.inClient("ip", "route"))
        with open(w.resolvConf) as f:
            self.assertNotEqual(f.read(), f"nameserver {DNS}\n")  # the node's DNS on the TUN address
        # the kill switch holds again: an app bound to the uplink gets nothing out
        leak = w.inClient("curl", "-sS", "--max-time", "2", "--interface", w.uplink["cl"], f"http://{WEB}/",
                          check=False)
        self.assertNotIn("webfixture", leak)

    def test_offAndOnThroughApiAndCli(self):
        w = self.world
        before = self.snapshot()
        self.assertEqual(before["resolv"], f"nameserver {DNS}\n")
        w.startTwistdClient()
        self.assertOn(0)

        # -- the API
        took = time.monotonic()
        code, vpn = self.api("POST", "/v1/vpn", {"up": False})
        self.assertEqual(code, 200, vpn)
        self.assertEqual((vpn["state"], vpn["running"], vpn["kill_switch"]), ("stopped", False, "off"))
        self.assertOff(before, "after POST /v1/vpn {up: false}")
        code, vpn = self.api("POST", "/v1/vpn", {"up": True})
        self.assertEqual((code, vpn["running"], vpn["kill_switch"]), (200, True, "on"), vpn)
        self.assertOn(1)
        print(f"\nVPN off and on again through the API, first byte through the circuit after "
              f"{time.monotonic() - took:.2f} s (shared machine; includes the checks in between)")

        # -- the CLI
        code, out, err = self.cli("vpn", "down")
        self.assertEqual(code, 0, err)
        self.assertRegex(out, r"^vpn stopped  kill switch off")
        self.assertOff(before, "after meshvpn vpn down")
        code, out, err = self.cli("vpn", "down", "--json")  # already down: says so, changes nothing
        self.assertEqual((code, json.loads(out)["state"]), (0, "stopped"), err)
        code, out, err = self.cli("vpn", "up")
        self.assertEqual(code, 0, err)
        self.assertIn("kill switch on", out)
        self.assertOn(2)

        # -- a clean stop of the node after all that: everything as before
        self.assertEqual(w.stop("client"), 0, w.nodeLog("client")[-2000:])
        self.assertEqual(self.snapshot(), before)
        log = w.nodeLog("client")
        self.assertNotIn("Traceback", log)
        self.assertNotIn("Unhandled", log)
