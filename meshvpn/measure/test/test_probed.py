"""A relay's probed capacity from the window's probe reports: only the plan's readings, clipped to their measurer, the same in any order."""

import random

from nacl.public import PrivateKey
from nacl.signing import SigningKey
from twisted.trial import unittest

from meshvpn.identity import NodeIdentity
from meshvpn.measure.probed import probedCapacities
from meshvpn.measure.probeplan import Plan
from meshvpn.measure.probereports import Reading, signProbeReport
from meshvpn.measure.reports import prefixOf

_rng = random.Random(19)
NODES = [NodeIdentity(SigningKey(_rng.randbytes(32)), PrivateKey(_rng.randbytes(32))) for _ in range(6)]
IDS = [n.nodeId for n in NODES]


def report(k, epoch, readings):
    """Measurer k's signed readings: {target index: bytes/s over 1 s}."""
    return signProbeReport(NODES[k], epoch, 60, [Reading(prefixOf(IDS[t]), int(b), 1000) for t, b in readings.items()])


def plan(teams):
    return Plan(5, 10.0, 5.0, {IDS[t]: tuple(IDS[m] for m in team) for t, team in teams.items()})


class ProbedTests(unittest.TestCase):
    def test_onlyAssignedReadingsCountAndEachIsTheTeamsShare(self):
        p = plan({0: (1, 2, 3), 1: (0, 2, 3), 2: (0, 1, 3), 3: (0, 1, 2)})
        reports = [report(1, 5, {0: 100, 2: 300, 3: 400}), report(2, 5, {0: 110, 1: 200, 3: 410}),
                   report(3, 5, {0: 90, 1: 210, 2: 310}), report(0, 5, {1: 190, 2: 290, 3: 390}),
                   # a relay no plan puts in 0's team reads it at a million: dropped
                   report(4, 5, {0: 10**6})]
        got = probedCapacities({5: reports}, {5: p}.get)
        self.assertEqual(got[IDS[0]], 3 * 100)
        self.assertEqual(got[IDS[1]], 3 * 200)
        self.assertNotIn(IDS[4], got)
        shuffled = list(reports)
        random.Random(1).shuffle(shuffled)
        self.assertEqual(probedCapacities({5: shuffled}, {5: p}.get), got)

    def test_collusionIsClippedToTheMeasurersOwnCapacity(self):
        """The attack: two of a team of three read their friend at 10**9; they are small, so it is clipped."""
        p = plan({0: (1, 2, 3), 1: (2, 3, 4), 2: (1, 3, 4), 3: (1, 2, 4), 4: (1, 2, 3)})
        reports = [report(1, 5, {0: 10**9, 2: 10, 3: 10, 4: 10}), report(2, 5, {0: 10**9, 1: 10, 3: 10, 4: 10}),
                   report(3, 5, {0: 50, 1: 10, 2: 10, 4: 10}), report(4, 5, {1: 10, 2: 10, 3: 10})]
        got = probedCapacities({5: reports}, {5: p}.get)
        self.assertEqual(got[IDS[1]], 30)
        # their readings count at most their own capacity (30), times the team (3)
        self.assertEqual(got[IDS[0]], 3 * 30)
