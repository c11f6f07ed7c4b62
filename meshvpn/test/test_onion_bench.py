"""``meshvpn bench circuit`` runs (tiny) and prints its keys; timings are not checked."""

import io
import json
from contextlib import redirect_stdout

from twisted.trial import unittest

from meshvpn.cli import main


class BenchCircuit(unittest.TestCase):
    def test_runsTiny(self):
        out = io.StringIO()
        with redirect_stdout(out):
            rc = main(["bench", "circuit", "--json", "--cells", "256", "--batch", "16", "--builds", "2", "--tls-builds", "0"])
        self.assertEqual(rc, 0)
        result = json.loads(out.getvalue())
        self.assertEqual(result["cell_size"], 514)
        for key in ("crypto_us_per_cell_per_hop", "relay_cells_per_s", "build_time_inmemory_median_s"):
            self.assertGreater(result[key], 0)
        self.assertIsNone(result["build_time_median_s"])
        self.assertIsNone(result["build_time_p95_s"])
