"""`meshvpn bench weights` runs (tiny parameters), prints one JSON object, and is the same for the same seed."""

import io
import json
from contextlib import redirect_stdout

from twisted.trial import unittest

from meshvpn import cli


def run(*extra):
    out = io.StringIO()
    with redirect_stdout(out):
        code = cli.main(["bench", "weights", "--json", "--relays", "40", "--hostile", "0.2", "--circuits", "3000",
                         *extra])
    return code, json.loads(out.getvalue())


class BenchWeightsTests(unittest.TestCase):
    def test_tinyRunPrintsOneJSONObject(self):
        code, result = run("--seed", "3")
        self.assertEqual(code, 0)
        for key in ("capacity_correlation_honest", "hostile_weight_share_ratio", "worst_strategy", "strategies",
                    "hostile_capacity_share", "junk_traffic_ratio"):
            self.assertIn(key, result)
        self.assertEqual(set(result["strategies"]),
                         {"inflate", "deflate", "both", "sybil", "clique", "targeted", "swarm", "swarmall", "junkinflate",
                          "junk", "probedeflate", "unprobed"})
        self.assertEqual(result["swarm_trickles"], "idle capacity")
        self.assertTrue(result["history"])
        again = run("--seed", "3")[1]
        del again["cpu_seconds"], result["cpu_seconds"]
        self.assertEqual(again, result)

    def test_withoutHistory(self):
        code, result = run("--seed", "3", "--no-history", "--epochs", "1")
        self.assertEqual(code, 0)
        self.assertFalse(result["history"])
        self.assertEqual(result["attack_epochs"], 1)

    def test_theFirstSwarmModel(self):
        code, result = run("--seed", "3", "--free-trickles", "--swarm", "2", "--epochs", "1")
        self.assertEqual(code, 0)
        self.assertEqual(result["swarm_trickles"], "free")
        self.assertEqual(result["swarm_sybils_per_hostile"], 2)

    def test_nobodyLying(self):
        code, result = run("--hostile", "0")
        self.assertEqual(code, 0)
        self.assertNotIn("hostile_weight_share_ratio", result)

    def test_probesOnByDefaultAsInTheNetwork(self):
        # the default bench computes what the network computes: probes on, the network's team, window, pick
        code, result = run("--seed", "3", "--epochs", "1")
        self.assertEqual(code, 0)
        self.assertNotIn("design_study_not_in_network", result["probes"])
        self.assertEqual(result["probes"]["measurers_per_relay_epoch"], 5)
        self.assertEqual(result["probes"]["window_epochs"], 6)
        self.assertEqual(result["probes"]["pick"], "address")
        self.assertEqual(result["probes"]["seconds_per_epoch"], 20.0)
        self.assertIn("probedeflate", result["strategies"])
        # --probes 0: a network without probes
        off = run("--seed", "3", "--epochs", "1", "--probes", "0")[1]
        self.assertNotIn("probes", off)
        self.assertNotIn("probedeflate", off["strategies"])
        code, result = run("--seed", "3", "--epochs", "1", "--probes", "3", "--probe-window", "2")
        self.assertEqual(code, 0)
        self.assertEqual(result["probes"]["measurers_per_relay_epoch"], 3)
        self.assertIn("probedeflate", result["strategies"])
        # what the model runs, said in the JSON: the one slot's contention read back, unprobed relays held at
        # the quartile, and what it still assumes
        self.assertEqual(result["probes"]["contention"], "readback")
        self.assertEqual(result["probes"]["unprobed_held_at"], "quartile")
        self.assertIn("unprobed", result["strategies"])
        self.assertTrue(result["probes"]["assumed_not_modelled"])

    def test_probeContentionAndOldRelays(self):
        code, result = run("--seed", "3", "--epochs", "1", "--probes", "3", "--probe-window", "2",
                           "--probe-contention", "skip", "--probe-old", "0.25", "--probe-unprobed", "floor")
        self.assertEqual(code, 0)
        self.assertEqual(result["probes"]["contention"], "skip")
        self.assertEqual(result["probes"]["old_honest_fraction"], 0.25)
        self.assertEqual(result["probes"]["unprobed_held_at"], "floor")

    def test_sybilsAgeAsTheChainSawThem(self):
        # by default the sybils were seen in the whole ramp (the worst case); new ones weigh 1/6 of it
        code, old = run("--seed", "3", "--epochs", "1")
        self.assertEqual(code, 0)
        self.assertEqual(old["sybil_age_epochs"], 6)
        code, new = run("--seed", "3", "--epochs", "1", "--sybil-age", "1")
        self.assertEqual(code, 0)
        self.assertLess(new["strategies"]["sybil"]["weight_share"], old["strategies"]["sybil"]["weight_share"])
