"""Real processes: an unmodified curl through the client's SOCKS port and a 3-hop circuit."""

import hashlib
import shutil
import subprocess

from twisted.trial import unittest

from meshvpn.tools import webfixture
from meshvpn.tools.netns import inCI
from meshvpn.tools.testnet import Testnet

SIZE = 20 * 1000 * 1000


class CurlThroughTestnetTests(unittest.TestCase):
    def setUp(self):
        if shutil.which("curl") is None:
            if inCI():
                self.fail("curl is not installed (bin/install installs it)")
            raise unittest.SkipTest("curl is not installed")
        self.net = Testnet(lambda line: None)
        self.addCleanup(self.net.stop)
        self.net.start()
        self.web = self.net.startWeb()
        host, port = self.net.socksAddress()
        self.proxy = f"socks5h://{host}:{port}"

    def curl(self, url, *extra):
        return subprocess.run(["curl", "-sS", "--max-time", "120", "-x", self.proxy, *extra, url],
                              capture_output=True, timeout=150)

    def test_twentyMegabytesByteExact(self):
        host, port = self.web
        out = self.curl(f"http://{host}:{port}/bytes/{SIZE}")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(len(out.stdout), SIZE)
        self.assertEqual(hashlib.sha256(out.stdout).hexdigest(), webfixture.expectedDigest(SIZE))

    def test_rejectedPortIsRulesetReply(self):
        host, _ = self.web
        out = self.curl(f"http://{host}:25/")
        self.assertNotEqual(out.returncode, 0)
        # curl prints the SOCKS5 reply code in parentheses: 2 is "connection not allowed by ruleset"
        self.assertIn(b"Can't complete SOCKS5 connection", out.stderr)
        self.assertTrue(out.stderr.rstrip().endswith(b"(2)"), out.stderr)
