"""Real ``twistd -n meshvpn-*`` processes on loopback: start, log id, stop on SIGTERM with exit 0."""

import json
import os
import subprocess

from twisted.trial import unittest

from meshvpn.identity import NodeIdentity
from meshvpn.roles.node import NODE_FILE
from meshvpn.tools.processes import NodeProcess, twistdPath


class RelayProcessTests(unittest.TestCase):
    def startNode(self, role):
        node = NodeProcess(role, os.path.abspath(self.mktemp()))
        self.addCleanup(node.stop)
        return node.start()

    def test_relayLogsIdAndStopsCleanly(self):
        node = self.startNode("relay")
        info = node.waitReady()
        expected = NodeIdentity.loadOrCreate(node.dataDir).nodeIdHex
        self.assertEqual(info["node_id"], expected)
        self.assertTrue(info["udp"].startswith("127.0.0.1:"))
        self.assertTrue(info["stream"].startswith("127.0.0.1:"))
        self.assertIn(f"node id {expected}", node.logTail(100000))
        self.assertEqual(node.stop(), 0)
        self.assertFalse(os.path.exists(os.path.join(node.dataDir, NODE_FILE)))
        self.assertIn("Server Shut Down", node.logTail())

    def test_clientStartsAndStops(self):
        node = self.startNode("client")
        info = node.waitReady()
        self.assertNotIn("stream", info)
        self.assertEqual(node.stop(), 0)

    def test_sameIdentityAfterRestart(self):
        node = self.startNode("relay")
        first = node.waitReady()["node_id"]
        node.stop()
        again = NodeProcess("relay", node.dataDir).start()
        self.addCleanup(again.stop)
        self.assertEqual(again.waitReady()["node_id"], first)

    def runTwistd(self, *args):
        return subprocess.run(
            [twistdPath(), "-n", "--pidfile=", "--logfile", os.path.abspath(self.mktemp()), "meshvpn-relay", *args],
            capture_output=True, text=True, timeout=60,
        )

    def test_badConfigIsOneLine(self):
        out = self.runTwistd("--data-dir", self.mktemp(), "--udp", "nowhere:1")
        self.assertNotEqual(out.returncode, 0)
        lines = (out.stdout + out.stderr).strip().splitlines()
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("--udp", lines[0])

    def test_openKeyFileIsOneLine(self):
        dataDir = os.path.abspath(self.mktemp())
        NodeIdentity.loadOrCreate(dataDir)
        os.chmod(os.path.join(dataDir, "identity.key"), 0o644)
        out = self.runTwistd("--data-dir", dataDir, "--udp", "127.0.0.1:0", "--listen", "tcp:0:interface=127.0.0.1")
        self.assertEqual(out.returncode, 1)
        lines = (out.stdout + out.stderr).strip().splitlines()
        self.assertEqual(len(lines), 1, lines)
        self.assertIn(os.path.join(dataDir, "identity.key"), lines[0])


class NodeFileTests(unittest.TestCase):
    def test_nodeFileIsJSON(self):
        node = NodeProcess("relay", os.path.abspath(self.mktemp()))
        self.addCleanup(node.stop)
        node.start().waitReady()
        with open(os.path.join(node.dataDir, NODE_FILE)) as f:
            self.assertEqual(json.load(f)["role"], "relay")
