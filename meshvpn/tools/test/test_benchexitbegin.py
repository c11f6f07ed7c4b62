"""`meshvpn bench exit-begin` runs and says what it measured (never a timing check)."""

from twisted.internet import defer, reactor
from twisted.trial import unittest

from meshvpn.tools import benchexitbegin


class ExitBeginBenchTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_runs(self):
        out = yield defer.ensureDeferred(benchexitbegin.measure(reactor, begins=10, warmup=2))
        self.assertEqual(out["begins"], 10)
        self.assertGreater(out["begin_to_connected_us_median"], 0)
        self.assertTrue(0 <= out["answered_in_the_same_call"] <= 1)
