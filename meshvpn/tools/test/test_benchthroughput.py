"""`meshvpn bench throughput` runs end to end (tiny sizes; timings are never checked)."""

import json
import subprocess
import sys

from twisted.trial import unittest


class ThroughputBenchTests(unittest.TestCase):
    def test_runsAndReports(self):
        out = subprocess.run(
            [sys.executable, "-m", "meshvpn", "bench", "throughput", "--json", "--megabytes", "2", "--fetches", "3"],
            capture_output=True, text=True, timeout=300,
        )
        self.assertEqual(out.returncode, 0, out.stdout[-2000:] + out.stderr[-2000:])
        result = json.loads(out.stdout.strip().splitlines()[-1])
        self.assertTrue(result["bytes_match"])
        for key in ("throughput_mbps", "ttfb_ms_median", "ttfb_ms_direct_median", "cpu_s_per_gb"):
            self.assertIsInstance(result[key], (int, float))
