"""The root-only test machinery itself: namespaces joined by veth, nftables inside, full cleanup."""

import subprocess

from twisted.trial import unittest

from meshvpn.tools.netns import Netns, requireRoot, run


class NetnsTests(unittest.TestCase):
    def test_vethPingAndNftables(self):
        """
        Two namespaces joined by a veth pair on 198.18.0.0/15 reach each other,
        nftables works inside one, and cleanup removes both namespaces.
        """
        requireRoot(self)
        net = Netns(self)

        def gone():
            self.assertNotIn(net.tag, run("ip", "netns", "list"))

        self.addCleanup(gone)  # cleanups run last-in first-out: this one after the deletions
        a, b = net.add("a"), net.add("b")
        net.veth(a, "198.18.0.1/24", b, "198.18.0.2/24")
        out = net.exec(a, "ping", "-c", "1", "-W", "2", "198.18.0.2")
        self.assertIn("1 received", out)
        net.exec(b, "nft", "add", "table", "inet", "t")
        self.assertIn("table inet t", net.exec(b, "nft", "list", "ruleset"))
