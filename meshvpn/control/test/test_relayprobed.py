"""The control API's relay entries carry each relay's probed capacity, and `meshvpn relays` prints it."""

from twisted.trial import unittest

from meshvpn.control.cli import formatMeasured
from meshvpn.control.relayweights import measuredEntries, weightsSummary
from meshvpn.measure.aggregate import RelayMeasure


class Weights:
    epochLength = 20
    epoch = 7

    def __init__(self):
        self.m = {b"a": RelayMeasure(b"a", 1000.0, 10, 3, 2, frozenset({"measured"}), 5),
                  b"b": RelayMeasure(b"b", 3000.0, 30, 3, 2, frozenset({"measured"}))}
        self.p = {b"a": 12345.6}

    def measurement(self, n):
        return self.m.get(n)

    def report(self, n):
        return None

    def probedCapacity(self, n):
        return self.p.get(n)

    def status(self):
        return {"epoch": 7, "epoch_length": 20, "reports": 2, "measured": 2, "rejected": 0, "probed": 1}


class ProbedEntryTests(unittest.TestCase):
    def test_probedBesideTheMeasurement(self):
        got = measuredEntries(Weights(), [b"a", b"b", b"c"])
        self.assertEqual((got[b"a"]["probed"], got[b"b"]["probed"], got[b"c"]), (12345.6, None, None))
        self.assertIn("probed 12.3 KB/s", formatMeasured(got[b"a"]))
        self.assertIn("not probed", formatMeasured(got[b"b"]))
        self.assertEqual(weightsSummary(Weights())["probed"], 1)

    def test_seenBesideTheUptime(self):
        """The uptime is its partners' word (a colluder names any); beside it, the chain's epochs it was seen in."""
        got = measuredEntries(Weights(), [b"a", b"b"])
        self.assertEqual((got[b"a"]["uptime_s"], got[b"a"]["seen_epochs"], got[b"b"]["seen_epochs"]), (40, 5, None))
        self.assertIn("seen  5", formatMeasured(got[b"a"]))
        self.assertIn("seen  -", formatMeasured(got[b"b"]))
