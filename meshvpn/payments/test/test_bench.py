"""``meshvpn bench tokens`` runs and prints one JSON object (the numbers themselves are not tested)."""

import json

from twisted.trial import unittest

from meshvpn.cli import main


class BenchTokensTests(unittest.TestCase):
    def test_runsAndPrintsJSON(self):
        lines = []
        from meshvpn.tools import benchtokens

        class Args:
            json = True
            count = 5

        self.assertEqual(benchtokens.run(Args(), lines.append), 0)
        result = json.loads(lines[0])
        self.assertEqual(result["tokens"], 5)
        self.assertGreater(result["exit_verify_per_s"], 0)
        self.assertEqual(result["variant"], "RSABSSA-SHA384-PSS-Deterministic")

    def test_commandExists(self):
        with self.assertRaises(SystemExit) as e:
            main(["bench", "tokens", "--help"])
        self.assertEqual(e.exception.code, 0)
