"""`meshvpn bench load` and `meshvpn bench chaos` run end to end (tiny sizes; timings are never checked)."""

import json
import subprocess
import sys

from twisted.trial import unittest

from meshvpn.tools import benchchaos, benchload
from meshvpn.tools.benchloadproc import slope


def _bench(*args):
    out = subprocess.run([sys.executable, "-m", "meshvpn", "bench", *args, "--json"],
                         capture_output=True, text=True, timeout=900)
    return out, out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""


class LoadBenchTests(unittest.TestCase):
    def test_tinyLoadRuns(self):
        out, last = _bench("load", "--users", "6", "--duration", "8", "--ramp", "2", "--think", "1",
                           "--bulk-bytes", "300000", "--sample-every", "2")
        self.assertEqual(out.returncode, 0, out.stdout[-2000:] + out.stderr[-3000:])
        result = json.loads(last)
        self.assertGreaterEqual(result["relays"], 8)
        self.assertGreater(result["streams"], 0)
        for key in ("stream_success", "circuits_per_s", "aggregate_mbps", "relay_rss_mb_max"):
            self.assertIsInstance(result[key], (int, float), key)
        self.assertEqual(set(result["build_ms"]), {"p50", "p95", "p99"})
        self.assertEqual(len(result["relay_cpu_percent"]), result["relays"])

    def test_summarise(self):
        """The numbers come from the fetches: firsts time builds, failures are named, hung ones counted."""
        fetches = [
            # user, start, connect, total, bytes, error, first, bulk
            [0, 0.0, 0.3, 0.5, 2048, None, True, False],
            [1, 0.5, 0.4, 0.6, 8192, None, True, False],
            [1, 2.0, 0.1, 0.2, 2048, None, False, False],
            [2, 1.0, None, 60.0, 0, "hung", True, False],
            [0, 3.0, None, 0.1, 0, "NOT_ALLOWED", False, False],
        ]
        s = benchload.summarise({"users": 3, "fetches": fetches}, 10.0)
        self.assertEqual(s["streams"], 5)
        self.assertEqual(s["stream_success"], 0.6)
        self.assertEqual(s["failed_streams"], {"hung": 1, "NOT_ALLOWED": 1})
        self.assertEqual(s["hung_streams"], 1)
        self.assertEqual(s["users_with_a_circuit"], 2)
        self.assertEqual(s["build_ms"]["p99"], 400.0)

    def test_slope(self):
        self.assertAlmostEqual(slope([(0, 1.0), (1, 2.0), (2, 3.0)]), 1.0)
        self.assertIsNone(slope([(0, 1.0)]))


class ChaosBenchTests(unittest.TestCase):
    def test_tinyChaosRuns(self):
        out, last = _bench("chaos", "--users", "4", "--warmup", "4", "--settle", "4", "--stop-seconds", "2",
                           "--faults", "kill_guard,sigstop_relay,restart_bootstrap", "--guards", "5", "--exits", "3")
        self.assertEqual(out.returncode, 0, out.stdout[-2000:] + out.stderr[-3000:])
        result = json.loads(last)
        self.assertEqual([f["fault"] for f in result["faults"]], ["kill_guard", "sigstop_relay", "restart_bootstrap"])
        for row in result["faults"]:
            self.assertIn("recovered_within_2s_fraction", row)
            self.assertIn("hung_streams", row)
        self.assertIsInstance(result["recovered_within_2s_fraction"], float)

    def test_analyse(self):
        """Recovery is the first success that started after the fault; users hit are named by a failure."""
        result = {"t0_epoch": 100.0, "users": 2, "fetches": [
            [0, 9.0, 0.2, 0.5, 2048, None, False, False],   # before the fault
            [0, 10.5, None, 0.3, 0, "GENERAL_FAILURE", False, False],
            [0, 11.0, 0.2, 0.6, 2048, None, False, False],  # user 0 back at +1.6 s
            [1, 10.2, 0.2, 0.3, 2048, None, False, False],  # user 1 never noticed: +0.5 s
        ]}
        rows = benchchaos.analyse(result, [{"fault": "kill_guard", "node": "relay1", "at": 110.0}], 130.0)
        row = rows[0]
        self.assertEqual(row["users_hit"], 1)
        self.assertEqual(row["recovery_s"], 1.6)
        self.assertEqual(row["recovered_within_2s_fraction"], 1.0)
        self.assertEqual(row["failed_streams"], {"GENERAL_FAILURE": 1})
