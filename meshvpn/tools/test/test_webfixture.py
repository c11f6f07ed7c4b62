"""The local test web server serves deterministic bodies that a fetcher can check."""

import hashlib
import os
import subprocess
import sys
import time
import urllib.request

from twisted.trial import unittest

from meshvpn.tools import webfixture


class WebFixtureTests(unittest.TestCase):
    def test_servesCheckableBytes(self):
        portFile = os.path.abspath(self.mktemp())
        proc = subprocess.Popen([sys.executable, "-m", "meshvpn.tools.webfixture", "--port-file", portFile],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.addCleanup(lambda: (proc.kill(), proc.wait(), proc.stdout.close()))
        deadline = time.monotonic() + 30
        while not os.path.exists(portFile) and time.monotonic() < deadline:
            time.sleep(0.02)
        with open(portFile) as f:
            port = int(f.read())
        n = 300_001
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/bytes/{n}", timeout=30) as r:
            data = r.read()
        self.assertEqual(hashlib.sha256(data).hexdigest(), webfixture.expectedDigest(n))
        self.assertEqual(data, webfixture.body(n))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as r:
            self.assertIn(b"MeshVPN", r.read())
