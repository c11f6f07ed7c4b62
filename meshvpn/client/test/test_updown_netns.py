"""``meshvpn up`` / ``down`` in VPN mode leave the system as they found it (root, namespaces; runs in CI).

A made-up internet with real relays (L{TunWorld.buildTwistd}); the client
namespace's routes (v4 and v6), policy rules, links, nftables ruleset and
resolv.conf are recorded before ``up``, and must read the same after
``down`` -- after a clean run, and after the client was killed with -9.
"""

import json
import os
import shutil
import signal
import sys
import tempfile
import time

from twisted.trial import unittest

from meshvpn.client.test.test_vpn_e2e import waitFetch
from meshvpn.client.updown import STATE_FILE
from meshvpn.tools.netns import Netns, requireRoot, run
from meshvpn.tools.tunworld import DOMAIN, TunWorld


class UpDownLeavesNoTraceTests(unittest.TestCase):
    def setUp(self):
        requireRoot(self, tools=("ip", "nft", "curl"))
        self.workdir = tempfile.mkdtemp(prefix="mvupdown-")
        self.addCleanup(shutil.rmtree, self.workdir, True)
        self.world = self.buildWorld()
        self.config = os.path.join(self.workdir, "client.toml")
        with open(self.config, "w") as f:
            f.write(self.configText())
        self.dataDir = os.path.join(self.workdir, "client-data")
        self.runDir = os.path.join(self.workdir, "client-run")
        self.dirs = ["--config", self.config, "--data-dir", self.dataDir, "--run-dir", self.runDir]
        self.addCleanup(self.downQuietly)

    def buildWorld(self):
        return TunWorld(Netns(self, "mvu"), self.addCleanup, self.workdir).buildTwistd()

    def configText(self):
        return f'bootstrap = ["{self.world.address["g"]}:9000"]\ndht-sample-interval = 5\n'

    def meshvpn(self, *args, timeout=180):
        return run("ip", "netns", "exec", self.world.ns["cl"], sys.executable, "-m", "meshvpn", *args,
                   check=False, timeout=timeout)

    def downQuietly(self):
        self.meshvpn("down", *self.dirs)

    def snapshot(self):
        return systemSnapshot(self.world.inClient)

    def assertSameSystem(self, before):
        assertSameSystem(self, before, self.snapshot())

    def up(self):
        started = time.monotonic()
        out = self.meshvpn("up", "--wait", "120", *self.dirs, timeout=200)
        self.assertIn("meshvpn is up", out, out + self.clientLog())
        print(f"\nmeshvpn up (VPN): up in {time.monotonic() - started:.1f} s (loaded machine)")
        fetched = os.path.join(self.workdir, "fetched")
        code = waitFetch(self.world, f"http://{DOMAIN}/bytes/2000", fetched, time.monotonic() + 40)
        self.assertEqual(code, "200", self.clientLog())
        with open(os.path.join(self.runDir, STATE_FILE)) as f:
            return json.load(f)["pid"]

    def clientLog(self):
        try:
            with open(os.path.join(self.runDir, "client.log"), errors="replace") as f:
                return f.read()[-3000:]
        except OSError:
            return ""

    def test_upDownThenKill9Down(self):
        before = self.snapshot()
        self.assertNotIn("meshvpn", before["nft"])

        self.up()
        during = self.snapshot()
        self.assertIn("meshvpn-client-", during["nft"])
        self.assertNotEqual(during["resolv"], before["resolv"])
        out = self.meshvpn("down", *self.dirs)
        self.assertIn("meshvpn is down", out)
        self.assertSameSystem(before)

        pid = self.up()
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
        left = self.snapshot()
        # What a -9 leaves: the kill switch (failing closed) and the rewritten resolver.
        self.assertIn("meshvpn-client-", left["nft"])
        self.assertNotEqual(left["resolv"], before["resolv"])
        out = self.meshvpn("down", *self.dirs)
        self.assertIn("restored", out)
        self.assertSameSystem(before)


def systemSnapshot(ns):
    """What ``up`` may change in a namespace (C{ns}: runs a command there), to compare with L{assertSameSystem}."""
    _waitAddressesSettled(ns)
    return {
        "routes": ns("ip", "route", "show", "table", "all"),
        "routes6": ns("ip", "-6", "route", "show", "table", "all"),
        "rules": ns("ip", "rule") + ns("ip", "-6", "rule"),
        "links": ns("ip", "-o", "link", "show").replace("\\", ""),
        "nft": ns("nft", "list", "ruleset"),
        "resolv": ns("cat", "/etc/resolv.conf"),
    }


def assertSameSystem(test, before, after):
    for key in before:
        test.assertEqual(_stable(after[key]), _stable(before[key]), key)


def _waitAddressesSettled(ns, timeout=15):
    """
    Wait until no IPv6 address of the namespace is still tentative.

    A fresh veth's link-local address goes through duplicate address
    detection first; its C{local fe80::...} route only appears when that
    ends, which would read as a change the client made.
    """
    deadline = time.monotonic() + timeout
    while ns("ip", "-6", "addr", "show", "tentative").strip() and time.monotonic() < deadline:
        time.sleep(0.2)


def _stable(text):
    """Lines without the counters and handles that change by themselves."""
    import re

    lines = []
    for line in text.splitlines():
        line = re.sub(r"\b(expires|used|handle) \d+\S*", "", line)
        lines.append(line.rstrip())
    return sorted(lines)
