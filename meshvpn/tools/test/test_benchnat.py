"""`meshvpn bench nat`'s verdict on a pair (the matrix itself runs in meshvpn.nat.test.test_matrix)."""

from twisted.trial import unittest


class BenchNatVerdict(unittest.TestCase):
    """``bench nat`` fails a pair that connected and moved its bytes over the wrong path."""

    def test_wrongPathFails(self):
        from meshvpn.tools.benchnat import pairOk

        row = {"a": "symmetric", "b": "symmetric", "expected_path": "relay", "path": "direct",
               "connected": True, "verified": True}
        self.assertFalse(pairOk(row))
        self.assertTrue(pairOk(dict(row, path="relay")))
        self.assertFalse(pairOk(dict(row, path="relay", verified=False)))
