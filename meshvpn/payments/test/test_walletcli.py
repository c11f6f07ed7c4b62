"""``meshvpn wallet``: the balance as people and scripts read it, and no secret in it."""

import json

from twisted.trial import unittest

from meshvpn.cli import buildParser
from meshvpn.payments.test.test_gating import Keys
from meshvpn.payments.wallet import TokenWallet
from meshvpn.payments.walletcli import walletCommand

ISSUER = b"\x33" * 32


class WalletCommandTests(unittest.TestCase):
    def setUp(self):
        self.dir = self.mktemp()
        self.wallet = TokenWallet(self.dir)
        keys = Keys()
        self.tokens = [keys.issue() for _ in range(3)]
        for i, t in enumerate(self.tokens):
            self.wallet.add(ISSUER, t, 0 if i < 2 else 4_000_000_000, 4_100_000_000)

    def command(self, *argv):
        lines = []
        args = buildParser().parse_args(["wallet", "--wallet-dir", self.dir, *argv])
        self.assertEqual(walletCommand(args, lines.append), 0)
        return lines

    def test_balance(self):
        text = "\n".join(self.command())
        self.assertIn(f"issuer {ISSUER.hex()[:16]}…: 2 tokens spendable, 1 waiting", text)
        for t in self.tokens:
            self.assertNotIn(t.nonce.hex()[:16], text)
            self.assertNotIn(t.authenticator.hex()[:16], text)

    def test_balanceJSON(self):
        out = json.loads(self.command("balance", "--json")[0])
        self.assertEqual(out["issuers"][ISSUER.hex()]["usable"], 2)
        self.assertEqual(out["pending_purchases"], 0)

    def test_takeIsOncePerToken(self):
        """Two takers (the node, say, and a second node on the same wallet) never get the same token."""
        other = TokenWallet(self.dir)
        got = [self.wallet.take(ISSUER, 10), other.take(ISSUER, 10), self.wallet.take(ISSUER, 10)]
        self.assertIsNone(got[2])
        self.assertNotEqual(got[0].nonce, got[1].nonce)
        self.assertEqual(self.wallet.prune(4_100_000_000), 3)
