"""``meshvpn testnet --payments --check`` as a real run: Monero regtest, issuer, gated exits, a paying client.

Real processes all the way (about two minutes here): the README's command,
checked for the purchase, the confirmations, the spend and every byte.
Skipped without Monero installed; fails instead under CI=true.
"""

import subprocess
import sys

from twisted.trial import unittest

from meshvpn.tools.moneroregtest import available
from meshvpn.tools.netns import inCI


class TestnetPaymentsTests(unittest.TestCase):
    timeout = 900

    def test_paymentsCheck(self):
        reason = available()
        if reason:
            if inCI():
                self.fail(f"{reason} (CI=true: the Monero tests must run, not skip)")
            raise unittest.SkipTest(reason)
        out = subprocess.run(
            [sys.executable, "-m", "meshvpn", "testnet", "--payments", "--check"],
            capture_output=True, text=True, timeout=840,
        )
        text = out.stdout + out.stderr
        self.assertEqual(out.returncode, 0, text[-6000:])
        self.assertRegex(text, r"wallet: purchase of 10 tokens from issuer [0-9a-f]{16}…: pay 0\.01 XMR \(10000000000 atomic units\) to \w+")
        self.assertIn("wallet: 2 of 2 confirmations: paid", text)
        # The issuer was named by its node id, reached through a circuit, and its key checked in the DHT.
        self.assertIn("(from its record in the DHT)", text)
        self.assertIn("wallet: reaching the issuer through the SOCKS5 proxy", text)
        self.assertRegex(text, r"wallet: the issuer's key for epoch \d+ is the one it published in the DHT")
        self.assertRegex(text, r"exit\d carried \d+ unpaid stream\(s\) to the issuer's API")
        self.assertIn("wallet: received 10 tokens", text)
        self.assertIn("bytes match", text)
        self.assertRegex(text, r"client spent [3-9] token\(s\); exits' receipts: [3-9] accepted")
        self.assertRegex(text, r"exit\d accepted [3-9] token\(s\)")
        self.assertNotIn("exit -", text)  # every node stopped cleanly
