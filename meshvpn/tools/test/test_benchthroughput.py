"""`meshvpn bench throughput` runs end to end (tiny sizes; timings are never checked,
only that the delay it claims to add is really there)."""

import json
import subprocess
import sys

from twisted.trial import unittest

from meshvpn.tools.netns import requireRoot

KEYS = ("throughput_mbps", "pipe_throughput_mbps", "rtt_ms_measured", "ttfb_ms_median", "ttfb_ms_direct_median",
        "cpu_s_per_gb", "quiet_circuits_taken", "ttfb_ms_first_stream_fresh_circuit", "ttfb_ms_warm_circuit_after_pause",
        "ttfb_ms_direct_after_pause")


def _bench(*extra):
    out = subprocess.run(
        [sys.executable, "-m", "meshvpn", "bench", "throughput", "--json", "--megabytes", "2", "--fetches", "3", *extra],
        capture_output=True, text=True, timeout=400,
    )
    return out


class ThroughputBenchTests(unittest.TestCase):
    def check(self, out):
        self.assertEqual(out.returncode, 0, out.stdout[-2000:] + out.stderr[-2000:])
        result = json.loads(out.stdout.strip().splitlines()[-1])
        self.assertTrue(result["bytes_match"], result)
        for key in KEYS:
            self.assertIsInstance(result[key], (int, float), key)
        return result

    def test_runsAndReports(self):
        result = self.check(_bench())
        # What the client's automatic multipath rule did is reported (0 legs expected on loopback; not
        # asserted: whether a 2 MB download even lasts the rule's 2 s depends on the machine).
        self.assertIsInstance(result["multipath_legs_linked"], int)

    def test_delayIsReal(self):
        """With --delay-ms D the path's round trip is at least 8·D: the delay is on every hop."""
        requireRoot(self, tools=("ip", "iptables"))
        result = self.check(_bench("--delay-ms", "3"))
        self.assertGreaterEqual(result["rtt_ms_measured"], 8 * 3 * 0.95)
        self.assertGreater(result["delay_q11_packets"], 0)
        # A fetch through the circuit crosses 4 delayed hops twice (BEGIN, then GET).
        self.assertGreaterEqual(result["ttfb_ms_median"], 16 * 3 * 0.95)
