"""`meshvpn bench multipath` runs end to end and the client's automatic rule links the stream
(small sizes; timings are never checked).

The download must outlast the rule and the second leg's build and link: with
relays at 0.5 MB/s, 6 MB take about 12 s on one path, and the rule links
after 2 s of bulk (the client, waiting on slow relays, is nearly idle).  (3 MB
at 2 MB/s finished inside the relays' first-second burst, before a second leg
was linked, in a CI run.)
"""

import json
import subprocess
import sys

from twisted.trial import unittest


class MultipathBenchTests(unittest.TestCase):
    def test_runsAndReports(self):
        out = subprocess.run(
            [sys.executable, "-m", "meshvpn", "bench", "multipath", "--json", "--megabytes", "6", "--relay-rate", "500000"],
            capture_output=True, text=True, timeout=500,
        )
        self.assertEqual(out.returncode, 0, out.stdout[-2000:] + out.stderr[-2000:])
        result = json.loads(out.stdout.strip().splitlines()[-1])
        self.assertTrue(result["bytes_match"], result)
        self.assertGreaterEqual(result["multipath_streams_linked"], 1, result)
        self.assertTrue(result["multipath_chosen_by_rule"], result)  # by the default rule, not a byte count
        self.assertEqual(result["single_path_legs_linked"], 0, result)  # --multipath-after off is off
        for key in ("single_path_mbps", "multipath_mbps", "multipath_gain"):
            self.assertIsInstance(result[key], (int, float), key)
