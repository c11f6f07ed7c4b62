"""A weight ramps by the epochs of the chain a relay was confirmed in, not by the streak its partners name.

The streak is the weighted median of what a relay's confirming partners
say.  Where those partners are few (a sparse epoch), a colluder can be the
weightier of them and name any streak: in the forged-reports testnet the
pair gave relay3 a streak of 100 while the honest relays stood at 0 to 3,
and relay3's path weight rose to 2.33 times its share of the probes while
its bandwidth was held at the network's (doc/measurement.md, *Limits*).
The epochs of the chain a relay was confirmed in (by a partner, or read
by the probes) are agreed from the reports and never exceed the epochs the
chain spans, whatever anyone says.
"""

from twisted.trial import unittest

from meshvpn.measure.aggregate import Params, computeWeights
from meshvpn.measure.reports import prefixOf
from meshvpn.measure.test.test_aggregate import network, reports
from meshvpn.measure.window import Chain, confirmedAfter

HONEST_STREAK = 2
NAMED = 0xFFFF  # the streak the colluder names


def sparsePair():
    """
    A network in which relay C{target} has few confirming partners: the biggest relay, C{colluder}, which
    names it L{NAMED}, and the three smallest, which say C{HONEST_STREAK} as every other link does.  The
    colluder holds more of the weight than those three together, so the weighted median is its word.
    @return: C{(ids, reports, colluder, target, honest)}, C{honest} a relay untouched.
    """
    ids, caps, _, traffic = network(n=30, circuits=3000)
    order = sorted(range(len(ids)), key=lambda k: caps[k])
    colluder, target, honest = order[-1], order[len(order) // 2], order[len(order) // 2 + 1]
    keep = {colluder, *order[:3]}
    table = [{p: (b, HONEST_STREAK) for p, (b, _) in t.items()} for t in traffic]
    pt = prefixOf(ids[target])
    # the target's other links are gone from both ends' reports (links count only where both report them)
    for k in range(len(ids)):
        if k != target and k not in keep:
            table[k].pop(pt, None)
    table[target] = {prefixOf(ids[k]): (traffic[target].get(prefixOf(ids[k]), (20_000, 0))[0], HONEST_STREAK)
                     for k in keep}
    for k in keep:
        table[k][pt] = table[target][prefixOf(ids[k])]
    pc = prefixOf(ids[colluder])
    table[target][pc] = (table[target][pc][0], NAMED)
    table[colluder][pt] = (table[colluder][pt][0], NAMED)
    return ids, reports(ids, table), ids[colluder], ids[target], ids[honest]


def perBandwidth(m, nodeId):
    return m[nodeId].weight / m[nodeId].bandwidth


class SelfNamedStreakTests(unittest.TestCase):
    params = Params(rampEpochs=6, guardEpochs=24)

    def test_theColluderNamesTheStreak(self):
        """The attack, as the streak alone reads it: the target is at the full ramp, the honest relays at 2/6."""
        ids, rs, _, target, honest = sparsePair()
        m = computeWeights(rs, params=self.params)
        self.assertIn("measured", m[target].flags)
        self.assertEqual(m[target].streak, NAMED)
        self.assertEqual(m[honest].streak, HONEST_STREAK)
        self.assertGreater(perBandwidth(m, target), 2.9 * perBandwidth(m, honest))

    def test_theChainsEpochsRampEveryRelayAlike(self):
        """With the chain's confirmed epochs, the target ramps as the honest relays do, whatever its partner names."""
        ids, rs, _, target, honest = sparsePair()
        m = computeWeights(rs, params=self.params, confirmedEpochs={i: 1 for i in ids})
        self.assertAlmostEqual(perBandwidth(m, honest), 2 / 6, places=3)
        self.assertAlmostEqual(perBandwidth(m, target), 2 / 6, places=2)  # (a weight is whole bytes/s)
        # the streak is still what the partners say, and decides the guard flag (no relay has one here)
        self.assertEqual(m[target].streak, NAMED)
        self.assertFalse(any("guard" in x.flags for x in m.values()))


class ChainRampTests(unittest.TestCase):
    def test_aChainRampsItsRelaysOverItsFirstEpochs(self):
        """Step by step from the anchor: the weight per byte of bandwidth is min(1, epochs confirmed / 6)."""
        ids, _, _, traffic = network(n=20, circuits=1500)
        rs = reports(ids, traffic)
        chain = Chain(0)
        for e in range(8):
            chain.step(e, computeWeights(rs, prior=chain.prior, confirmedEpochs=chain.confirmed))
            self.assertEqual(set(chain.confirmed.values()), {e + 1})
            self.assertAlmostEqual(perBandwidth(chain.measures, ids[3]), min(1.0, (e + 1) / 6), places=3)

    def test_aNewcomerRampsFromItsFirstConfirmedEpoch(self):
        ids, _, _, traffic = network(n=20, circuits=1500)
        confirmed = {i: 7 for i in ids[1:]}  # ids[0] is new to the chain
        m = computeWeights(reports(ids, traffic), confirmedEpochs=confirmed)
        self.assertAlmostEqual(perBandwidth(m, ids[0]), 1 / 6, places=3)
        self.assertAlmostEqual(perBandwidth(m, ids[1]), 1.0, places=3)
        self.assertEqual(confirmedAfter(confirmed, m)[ids[0]], 1)

    def test_anEpochWithoutAPartnerDoesNotCount(self):
        ids, _, _, traffic = network(n=20, circuits=1500)
        m = computeWeights(reports(ids, traffic))
        lonely = {ids[0]: m[ids[0]].__class__(ids[0], 0.0, 0, 0, 0, frozenset())}
        self.assertEqual(confirmedAfter({ids[0]: 3}, lonely), {ids[0]: 3})


class ProbedEpochTests(unittest.TestCase):
    """An epoch in which the probes read a relay counts toward its age, as a confirming partner does."""

    def quiet(self):
        """A network in which C{ids[0]} carried nothing this epoch (no link, still reporting) but was probed."""
        ids, caps, _, traffic = network(n=20, circuits=1500)
        table = [dict(t) for t in traffic]
        p0 = prefixOf(ids[0])
        table[0] = {}
        for t in table[1:]:
            t.pop(p0, None)
        probed = {i: c * 1000 for i, c in zip(ids, caps)}
        return ids, reports(ids, table), probed

    def test_aProbedEpochCounts(self):
        ids, rs, probed = self.quiet()
        m = computeWeights(rs, probed=probed, confirmedEpochs={i: 1 for i in ids})
        self.assertEqual(m[ids[0]].reporters, 0)
        self.assertIn("probed", m[ids[0]].flags)
        self.assertEqual(confirmedAfter({i: 1 for i in ids}, m)[ids[0]], 2)
        # it ramps as the relays with partners do: 2 of 6
        self.assertAlmostEqual(perBandwidth(m, ids[0]), 2 / 6, places=2)
        self.assertAlmostEqual(perBandwidth(m, ids[1]), 2 / 6, places=2)

    def test_aProbeOfNothingDoesNotCount(self):
        ids, rs, probed = self.quiet()
        probed[ids[0]] = 0
        m = computeWeights(rs, probed=probed, confirmedEpochs={i: 1 for i in ids})
        self.assertNotIn("probed", m[ids[0]].flags)
        self.assertEqual(confirmedAfter({i: 1 for i in ids}, m)[ids[0]], 1)


class GuardSeenTests(unittest.TestCase):
    """A streak its partners name earns the guard flag only for a relay the chain saw long enough."""

    def test_aNamedStreakWithoutTheChainsEpochsIsNoGuard(self):
        ids, _, _, traffic = network(n=20, circuits=1500)
        old = [{p: (b, 30) for p, (b, _) in t.items()} for t in traffic]  # every partner says 30 epochs
        rs = reports(ids, old)
        params = Params(guardEpochs=24)
        everyEpoch = computeWeights(rs, params=params, confirmedEpochs={i: 6 for i in ids})
        guards = {i for i, m in everyEpoch.items() if "guard" in m.flags}
        self.assertTrue(guards)
        # the same streaks, named for relays the chain saw in 2 of its epochs: no guard
        young = computeWeights(rs, params=params, confirmedEpochs={i: 1 for i in ids})
        self.assertFalse([i for i, m in young.items() if "guard" in m.flags])
        # and one epoch short of the bound (7): none either; the streak alone (no chain) gives them all
        short = computeWeights(rs, params=params, confirmedEpochs={i: 5 for i in ids})
        self.assertFalse([i for i, m in short.items() if "guard" in m.flags])
        self.assertEqual({i for i, m in computeWeights(rs, params=params).items() if "guard" in m.flags}, guards)


class SeenShownTests(unittest.TestCase):
    def test_theChainsEpochsAreInTheMeasure(self):
        """What C{meshvpn weights} and C{meshvpn relays} show beside the uptime: the chain's count, not the partners' word."""
        ids, rs, _, target, _ = sparsePair()
        m = computeWeights(rs, params=Params(), confirmedEpochs={i: 1 for i in ids})
        self.assertEqual(m[target].streak, NAMED)
        self.assertEqual(m[target].seen, 2)
        self.assertEqual(m[target].toJSON()["seen_epochs"], 2)
        self.assertIsNone(computeWeights(rs, params=Params())[target].seen)
