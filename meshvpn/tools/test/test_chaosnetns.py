"""`meshvpn bench chaos-netns`: its nftables rules and leak check, and one tiny run (root; runs under CI=true).

The run checks the JSON's shape, that the loss faults dropped packets, that
nothing left either client except to relays, and that the bench removed
every namespace it made -- never a timing.
"""

import json
import subprocess
import sys

from twisted.trial import unittest

from meshvpn.tools import chaosnetns
from meshvpn.tools.netns import requireRoot


class RulesTests(unittest.TestCase):
    def test_cutDropsBothDirectionsOfTheLinkPort(self):
        rules = chaosnetns.cutRules([("198.18.2.2", 9001)])
        self.assertEqual(rules, ["ip daddr 198.18.2.2 tcp dport 9001 counter drop",
                                 "ip saddr 198.18.2.2 tcp sport 9001 counter drop"])
        script = chaosnetns.ruleset(rules)
        self.assertIn(f"table inet {chaosnetns.TABLE}", script)
        self.assertIn("hook forward", script)

    def test_lossUsesNumgen(self):
        self.assertEqual(chaosnetns.lossRules(30, "udp"), ["meta l4proto udp numgen random mod 100 < 30 counter drop"])
        self.assertRaises(ValueError, chaosnetns.lossRules, 101, "udp")
        self.assertRaises(ValueError, chaosnetns.lossRules, 10, "icmp")

    def test_droppedPackets(self):
        listing = ("table inet meshvpn_chaos {\n chain forward {\n"
                   "  ip daddr 198.18.2.2 tcp dport 9001 counter packets 12 bytes 900 drop\n"
                   "  ip saddr 198.18.2.2 tcp sport 9001 counter packets 3 bytes 100 drop\n }\n}\n")
        self.assertEqual(chaosnetns.droppedPackets(listing), 15)

    def test_leaks(self):
        allowed = {"198.18.2.2.9001", "198.18.1.2.9000"}
        lines = ["12:00:00.000001 IP 198.19.5.2.40000 > 198.18.2.2.9001: Flags [S], seq 1, length 0",
                 "12:00:00.000002 IP 198.19.5.2.40001 > 198.18.100.53.53: 1+ A? files.meshvpn-example. (39)",
                 "12:00:00.000003 IP6 fe80::1 > ff02::2: ICMP6, router solicitation, length 16"]
        self.assertEqual(chaosnetns.leaks(lines, allowed), lines[1:])

    def test_merge(self):
        socks = {"t0_epoch": 100.0, "users": 2, "fetches": [[1, 1.0, 0.1, 0.2, 2048, None, True, False]]}
        vpn = {"t0_epoch": 99.0, "users": 1, "fetches": [[0, 3.0, None, 30.0, 0, "hung", True, False]]}
        merged = chaosnetns._merge(socks, vpn)
        self.assertEqual(merged["users"], 3)
        self.assertEqual(merged["t0_epoch"], 99.0)
        self.assertEqual(merged["fetches"], [[1, 2.0, 0.1, 0.2, 2048, None, True, False],
                                             [2, 3.0, None, 30.0, 0, "vpn hung", True, False]])


    def test_vpnHungStreamsCount(self):
        """A VPN user's fetch that got no answer is a hung stream like a SOCKS user's."""
        from meshvpn.tools.benchchaos import analyse

        merged = chaosnetns._merge(
            {"t0_epoch": 100.0, "users": 1, "fetches": [[0, 11.0, None, 30.0, 0, "hung", False, False]]},
            {"t0_epoch": 100.0, "users": 1, "fetches": [[0, 11.0, None, 30.0, 0, "stalled", False, False]]})
        [row] = analyse(merged, [{"fault": "cut_guard_links", "at": 110.0}], 150.0)
        self.assertEqual(row["failed_streams"], {"hung": 1, "vpn stalled": 1})
        self.assertEqual(row["hung_streams"], 2)


class ChaosNetnsBenchTests(unittest.TestCase):
    timeout = 600

    def test_tinyRun(self):
        requireRoot(self, tools=chaosnetns.TOOLS)
        out = subprocess.run([sys.executable, "-m", "meshvpn", "bench", "chaos-netns", "--json", "--socks-users", "3",
                              "--vpn-users", "1", "--warmup", "4", "--fault-seconds", "5", "--settle", "5", "--loss", "50"],
                             capture_output=True, text=True, timeout=540)
        self.assertEqual(out.returncode, 0, out.stdout[-2000:] + out.stderr[-3000:])
        result = json.loads(out.stdout.strip().splitlines()[-1])
        self.assertEqual([f["fault"] for f in result["faults"]], list(chaosnetns.FAULTS))
        for row in result["faults"]:
            for key in ("recovery_s", "recovered_within_2s_fraction", "failed_streams", "hung_streams", "dropped_packets"):
                self.assertIn(key, row)
        self.assertTrue(result["faults"][0]["nodes"])
        self.assertGreater(result["streams"], 0)
        self.assertIsInstance(result["recovered_within_2s_fraction"], float)
        self.assertFalse(result["leak_check"]["leaked"], result["leak_check"])
        for client in ("client", "socks-client"):
            self.assertGreater(result["leak_check"]["clients"][client]["packets"], 0)
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        self.assertNotIn(result["world"]["namespaces"], left)
