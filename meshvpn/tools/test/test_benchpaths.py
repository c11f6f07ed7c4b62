"""`meshvpn bench paths` runs (tiny parameters) and is the same for the same seed."""

import io
import json
from contextlib import redirect_stdout

from twisted.trial import unittest

from meshvpn import cli
from meshvpn.circuits.guards import NEW_GUARDS_PER_WINDOW

FIELDS = {
    "relays", "hostile_relays", "clients", "paths", "hostile_share_guards", "hostile_share_exits",
    "hostile_guard_fraction", "hostile_exit_fraction", "hostile_guard_and_exit_fraction", "guards_connected_max",
    "within_goal", "wall_s",
}


def run(*extra):
    out = io.StringIO()
    with redirect_stdout(out):
        code = cli.main(["bench", "paths", "--json", "--relays", "40", "--hostile", "0.25", "--clients", "20",
                         "--paths", "3", *extra])
    return code, json.loads(out.getvalue())


class BenchPathsTests(unittest.TestCase):
    def test_tinyRunPrintsOneJSONObject(self):
        code, result = run("--seed", "3")
        self.assertEqual(code, 0)
        self.assertLessEqual(FIELDS, set(result))
        self.assertEqual((result["relays"], result["hostile_relays"], result["paths"]), (40, 10, 60))
        for key in ("hostile_guard_fraction", "hostile_exit_fraction", "hostile_guard_and_exit_fraction"):
            self.assertTrue(0 <= result[key] <= 1, key)
        self.assertEqual(result["guards_connected_max"], 1)  # nothing fails: one guard per client
        again = run("--seed", "3")[1]
        del again["wall_s"], result["wall_s"]
        self.assertEqual(again, result)

    def test_knockedOffGuardsBoundExposure(self):
        _, result = run("--dos", "0.9", "--paths", "30")
        self.assertGreater(result["honest_guards_offline"], 0)
        # 30 paths ten minutes apart: five hours, so at most one day's worth of new guards.
        self.assertLessEqual(result["guards_connected_max"], NEW_GUARDS_PER_WINDOW)
