"""Path selection by measured weight: heavier relays are drawn more, the path rules still hold, guards are earned."""

import collections
import random

from twisted.trial import unittest

from meshvpn.circuits.guards import GuardSet
from meshvpn.circuits.pathselect import UNMEASURED_SHARE, RelayInfo, choosePath, related, weighted


def relay(n, host, roles=("guard", "middle", "exit"), weight=None, flags=(), family=()):
    return RelayInfo(nodeId=bytes([n]) * 32, host=host, roles=frozenset(roles), weight=weight,
                     measuredFlags=frozenset(flags), family=frozenset(family))


class WeightedTests(unittest.TestCase):
    def test_drawnInProportion(self):
        rs = [relay(1, "198.18.0.1", weight=100), relay(2, "198.19.0.1", weight=300)]
        rng = random.Random(1)
        counts = collections.Counter(weighted(rs, rng).nodeId[0] for _ in range(8000))
        self.assertLess(abs(counts[2] / 8000 - 0.75), 0.03)

    def test_unmeasuredGetASmallShare(self):
        rs = [relay(1, "198.18.0.1", weight=100), relay(2, "198.19.0.1", weight=100), relay(3, "198.20.0.1")]
        rng = random.Random(2)
        counts = collections.Counter(weighted(rs, rng).nodeId[0] for _ in range(8000))
        expected = 100 * UNMEASURED_SHARE / (200 + 100 * UNMEASURED_SHARE)
        self.assertLess(abs(counts[3] / 8000 - expected), 0.03)

    def test_noMeasurementIsUniform(self):
        rs = [relay(i, f"198.{18 + i}.0.1") for i in range(4)]
        rng = random.Random(3)
        counts = collections.Counter(weighted(rs, rng).nodeId[0] for _ in range(8000))
        self.assertTrue(all(abs(c / 8000 - 0.25) < 0.03 for c in counts.values()))

    def test_aHeavyRelayNeverBreaksTheRules(self):
        # the heaviest relay shares a /16 with one relay and is the declared family of another
        rs = [relay(1, "198.18.0.1", weight=10**9), relay(2, "198.18.5.1", weight=10),
              relay(3, "198.30.0.1", weight=10, family=[bytes([1]) * 32])]
        rs += [relay(i, f"198.{40 + i}.0.1", weight=10) for i in range(4, 10)]
        rng = random.Random(4)
        for _ in range(500):
            path = choosePath(rs, rng=rng)
            for i in range(3):
                for j in range(i + 1, 3):
                    self.assertFalse(related(path[i], path[j]), path)

    def test_earnedGuardsFirst(self):
        rs = [relay(1, "198.18.0.1", roles=("guard",), weight=10, flags=("measured", "guard")),
              relay(2, "198.19.0.1", roles=("guard", "middle"), weight=1000, flags=("measured",))]
        rs += [relay(i, f"198.{30 + i}.0.1", roles=("middle", "exit"), weight=10) for i in range(3, 6)]
        rng = random.Random(5)
        self.assertEqual({choosePath(rs, rng=rng)[0].nodeId[0] for _ in range(300)}, {1})

    def test_guardSampleDrawsByWeight(self):
        rs = [relay(i, f"198.{18 + i}.0.1", roles=("guard",), weight=1 if i else 10**6) for i in range(30)]
        picks = collections.Counter()
        for seed in range(40):
            g = GuardSet(self.mktemp(), clock=_Clock(), rng=random.Random(seed))
            picks[g.choose(rs).nodeId[0]] += 1
        self.assertGreater(picks[0], 30)


class _Clock:
    def seconds(self):
        return 1_800_000_000.0
