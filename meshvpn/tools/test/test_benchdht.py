"""`meshvpn bench dht` runs (tiny parameters; timings are never checked in tests)."""

import io
import json
from contextlib import redirect_stdout

from twisted.trial import unittest

from meshvpn import cli
from meshvpn.tools.dhtsim import HeapClock

FIELDS = {
    "nodes", "churn", "loss", "lookups", "lookup_success", "hops_median", "hops_p95", "lookup_time_median_s",
    "lookup_time_p95_s", "messages_per_lookup", "wall_s", "hostile_sample_share", "hostile_host_share", "samples",
    "attack", "disjoint_paths",
}


class BenchTests(unittest.TestCase):
    def test_tinyRunPrintsOneJSONObject(self):
        out = io.StringIO()
        argv = ["bench", "dht", "--nodes", "40", "--churn", "0.2", "--loss", "0.05", "--lookups", "30",
                "--records", "5", "--duration", "120", "--seed", "1", "--json"]
        with redirect_stdout(out):
            self.assertEqual(cli.main(argv), 0)
        result = json.loads(out.getvalue())
        self.assertLessEqual(FIELDS, set(result))
        self.assertEqual((result["nodes"], result["churn"], result["loss"], result["lookups"]), (40, 0.2, 0.05, 30))
        self.assertGreater(result["lookup_success"], 0.5)
        self.assertEqual(result["hostile_sample_share"], 0.0)

    def test_tinyAttackedRuns(self):
        """Each attack runs its real behaviour in the simulator and the numbers come out (not judged here)."""
        for attack in ("eclipse", "evict", "hijack", "sybil"):
            out = io.StringIO()
            argv = ["bench", "dht", "--nodes", "40", "--churn", "0.1", "--loss", "0.0", "--lookups", "20",
                    "--records", "5", "--samples", "5", "--duration", "60", "--seed", "2", "--hostile", "0.2",
                    "--attack", attack, "--json"]
            with redirect_stdout(out):
                self.assertEqual(cli.main(argv), 0)
            result = json.loads(out.getvalue())
            self.assertEqual((result["attack"], result["hostile"]), (attack, 0.2))
            self.assertEqual(result["hostile_host_share"], 0.2)
            self.assertGreater(result["samples"], 0)
            if attack == "sybil":
                self.assertGreater(result["hostile_identity_share"], 0.4)


class HeapClockTests(unittest.TestCase):
    def test_orderCancelReset(self):
        clock = HeapClock(100.0)
        ran = []
        clock.callLater(2, ran.append, "b")
        a = clock.callLater(1, ran.append, "a")
        c = clock.callLater(3, ran.append, "c")
        d = clock.callLater(0.5, ran.append, "d")
        d.cancel()
        c.reset(0.1)
        self.assertEqual(len(clock.getDelayedCalls()), 3)
        clock.advance(1)
        self.assertEqual(ran, ["c", "a"])
        self.assertFalse(a.active())
        self.assertEqual(clock.seconds(), 101.0)
        clock.advance(5)
        self.assertEqual(ran, ["c", "a", "b"])
