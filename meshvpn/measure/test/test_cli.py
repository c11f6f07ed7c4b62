"""``meshvpn weights`` prints what a client's weights.json holds, or says clearly why it cannot."""

import io
import json
import os
from contextlib import redirect_stdout

from twisted.trial import unittest

from meshvpn import cli
from meshvpn.measure.aggregate import RelayMeasure
from meshvpn.measure.reports import Report
from meshvpn.measure.service import WEIGHTS_FILE, weightsJSON


class WeightsCommandTests(unittest.TestCase):
    def setUp(self):
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        a, b = b"\xaa" * 32, b"\xbb" * 32
        measures = {
            a: RelayMeasure(a, 125000.0, 125000, 5, 30, frozenset({"measured", "fast", "guard"}), 9),
            b: RelayMeasure(b, 0.0, 0, 1, 1, frozenset()),
        }
        reports = [Report(a, b"", 9, 3600, {b"\x01" * 16: (4000, 3)}, ())]
        with open(os.path.join(self.dir, WEIGHTS_FILE), "w") as f:
            json.dump(weightsJSON(9, 3600, measures, reports, 0), f)

    def run_(self, *extra):
        out = io.StringIO()
        with redirect_stdout(out):
            code = cli.main(["weights", "--data-dir", self.dir, *extra])
        return code, out.getvalue()

    def test_table(self):
        code, text = self.run_()
        self.assertEqual(code, 0)
        self.assertIn("1 relays measured", text)
        self.assertIn("aaaaaaaaaaaaaaaa", text)
        self.assertIn("125.0 KB/s", text)
        self.assertIn("30.0h     9", text)  # the streak its partners say, the chain's epochs it was seen in
        self.assertIn("fast,guard,measured", text)
        self.assertIn("epoch 9: 1 neighbours, 4.0 KB", text)
        self.assertNotIn("bbbbbbbb", text)
        self.assertIn("bbbbbbbb", self.run_("--all")[1])

    def test_json(self):
        body = json.loads(self.run_("--json")[1])
        self.assertEqual(body["relays"][0]["uptime"], 30 * 3600)
        self.assertEqual(body["relays"][0]["seen_epochs"], 9)

    def test_noWeightsYet(self):
        err = io.StringIO()
        from contextlib import redirect_stderr

        with redirect_stderr(err):
            code = cli.main(["weights", "--data-dir", self.mktemp()])
        self.assertNotEqual(code, 0)
        self.assertIn("no weights yet", err.getvalue())
