"""``meshvpn up`` / ``down`` without root: the one-screen message, SOCKS-only on a loopback network, bootstrap lists.

The VPN mode (root, routes, resolv.conf, nftables, kill -9) is in
L{meshvpn.client.test.test_updown_netns}.
"""

import base64
import json
import os
import subprocess
import sys
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.trial import unittest

from meshvpn.client import bootstrapfile
from meshvpn.client.bootstrapsources import BootstrapSources, addUserNode, probeStun
from meshvpn.client.updown import STATE_FILE, Places, _alive, problemScreen, problems


def meshvpn(*args, timeout=180):
    return subprocess.run([sys.executable, "-m", "meshvpn", *args], capture_output=True, text=True, timeout=timeout)


class PreflightTests(unittest.TestCase):
    def sources(self, nodes=()):
        configDir = self.mktemp()
        for node in nodes:
            addUserNode(configDir, node)
        return BootstrapSources(configDir, self.mktemp())

    def test_everythingMissingOnOneScreen(self):
        found = problems(False, self.sources(), geteuid=lambda: 1000, which=lambda name: None,
                         tunPath=os.path.join(self.mktemp(), "tun"))
        whats = [what for what, fix in found]
        self.assertEqual(len(whats), 4, whats)
        self.assertEqual(whats[0], "not root")
        self.assertIn("nftables missing", whats)
        self.assertIn("no bootstrap node known", whats)
        screen = problemScreen(found, "VPN")
        self.assertLessEqual(len(screen.splitlines()), 24)
        self.assertIn("meshvpn up --socks-only", screen)
        self.assertIn("Nothing was changed", screen)

    def test_socksOnlyNeedsNoRoot(self):
        found = problems(True, self.sources(["127.0.0.1:9"]), geteuid=lambda: 1000, which=lambda name: None,
                         tunPath="/nonexistent")
        self.assertEqual(found, [])

    def test_placesForAUser(self):
        env = {"XDG_CONFIG_HOME": "/home/u/.config", "XDG_RUNTIME_DIR": "/run/user/1000"}
        places = Places.choose(environ=env, root=False)
        self.assertEqual(places.configFile, "/home/u/.config/meshvpn/client.toml")
        self.assertEqual(places.runDir, "/run/user/1000/meshvpn")
        root = Places.choose(root=True)
        self.assertEqual((root.configFile, root.dataDir, root.runDir),
                         ("/etc/meshvpn/client.toml", "/var/lib/meshvpn/client", "/run/meshvpn"))


class BootstrapSourceTests(unittest.TestCase):
    def test_signedFileTrustedInConfigDir(self):
        configDir = os.path.abspath(self.mktemp())
        os.makedirs(configDir)
        key = Ed25519PrivateKey.generate()
        with open(os.path.join(configDir, "bootstrap.json"), "wb") as f:
            f.write(bootstrapfile.sign(key, ["198.18.0.10:9000"], "test"))
        sources = BootstrapSources(configDir, self.mktemp(), packageDir=self.mktemp())
        self.assertEqual(sources.addressStrings(), [])
        self.assertIn("not a trusted bootstrap signer", sources.rows()[0][2])
        with open(os.path.join(configDir, "bootstrap-signers"), "w") as f:
            f.write(base64.b64encode(key.public_key().public_bytes_raw()).decode() + "\n")
        self.assertEqual(sources.addressStrings(), ["198.18.0.10:9000"])

    def test_orderAndDuplicates(self):
        configDir = self.mktemp()
        addUserNode(configDir, "127.0.0.2:9000")
        addUserNode(configDir, "127.0.0.2:9000")
        sources = BootstrapSources(configDir, self.mktemp(), {"bootstrap": ["127.0.0.1:9000", "127.0.0.2:9000"]})
        self.assertEqual(sources.addressStrings(), ["127.0.0.1:9000", "127.0.0.2:9000"])
        self.assertRaises(ValueError, addUserNode, configDir, "relay.example:9000")

    def test_probeSilence(self):
        answered, tried = probeStun(["127.0.0.1:9"], timeout=0.3)
        self.assertEqual((answered, tried), ([], ["127.0.0.1:9"]))


