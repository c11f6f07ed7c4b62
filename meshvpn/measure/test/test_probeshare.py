"""A reading counts only up to its measurer's share: busy measurers do not drag a target down, liars gain nothing from it."""

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from meshvpn.measure.probeshare import censoredEstimate, lowerMedian, shareCapacities

BIG = 10**9  # own capacity of a measurer that is never the bottleneck by size


def network(truth, teams, read, capacities=None):
    """
    One epoch's samples: C{{target: [(rate, measurer, team size)]}}, each
    measurer reading C{read(measurer, target)} bytes/s.
    """
    samples = {}
    for target, team in teams.items():
        samples[target] = [(read(m, target), m, len(team)) for m in team]
    caps = capacities or {m: BIG for m in truth}
    return samples, caps


def ring(names, size):
    """Each name measured by the C{size} names after it."""
    return {t: tuple(names[(i + k) % len(names)] for k in range(1, size + 1)) for i, t in enumerate(names)}


class CensoredEstimateTests(unittest.TestCase):
    def test_censoredReadingsDoNotSpeakAgainstHigherValues(self):
        # three lower bounds and two measurements at 100: 100
        self.assertEqual(censoredEstimate([(5, True), (5, True), (0, True), (100, False), (100, False)]), 100)
        # the same as measurements: the lower median
        self.assertEqual(censoredEstimate([(5, False), (5, False), (0, False), (100, False), (100, False)]), 5)

    def test_aLoneReadingAboveTheMedianLiftsNothing(self):
        self.assertEqual(censoredEstimate([(5, True), (5, True), (10**9, False)]), 5)
        self.assertEqual(censoredEstimate([(7, False)]), 7)
        self.assertIsNone(censoredEstimate([]))

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.tuples(st.integers(0, 1000), st.booleans()), min_size=1, max_size=12))
    def test_neverBelowThePlainLowerMedianNorAboveTheSecondHighest(self, readings):
        got = censoredEstimate(readings)
        values = sorted(v for v, _ in readings)
        self.assertGreaterEqual(got, lowerMedian(values))
        if len(values) >= 2:
            self.assertLessEqual(got, max(values[-2], lowerMedian(values)))

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.tuples(st.integers(0, 1000), st.booleans()), min_size=1, max_size=8),
           st.lists(st.tuples(st.integers(0, 1000), st.booleans()), max_size=7))
    def test_aHostileMinorityCannotPullBelowTheSmallestHonestReading(self, honest, hostile):
        """The attack: liars, fewer than the honest, read a target anything, censored or not."""
        hostile = hostile[: len(honest) - 1]
        got = censoredEstimate(honest + hostile)
        self.assertGreaterEqual(got, min(v for v, _ in honest))


class ShareCapacitiesTests(unittest.TestCase):
    def test_busyMeasurersDoNotDragHonestTargets(self):
        """
        Three of seven measurers read every target at a tenth of its share
        (their reads paused, as the loaded testnet's throttled middles'):
        the plain lower median misreads the targets they are the majority
        of; counted only up to their share, every target reads its truth.
        """
        names = [f"r{i}" for i in range(7)]
        truth = {n: 1000 * (i + 1) for i, n in enumerate(names)}
        busy = {"r1", "r2", "r3"}
        teams = ring(names, 5)

        def read(m, t):
            share = truth[t] / len(teams[t])
            return share / 10 if m in busy else share

        samples, caps = network(truth, teams, read)
        got = shareCapacities({7: samples}, caps)
        plain = {t: lowerMedian([n * r for r, _, n in s]) for t, s in samples.items()}
        self.assertTrue(any(plain[t] < truth[t] / 2 for t in names), plain)
        for t in names:
            self.assertAlmostEqual(got[t], truth[t], delta=1e-6)

    def test_aReadingAtTheMeasurersShareIsOnlyALowerBound(self):
        """A small measurer (own capacity 500, five targets: 100 each) read a big target at 100: it says no less."""
        names = [f"r{i}" for i in range(7)]
        truth = {n: 5000 for n in names}
        small = {"r1", "r2", "r3"}
        caps = {n: (500 if n in small else BIG) for n in names}
        teams = ring(names, 5)

        def read(m, t):
            return min(truth[t] / 5, caps[m] / 5)

        samples, _ = network(truth, teams, read)
        got = shareCapacities({7: samples}, caps)
        for t in names:
            self.assertEqual(got[t], truth[t])

    @settings(max_examples=100, deadline=None)
    @given(st.integers(0, 2**32 - 1), st.sampled_from(["zero", "half", "victimOnly"]), st.integers(1, 2))
    def test_hostileMeasurersCannotDeflateBeyondThePlainMedian(self, seed, lie, liars):
        """
        The attack: one or two of each victim's team of five lie low
        (every target, or only the victim); the victim never reads below
        the plain lower median nor below its smallest honest reading, and
        honest measurers keep their readings.
        """
        rnd = random.Random(seed)
        names = [f"r{i}" for i in range(9)]
        truth = {n: rnd.randint(1000, 100_000) for n in names}
        teams = ring(names, 5)
        hostile = set(rnd.sample(names, liars))
        victim = rnd.choice([n for n in names if n not in hostile])

        def read(m, t):
            share = truth[t] / 5
            if m not in hostile:
                return share
            if lie == "zero":
                return 0
            if lie == "half":
                return share / 2
            return 0 if t == victim else share

        samples, caps = network(truth, teams, read)
        got = shareCapacities({3: samples}, caps)
        for t in names:
            plain = lowerMedian([n * r for r, _, n in samples[t]])
            self.assertGreaterEqual(got[t], plain)
            honest = [n * r for r, m, n in samples[t] if m not in hostile]
            if len(honest) > len(samples[t]) - len(honest):
                self.assertGreaterEqual(got[t], min(honest) - 1e-6)

    @settings(max_examples=100, deadline=None)
    @given(st.integers(0, 2**32 - 1))
    def test_aLoneLiarLiftsNoTargetAboveItsHonestReadings(self, seed):
        """The attack: one measurer reads its friend at a million times its share; busy honest teammates or not."""
        rnd = random.Random(seed)
        names = [f"r{i}" for i in range(8)]
        truth = {n: rnd.randint(1000, 100_000) for n in names}
        teams = ring(names, 5)
        liar = rnd.choice(names)
        friend = rnd.choice([t for t in names if liar in teams[t]])
        busy = set(rnd.sample([n for n in names if n != liar], rnd.randint(0, 3)))

        def read(m, t):
            share = truth[t] / 5
            if m == liar and t == friend:
                return share * 10**6
            return share / 10 if m in busy else share

        samples, caps = network(truth, teams, read)
        got = shareCapacities({3: samples}, caps)
        self.assertLessEqual(got[friend], max(n * r for r, m, n in samples[friend] if m != liar) + 1e-6)

    def test_sameReadingsSameCapacitiesInAnyOrder(self):
        rnd = random.Random(4)
        names = [f"r{i}" for i in range(10)]
        teams = ring(names, 5)
        epochs = {}
        for e in range(3):
            samples = {t: [(rnd.randint(0, 5000), m, 5) for m in team] for t, team in teams.items()}
            epochs[e] = samples
        caps = {n: rnd.randint(1000, 30_000) for n in names}
        got = shareCapacities(epochs, caps)
        shuffled = {}
        for e in reversed(list(epochs)):
            items = list(epochs[e].items())
            rnd.shuffle(items)
            shuffled[e] = {t: rnd.sample(s, len(s)) for t, s in items}
        self.assertEqual(shareCapacities(shuffled, dict(reversed(list(caps.items())))), got)
