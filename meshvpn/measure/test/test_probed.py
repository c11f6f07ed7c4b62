"""A relay's probed capacity from the window's probe reports: only the plan's readings, clipped to their measurer, the same in any order."""

import math
import random

from nacl.public import PrivateKey
from nacl.signing import SigningKey
from twisted.trial import unittest

from meshvpn.identity import NodeIdentity
from meshvpn.measure.probed import MEASURE_SHARE, probedCapacities
from meshvpn.measure.probeplan import Plan
from meshvpn.measure.probereadback import Sent, signReadBack
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

    def test_aMeasurerReadAtZeroDoesNotZeroItsTargets(self):
        """
        Relays 4 and 5 were read at 0 (busy, or they refused their echoes)
        and are two of relay 0's team of three: their readings of 0 do not
        count, where clipped to their 0 they held 0 at 0 (and, through it,
        its own targets next: every relay at 0 in a loaded testnet).
        """
        p = plan({0: (1, 4, 5), 1: (0, 2, 3), 2: (0, 1, 3), 3: (0, 1, 2), 4: (0, 1, 2), 5: (0, 1, 2)})
        reports = [report(0, 5, {1: 200, 2: 300, 3: 400, 4: 0, 5: 0}), report(1, 5, {0: 100, 2: 310, 3: 410, 4: 0, 5: 0}),
                   report(2, 5, {1: 210, 3: 390, 4: 0, 5: 0}), report(3, 5, {1: 190, 2: 290}),
                   report(4, 5, {0: 90}), report(5, 5, {0: 95})]
        got = probedCapacities({5: reports}, {5: p}.get)
        self.assertEqual((got[IDS[4]], got[IDS[5]]), (0, 0))
        self.assertEqual(got[IDS[0]], 3 * 100)  # 1's reading alone
        self.assertEqual(got[IDS[1]], 3 * 200)


def readBack(k, epoch, sent, millis=1000):
    """Target k's signed read-back: {measurer index: (bytes received, bytes it could not echo, in the whole 1 s slot)}."""
    return signReadBack(NODES[k], epoch, 60, millis,
                        [Sent(prefixOf(IDS[m]), r, b, 1 if b else 0) for m, (r, b) in sent.items()])


