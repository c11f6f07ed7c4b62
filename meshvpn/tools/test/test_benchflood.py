"""`meshvpn bench flood` runs (tiny sizes: one relay process, a short flood) and prints one JSON object.

It runs in its own process: the bench runs a reactor of its own.
"""

import json
import subprocess
import sys

from twisted.trial import unittest

FIELDS = {"honest_build_success", "honest_build_p95_s", "unloaded_build_p95_s", "relay_rss_mb_max", "create2_cost_us",
          "attacker", "relay_onion", "relay_links", "within_goal"}


class BenchFloodTests(unittest.TestCase):
    def test_tinyRun(self):
        out = subprocess.run(
            [sys.executable, "-m", "meshvpn", "bench", "flood", "--json", "--clients", "1", "--builds", "3",
             "--duration", "0.5", "--flood-links", "2", "--link-flood", "4", "--handshakes", "10"],
            capture_output=True, text=True, timeout=120,
        )
        self.assertEqual(out.returncode, 0, out.stdout[-2000:] + out.stderr[-2000:])
        result = json.loads(out.stdout.strip().splitlines()[-1])
        self.assertLessEqual(FIELDS, set(result))
        self.assertGreater(result["attacker"]["create2_sent"], 0)
        self.assertGreater(result["relay_rss_mb_max"], 0)
