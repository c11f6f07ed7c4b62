"""`meshvpn bench flood` runs (tiny sizes: one relay process, a short flood) and prints one JSON object."""

import io
import json
from contextlib import redirect_stdout

from twisted.trial import unittest

from meshvpn import cli

FIELDS = {"honest_build_success", "honest_build_p95_s", "unloaded_build_p95_s", "relay_rss_mb_max", "create2_cost_us",
          "attacker", "relay_onion", "relay_links", "within_goal"}


class BenchFloodTests(unittest.TestCase):
    timeout = 120

    def test_tinyRun(self):
        out = io.StringIO()
        with redirect_stdout(out):
            code = cli.main(["bench", "flood", "--json", "--clients", "1", "--builds", "3", "--duration", "0.5",
                             "--flood-links", "2", "--link-flood", "4", "--handshakes", "10"])
        self.assertEqual(code, 0)
        result = json.loads(out.getvalue().strip().splitlines()[-1])
        self.assertLessEqual(FIELDS, set(result))
        self.assertGreater(result["attacker"]["create2_sent"], 0)
        self.assertGreater(result["relay_rss_mb_max"], 0)
