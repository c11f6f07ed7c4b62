"""``meshvpn exit-policy FILE``: the operator's view of what the network will see."""

import json
import os

from twisted.trial import unittest

from meshvpn.test.test_cli import runMain
from meshvpn.exit.test.test_policytor import REDUCED_FILE, REDUCED_SUMMARY


class ExitPolicyCommandTests(unittest.TestCase):
    def write(self, text):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_reducedPolicy(self):
        code, out, err = runMain(["exit-policy", REDUCED_FILE, "--check", "198.18.0.9:443"])
        self.assertEqual((code, err), (0, ""))
        self.assertIn(f"(390 characters, 119 bytes):\n  {REDUCED_SUMMARY}\n", out)
        self.assertIn("    14  accept *:443", out)
        self.assertIn("check 198.18.0.9:443: accept, by rule 14 (line 15): accept *:443", out)
        self.assertIn("would choose this exit", out)
        self.assertIn("(MeshVPN default, never reached)", out)

    def test_checkRejected(self):
        code, out, _ = runMain(["exit-policy", REDUCED_FILE, "--check", "198.18.0.9:25"])
        self.assertIn("check 198.18.0.9:25: reject, by rule 73 (line 74): reject *:*", out)
        self.assertIn("would not choose", out)
        code, out, _ = runMain(["exit-policy", REDUCED_FILE, "--check", "10.0.0.1:443"])
        self.assertIn("reject, by rule 1 (MeshVPN default): reject private:*", out)
        code, out, _ = runMain(["exit-policy", REDUCED_FILE, "--check", "198.18.0.7:443", "--own", "198.18.0.7"])
        self.assertIn("reject, by rule 1", out)

    def test_json(self):
        code, out, _ = runMain(["exit-policy", REDUCED_FILE, "--json", "--check", "[2001:db8::1]:443"])
        info = json.loads(out)
        self.assertEqual(info["summary"]["ipv4"]["text"], REDUCED_SUMMARY)
        self.assertEqual(info["summary"]["ipv4"]["descriptor_bytes"], 119)
        self.assertEqual(info["check"]["verdict"], "accept")
        self.assertEqual(info["check"]["rule"], "accept *:443")
        self.assertTrue(info["check"]["clients_choose_this_exit"])

    def test_warningsAndMaskedRejects(self):
        path = self.write("accept *:80\naccept6 1.2.3.4:*\nreject 148.0.0.0/6:443\naccept *:443\nreject *:*\naccept *:22\n")
        code, out, _ = runMain(["exit-policy", path])
        self.assertEqual(code, 0)
        self.assertIn("IPv4 address with accept6; rule ignored", out)
        self.assertIn("'accept *:22' and every rule after it can never match", out)
        # 2^26 addresses refused for 443 before 'accept *:443': Tor's summary leaves 443 out
        self.assertIn("(9 characters, 3 bytes):\n  accept 80\n", out)

    def test_cutSummarySaysWhatIsLeftOut(self):
        path = self.write(",".join(f"reject *:{p}" for p in range(1, 2000, 2)) + ",accept *:*")
        code, out, _ = runMain(["exit-policy", path])
        self.assertIn("cut at 1000 characters as Tor cuts it: clients will not pick this exit for accepted ports "
                      "524,526,", out)

    def test_errorsAreOneLine(self):
        for argv, expected in (
            ([self.write("accept *:80\nreject 10.0.0.0/0033:*\n")], "line 2: 'reject 10.0.0.0/0033:*': mask /0033"),
            ([self.write("accept *:\u0668\u0660")], "bad port"),
            ([os.path.join(self.mktemp(), "missing")], "No such file"),
            ([REDUCED_FILE, "--check", "example.com:443"], "--check 'example.com:443'"),
            ([REDUCED_FILE, "--own", "not-an-ip"], "--own"),
        ):
            code, out, err = runMain(["exit-policy", *argv])
            self.assertEqual(code, 1, argv)
            self.assertEqual(len(err.strip().splitlines()), 1, err)
            self.assertIn(expected, err)
