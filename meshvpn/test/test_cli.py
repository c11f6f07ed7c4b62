"""The meshvpn command: id/keygen, and testnet --check as a real run."""

import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout

from twisted.trial import unittest

from meshvpn.cli import main
from meshvpn.identity import NodeIdentity


def runMain(argv):
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


class IdCommandTests(unittest.TestCase):
    def test_idWithoutKeysFails(self):
        d = self.mktemp()
        code, out, err = runMain(["id", "--data-dir", d])
        self.assertEqual(code, 1)
        self.assertIn("meshvpn keygen", err)
        self.assertFalse(os.path.exists(d))

    def test_keygenThenId(self):
        d = self.mktemp()
        code, out, _ = runMain(["keygen", "--data-dir", d])
        self.assertEqual(code, 0)
        ident = NodeIdentity.loadOrCreate(d)
        self.assertIn(ident.nodeIdHex, out)
        code, out, _ = runMain(["id", "--data-dir", d, "--json"])
        info = json.loads(out)
        self.assertEqual(info["node_id"], ident.nodeIdHex)
        self.assertEqual(len(info["identity_key_ed25519"]), 44)

    def test_corruptKeyIsOneLine(self):
        d = self.mktemp()
        runMain(["keygen", "--data-dir", d])
        os.chmod(os.path.join(d, "onion.key"), 0o604)
        code, out, err = runMain(["id", "--data-dir", d])
        self.assertEqual(code, 1)
        self.assertEqual(len(err.strip().splitlines()), 1)
        self.assertIn("onion.key", err)


class TestnetCommandTests(unittest.TestCase):
    def test_testnetCheck(self):
        out = subprocess.run(
            [sys.executable, "-m", "meshvpn", "testnet", "--check"], capture_output=True, text=True, timeout=300
        )
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        self.assertIn("bytes match", out.stdout)
        self.assertRegex(out.stdout, r"path relay\d -> (relay|exit)\d -> exit\d")
        self.assertIn("testnet: stopped", out.stdout)
        self.assertNotIn("exit -", out.stdout)  # every node stopped cleanly (no signal deaths)


class StatusCommandTests(unittest.TestCase):
    def test_statusOfRunningNode(self):
        from meshvpn.tools.processes import NodeProcess

        node = NodeProcess("client", os.path.abspath(self.mktemp()))
        self.addCleanup(node.stop)
        node.start().waitReady()
        import time

        deadline = time.monotonic() + 20
        while not os.path.exists(os.path.join(node.dataDir, "status.json")) and time.monotonic() < deadline:
            time.sleep(0.05)
        code, out, _ = runMain(["status", "--data-dir", node.dataDir])  # through the control API
        self.assertEqual(code, 0)
        self.assertIn("role client", out)
        code, out, _ = runMain(["status", "--data-dir", node.dataDir, "--json"])
        self.assertEqual(json.loads(out)["node"]["role"], "client")

    def test_statusWithoutNode(self):
        code, out, err = runMain(["status", "--data-dir", self.mktemp()])
        self.assertEqual(code, 1)
        self.assertIn("no node running", err)


class FormatStatusTests(unittest.TestCase):
    def test_circuitsStreamsBytes(self):
        from meshvpn.control.status import formatStatus

        text = formatStatus({
            "node": {"node_id": "ab" * 32, "role": "client", "socks": "127.0.0.1:1080"},
            "circuits": {"circuits": [{"path": ["11" * 32, "22" * 32, "33" * 32], "spare": False, "bytes_sent": 47,
                                       "bytes_received": 9000, "streams": [{"id": 1, "target": "198.18.0.1:80",
                                                                            "state": "open", "sent": 47, "received": 9000}]}],
                         "build_times_s": [0.004]},
        })
        self.assertIn("circuit 11111111 -> 22222222 -> 33333333  (in use)  sent 47 B  received 9000 B", text)
        self.assertIn("stream 1 198.18.0.1:80 open", text)
        self.assertIn("4.0 ms", text)

    def test_vpnState(self):
        from meshvpn.control.status import formatStatus

        waiting = formatStatus({"node": {"node_id": "ab" * 32, "role": "client"},
                                "tun": {"state": "waiting-for-relays", "detail": "knows 2 relays", "up_after_s": None}})
        self.assertIn("vpn: waiting-for-relays -- knows 2 relays", waiting)
        up = formatStatus({"node": {"node_id": "ab" * 32, "role": "client"},
                           "tun": {"state": "up", "detail": "circuit aa -> bb -> cc", "up_after_s": 0.4}})
        self.assertIn("vpn: up -- circuit aa -> bb -> cc  (up 0.40 s after start)", up)