class ReadBackTests(unittest.TestCase):
    """A relay's measurer role, from what its targets read back, and its probe: the lower role, floored."""

    # six relays, each the target of the other five; everyone reads everyone at 100 B/s (x5: 500)
    P = plan({t: tuple(m for m in range(6) if m != t) for t in range(6)})

    def reports(self, epoch=5):
        return [report(k, epoch, {t: 100 for t in range(6) if t != k}) for k in range(6)]

    def probed(self, backs, roles=None):
        return probedCapacities({5: self.reports()}, {5: self.P}.get, {5: backs}, roles=roles)

    def test_measurersTheirTargetsCouldNotKeepUpWithAreNotLimited(self):
        backs = [readBack(t, 5, {m: (5000, 4000) for m in range(6) if m != t}) for t in range(6)]
        roles = {}
        self.assertEqual(self.probed(backs, roles), {i: 500 for i in IDS})
        self.assertEqual(roles[IDS[0]], (500, math.inf))

    def test_aMeasurersSendingTimesItsTargetsIsItsMeasurerRole(self):
        # every target echoed all it got: measurer k sent 40 + k B/s to each of its 5 targets
        backs = [readBack(t, 5, {m: (40 + m, 0) for m in range(6) if m != t}) for t in range(6)]
        roles = {}
        got = self.probed(backs, roles)
        self.assertEqual(roles[IDS[3]], (500, 5 * 43))
        # the lower role, never below half the target role
        self.assertEqual(got[IDS[3]], 250)
        backs = [readBack(t, 5, {m: (80 + m, 0) for m in range(6) if m != t}) for t in range(6)]
        self.assertEqual(self.probed(backs)[IDS[3]], 5 * 83)

    def test_aMeasurerThatSkippedIsHeldToAnHonestSplit(self):
        """The attack: relay 0 sends its targets nothing (its whole link for its own echoes): read back at 0."""
        backs = [readBack(t, 5, {m: (5000, 4000) for m in range(1, 6) if m != t}) for t in range(6)]
        roles = {}
        got = self.probed(backs, roles)
        self.assertEqual(roles[IDS[0]], (500, 0.0))
        self.assertEqual(got[IDS[0]], 500 * (1 - MEASURE_SHARE))
        self.assertEqual([got[i] for i in IDS[1:]], [500] * 5)

    def test_servingOnlyItsSmallTargetsDoesNotPass(self):
        """The attack, refined: relay 0 fills its small targets (cheap) and skips the big one, which holds most of the weight."""
        reports = [report(k, 5, {t: (1000 if t == 5 else 100) for t in range(6) if t != k}) for k in range(6)]
        backs = [readBack(t, 5, {m: (5000, 4000) for m in range(6) if m != t and not (t == 5 and m == 0)})
                 for t in range(6)]
        roles = {}
        got = probedCapacities({5: reports}, {5: self.P}.get, {5: backs}, roles=roles)
        # four small targets of 500 against one of 5000: the skipped one is most of the weight
        self.assertEqual(roles[IDS[0]][1], 0.0)
        self.assertEqual(got[IDS[0]], 250)

    def test_hostileTargetsCutAnHonestMeasurerAtMostByItsMeasuringShare(self):
        """The attack: targets claim an honest measurer sent them nothing."""
        honest = {m: (5000, 4000) for m in range(6)}

        def backs(liars):
            return [readBack(t, 5, {m: v for m, v in honest.items() if m != t and not (t in liars and m == 0)})
                    for t in range(6)]

        # two of its five targets (of equal weight): the weighted lower median is still an honest reading
        self.assertEqual(self.probed(backs({1, 2}))[IDS[0]], 500)
        # three, or all five: cut, but never below half what it shows as a target
        self.assertEqual(self.probed(backs({1, 2, 3}))[IDS[0]], 250)
        self.assertEqual(self.probed(backs({1, 2, 3, 4, 5}))[IDS[0]], 250)

    def test_withoutReadBacksTheTargetRoleStands(self):
        """Targets of a version that does not read back (or a window before it) leave the probe as it was."""
        self.assertEqual(self.probed([]), {i: 500 for i in IDS})
        self.assertEqual(probedCapacities({5: self.reports()}, {5: self.P}.get), {i: 500 for i in IDS})

    def test_onlyThePlansTargetsOfTheEpochCount(self):
        """A read-back from a relay the plan did not give the measurer, or of another epoch, counts for nothing."""
        p = plan({0: (1, 2), 1: (0, 2), 2: (0, 1), 3: (1, 2)})
        reports = [report(1, 5, {0: 100, 2: 100, 3: 100}), report(2, 5, {0: 100, 1: 100, 3: 100}),
                   report(0, 5, {1: 100, 2: 100})]
        backs = [readBack(1, 5, {0: (5000, 1)}), readBack(2, 5, {0: (5000, 1)}),
                 readBack(3, 5, {}), readBack(4, 5, {}), readBack(1, 4, {})]
        roles = {}
        probedCapacities({5: reports}, {5: p}.get, {5: backs}, roles=roles)
        self.assertEqual(roles[IDS[0]], (200, math.inf))

    def test_sameReadBacksSameCapacitiesInAnyOrder(self):
        rng = random.Random(7)
        backs = [readBack(t, 5, {m: (rng.randrange(1, 9000), rng.choice([0, 0, 1])) for m in range(6) if m != t})
                 for t in range(6)]
        want = self.probed(backs)
        for seed in range(5):
            shuffled = list(backs)
            random.Random(seed).shuffle(shuffled)
            self.assertEqual(self.probed(shuffled), want)