class SocksOnlyUpDownTests(unittest.TestCase):
    """A real loopback network (``meshvpn testnet``'s), then ``meshvpn up --socks-only`` and ``down``."""

    def setUp(self):
        self.configDir = os.path.abspath(self.mktemp())
        os.makedirs(self.configDir)
        self.config = os.path.join(self.configDir, "client.toml")
        self.dataDir = os.path.abspath(self.mktemp())
        self.runDir = os.path.abspath(self.mktemp())
        self.dirs = ["--config", self.config, "--data-dir", self.dataDir, "--run-dir", self.runDir]

    def writeConfig(self, bootstrap=None):
        with open(self.config, "w") as f:
            f.write('udp = "127.1.0.2:0"\nsocks-listen = "127.1.0.2:0"\ncontrol-listen = "127.1.0.2:0"\n'
                    'dht-sample-interval = 2\n')
            if bootstrap:
                f.write(f'bootstrap = ["{bootstrap}"]\n')

    def test_noBootstrapReachable(self):
        self.writeConfig(bootstrap="127.0.0.1:9")
        out = meshvpn("up", "--socks-only", "--probe", "0.5", *self.dirs)
        self.assertEqual(out.returncode, 1)
        self.assertIn("no bootstrap node reachable", out.stderr)
        self.assertIn("Nothing was changed", out.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.runDir, STATE_FILE)))

    def test_upWithSignedFileThenDown(self):
        from meshvpn.tools.testnet import Testnet

        net = Testnet(lambda line: None, base=os.path.abspath(self.mktemp()))
        self.addCleanup(net.stop)
        net.start(timeout=120)
        boot = net.nodes[0].info["udp"]
        # The client's only source: a signed file, trusted through the config dir.
        key = Ed25519PrivateKey.generate()
        signed = os.path.join(self.configDir, "network.json")
        with open(signed, "wb") as f:
            f.write(bootstrapfile.sign(key, [boot], "loopback"))
        with open(os.path.join(self.configDir, "bootstrap-signers"), "w") as f:
            f.write(base64.b64encode(key.public_key().public_bytes_raw()).decode() + "\n")
        self.writeConfig()
        listed = meshvpn("bootstrap", "list", "--json", "--bootstrap-file", signed, "--config", self.config,
                         "--data-dir", self.dataDir)
        self.assertEqual(json.loads(listed.stdout)[0]["address"], boot, listed.stderr)

        started = time.monotonic()
        up = meshvpn("up", "--socks-only", "--bootstrap-file", signed, *self.dirs)
        self.assertEqual(up.returncode, 0, up.stdout + up.stderr)
        print(f"\nmeshvpn up --socks-only: ready in {time.monotonic() - started:.1f} s (loaded machine)")
        self.assertIn("meshvpn is up: SOCKS5 on 127.1.0.2:", up.stdout)
        with open(os.path.join(self.runDir, STATE_FILE)) as f:
            pid = json.load(f)["pid"]
        os.kill(pid, 0)
        again = meshvpn("up", "--socks-only", *self.dirs)
        self.assertEqual(again.returncode, 1)
        self.assertIn("already up", again.stderr)

        down = meshvpn("down", *self.dirs)
        self.assertEqual(down.returncode, 0, down.stderr)
        self.assertIn(f"stopped the client (pid {pid})", down.stdout)
        self.assertFalse(_alive(pid))  # gone (or a zombie, where this container's init does not reap)
        self.assertFalse(os.path.exists(os.path.join(self.runDir, STATE_FILE)))
        # The routing table it saved is now a source for the next start.
        listed = meshvpn("bootstrap", "list", "--config", self.config, "--data-dir", self.dataDir)
        self.assertIn("saved", listed.stdout)
