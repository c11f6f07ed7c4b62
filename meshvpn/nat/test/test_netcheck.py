"""`meshvpn netcheck` against a real `twistd meshvpn-relay` STUN server (RFC 5780) on loopback."""

import json
import os
import socket
import subprocess
import sys

from twisted.trial import unittest

from meshvpn.nat.netcheck import formatReport
from meshvpn.tools.processes import NodeProcess


def _freePort(host):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()
    return port


class NetcheckTests(unittest.TestCase):
    def test_againstRelayOnLoopback(self):
        alt = ("127.0.0.2", _freePort("127.0.0.2"))
        node = NodeProcess("relay", os.path.abspath(self.mktemp()), ["--stun-alternate", f"{alt[0]}:{alt[1]}"])
        self.addCleanup(node.stop)
        info = node.start().waitReady()
        argv = [sys.executable, "-m", "meshvpn", "netcheck", "--stun", info["udp"], "--stun", "127.0.0.1:9"]
        out = subprocess.run(argv + ["--json"], capture_output=True, timeout=60, check=True).stdout
        report = json.loads(out)
        self.assertEqual((report["udp"], report["nat"], report["type"]), (True, False, "no-nat"))
        self.assertEqual((report["mapping"], report["filtering"]), ("endpoint-independent", "endpoint-independent"))
        self.assertEqual(report["rfc5780_server"], info["udp"])
        answered, silent = report["servers"]
        self.assertEqual(answered["other_address"], f"{alt[0]}:{alt[1]}")
        self.assertEqual(answered["response_origin"], info["udp"])
        self.assertIsInstance(answered["rtt_ms"], float)
        self.assertEqual((silent["server"], silent["answered"]), ("127.0.0.1:9", False))
        human = subprocess.run(argv, capture_output=True, timeout=60, check=True).stdout.decode()
        self.assertIn("NAT type: no-nat", human)
        self.assertIn("127.0.0.1:9: no answer", human)

    def test_formatUDPBlocked(self):
        lines = formatReport(
            {"udp": False, "type": "udp-blocked", "servers": [{"server": "198.18.0.1:3478", "answered": False}]}
        )
        self.assertIn("  * NAT type: udp-blocked", lines)
