"""`meshvpn bench multipath` runs end to end and links the stream (small sizes; timings are never checked)."""

import json
import subprocess
import sys

from twisted.trial import unittest


class MultipathBenchTests(unittest.TestCase):
    def test_runsAndReports(self):
        out = subprocess.run(
            [sys.executable, "-m", "meshvpn", "bench", "multipath", "--json", "--megabytes", "3"],
            capture_output=True, text=True, timeout=500,
        )
        self.assertEqual(out.returncode, 0, out.stdout[-2000:] + out.stderr[-2000:])
        result = json.loads(out.stdout.strip().splitlines()[-1])
        self.assertTrue(result["bytes_match"], result)
        self.assertGreaterEqual(result["multipath_streams_linked"], 1, result)
        for key in ("single_path_mbps", "multipath_mbps", "multipath_gain"):
            self.assertIsInstance(result[key], (int, float), key)
