"""``meshvpn bench tun --json`` runs (tiny parameters; root, runs in CI); never a timing check."""

import json
import subprocess
import sys

from twisted.trial import unittest

from meshvpn.tools.netns import requireRoot


class BenchTunTests(unittest.TestCase):
    def test_benchTunRunsTiny(self):
        requireRoot(self, tools=("ip", "nft", "curl", "ping"))
        out = subprocess.run([sys.executable, "-m", "meshvpn", "bench", "tun", "--json", "--bytes", "200000",
                              "--pings", "3"], capture_output=True, text=True, timeout=240)
        self.assertEqual(out.returncode, 0, out.stderr[-3000:])
        result = json.loads(out.stdout.strip().splitlines()[-1])
        for key in ("throughput_mbps", "rtt_ms_median", "rtt_ms_direct_median", "mesh_throughput_mbps", "cpu_s_per_gb",
                    "mesh_cpu_s_per_gb"):
            self.assertIsInstance(result[key], (int, float), key)
        self.assertEqual(result["bytes"], 200000)
        self.assertEqual(result["mesh_path"], "direct")
