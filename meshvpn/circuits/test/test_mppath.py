"""The second leg's path and the bulk rule."""

import random

from twisted.trial import unittest

from meshvpn.circuits.mpbulk import BulkDetector
from meshvpn.circuits.mppath import chooseSecondLeg
from meshvpn.circuits.pathselect import RelayInfo, choosePath, related
from meshvpn.errors import NoPath

ALL = frozenset(("guard", "middle", "exit"))


def relays(n, family=None):
    out = []
    for k in range(n):
        out.append(RelayInfo(bytes([k]) * 32, f"10.{k}.0.1", ALL,
                             family=family(k) if family else frozenset()))
    return out


class SecondLegTests(unittest.TestCase):
    def test_distinctGuardAndMiddleSameExit(self):
        rng = random.Random(1)
        known = relays(12)
        for _ in range(200):
            first = choosePath(known, rng=rng)
            second = chooseSecondLeg(known, first, rng=rng)
            self.assertIs(second[2], first[2])
            for a in second[:2]:
                for b in first:
                    self.assertFalse(related(a, b))
            self.assertFalse(related(second[0], second[1]))

    def test_familyOfFirstGuardAvoided(self):
        known = relays(8)
        first = known[:3]
        # Relay 3 declares relay 0 (the first guard) as family: never on the second leg.
        known[3] = RelayInfo(known[3].nodeId, known[3].host, ALL, family=frozenset((known[0].nodeId,)))
        rng = random.Random(2)
        for _ in range(100):
            second = chooseSecondLeg(known, first, rng=rng)
            self.assertNotIn(known[3], second)

    def test_tooFewRelays(self):
        known = relays(4)
        self.assertRaises(NoPath, chooseSecondLeg, known, known[:3])

    def test_givenGuardMustFit(self):
        known = relays(8)
        self.assertRaises(NoPath, chooseSecondLeg, known, known[:3], guard=known[1])
        self.assertEqual(chooseSecondLeg(known, known[:3], guard=known[5])[0], known[5])


class BulkTests(unittest.TestCase):
    def test_afterThreshold(self):
        b = BulkDetector(threshold=1000)
        self.assertFalse(b.moving(999))
        self.assertTrue(b.moving(1))
        self.assertFalse(b.moving(10 ** 6))

    def test_flags(self):
        self.assertTrue(BulkDetector(want=True).moving(0))
        self.assertFalse(BulkDetector(want=False).moving(10 ** 9))
