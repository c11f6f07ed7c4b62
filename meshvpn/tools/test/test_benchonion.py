"""``meshvpn bench circuit`` runs (tiny) and prints its keys; timings are not checked."""

import io
import json
import subprocess
import sys
from contextlib import redirect_stdout

from twisted.trial import unittest

from meshvpn.cli import main


class BenchCircuit(unittest.TestCase):
    def test_runsTinyInProcess(self):
        out = io.StringIO()
        with redirect_stdout(out):
            rc = main(["bench", "circuit", "--json", "--cells", "256", "--batch", "16", "--builds", "2",
                       "--tls-builds", "0", "--real-builds", "0"])
        self.assertEqual(rc, 0)
        result = json.loads(out.getvalue())
        self.assertEqual(result["cell_size"], 514)
        for key in ("crypto_us_origin_per_cell", "crypto_us_relay_middle_per_cell", "crypto_us_relay_exit_per_cell",
                    "relay_cells_per_s_inmemory", "build_time_inmemory_median_s", "create2_cpu_us_relay_ntor",
                    "create2_cpu_us_client_ntor", "create2_cpu_us_relay_ntor3", "cgo_us_per_cell_per_hop"):
            self.assertGreater(result[key], 0)
        self.assertIn(result["cgo_implementation"], ("c", "python"))
        self.assertIsNone(result["build_time_median_s"])

    def test_realProcessBuilds(self):
        """With relay processes (a testnet) and TLS loopback builds: the build_time_* keys are measured."""
        out = subprocess.run(
            [sys.executable, "-m", "meshvpn", "bench", "circuit", "--json", "--cells", "256", "--batch", "16",
             "--builds", "2", "--tls-builds", "2", "--real-builds", "3"],
            capture_output=True, text=True, timeout=300,
        )
        self.assertEqual(out.returncode, 0, out.stderr[-3000:])
        result = json.loads(out.stdout.strip().splitlines()[-1])
        for key in ("build_time_median_s", "build_time_p95_s", "build_time_tls_loopback_median_s",
                    "hybrid_build_time_median_s", "hybrid_build_time_tls_loopback_median_s"):
            self.assertGreater(result[key], 0)
        self.assertEqual(result["builds"], 3)

