"""A forged pair against the weights in an epoch whose honest links are sparse: the real-process testnet's shape, in memory.

The epoch is one the client of L{meshvpn.measure.test.test_forgedprocesses}
read and computed (its reports, roles and probes saved and replayed; the
byte counts below are that epoch's, the node ids made up).  One client
builds every circuit through its one guard, so in a 20 s epoch each
relay exchanged traffic with two or three of the five relays it could
share a link with (every relay may be a middle): the middle relay4 with
the guard and one exit, each exit with two middles.  The forged pair
(relay2 and relay3) claim 2**40 bytes with every relay; a link counts as
much as both ends confirm, so they keep what the honest ends report, plus
their link with each other, at its cap.

It was the first epoch of its chain (no history: the epoch before had
collapsed to every estimate 0, and a chain hands on only estimates above
0), so the computation starts equal.  What happens, round by round (see
doc/measurement.md, *Sparse epochs*): the honest relays' links sit far
above the caps of a link the equal start allows (the caps assume a relay's
traffic spread over all its possible partners), and the partners' median
reads 0 for every possible partner that carried nothing with them, so
relay4 and both exits fall to the floor in the first round; the pair,
each with one more partner than its honest links give it (the other),
keeps more than half of the weight, its forged link grows by C{kappa} a
round, and it ends with all of it.  With the same bytes and every
possible link carrying some traffic (what many clients give), the pair is
held.
"""

import random

from twisted.trial import unittest

from meshvpn.measure.aggregate import Params, computeWeights
from meshvpn.measure.reports import Report, prefixOf
from meshvpn.tools.benchweights import _ids

HUGE = 2**40
EPOCH = 20
GM, EM = frozenset({"guard", "middle"}), frozenset({"exit", "middle"})
# the replayed epoch's confirmed links (bytes): guard relay1, middle relay4, the pair relay2 and relay3, exit1, exit2
SPARSE = [("relay1", "relay4", 1_737_834), ("relay4", "exit2", 1_465_928), ("relay1", "relay2", 254_430),
          ("relay1", "relay3", 692_872), ("exit1", "relay2", 234_384), ("exit1", "relay3", 4_626),
          ("exit2", "relay3", 666_144)]
ROLES = {"relay1": GM, "relay2": GM, "relay3": GM, "relay4": GM, "exit1": EM, "exit2": EM,
         "bootstrap": frozenset({"bootstrap"})}
# the probed capacities (bytes/s) the client with probes read in that run's epochs
PROBED = {"relay1": 190e3, "relay4": 120e3, "relay2": 11e3, "relay3": 40e3, "exit1": 230e3, "exit2": 230e3}
PAIR = ("relay2", "relay3")
DENSIFY_BYTES = 20_000  # what an honest relay counts of the circuits the pair builds through it to become its partner
DENSE_LINK = 300_000  # a middling link of the testnet, on every link the sparse epoch missed


def epoch(dense=False, forged=True, probed=False, hide=None, densify=False):
    """
    The replayed epoch's reports, computed from the equal start.
    @param dense: every pair of relays that may share a link carries some traffic too.
    @param hide: a relay whose report names none of its links.
    @param densify: the pair also builds circuits through every honest relay it had no link with (the honest
        relay reports L{DENSIFY_BYTES} with it) and confirms 1 byte of each: the honest relays' partners
        count, and each such link reads them low.
    @return: C{{name: RelayMeasure}}.
    """
    names = sorted(ROLES)
    ids = dict(zip(names, sorted(_ids(len(names), random.Random(19), 0))))
    links = list(SPARSE)
    if dense:
        have = {frozenset(link[:2]) for link in links}
        relays = [n for n in names if n != "bootstrap"]
        links += [(a, b, DENSE_LINK) for a in relays for b in relays
                  if a < b and frozenset((a, b)) not in have and {a, b} != set(PAIR)]
    traffic = {n: {} for n in names}
    for a, b, n in links:
        traffic[a][prefixOf(ids[b])] = (n, 3)
        traffic[b][prefixOf(ids[a])] = (n, 3)
    if forged:
        for p in PAIR:
            traffic[p] = {prefixOf(ids[o]): (HUGE, 100) for o in names if o != p}
    if densify:
        have = {frozenset(link[:2]) for link in links}
        for p in PAIR:
            for o in names:
                if o not in PAIR and o != "bootstrap" and frozenset((p, o)) not in have:
                    traffic[o][prefixOf(ids[p])] = (DENSIFY_BYTES, 3)
                    traffic[p][prefixOf(ids[o])] = (1, 100)
    if hide is not None:
        traffic[hide] = {}
    reports = [Report(ids[n], b"", 1, EPOCH, traffic[n], ()) for n in names]
    out = computeWeights(reports, roles={ids[n]: r for n, r in ROLES.items()},
                         probed={ids[n]: p for n, p in PROBED.items()} if probed else None)
    return {n: out[ids[n]] for n in names}


def pairShare(measures):
    total = sum(m.weight for m in measures.values())
    return sum(measures[n].weight for n in PAIR) / total if total else len(PAIR) / len(PROBED)


PROBED_SHARE = sum(PROBED[n] for n in PAIR) / sum(PROBED.values())  # 0.063
PROMISED = 2.0  # the pair's weight over its probed share the defaults promise at most (test_forgedprocesses)


class SparseEpochTests(unittest.TestCase):
    def test_forgedPairInASparseEpoch(self):
        """The attack, run with the network's defaults (probes): the pair keeps no more than its probes give it."""
        measures = epoch(probed=True)
        # measured before the probes stood in for sparse reports: 0.21 (3.4 times its share of the probes),
        # only relay1 of the honest relays weighted (relay4 and the exits have 2 partners of the 3 needed)
        print(f"\nforged pair in the sparse epoch, with probes: {pairShare(measures):.3f} of the weight, "
              f"its share of the probes {PROBED_SHARE:.3f}")
        self.assertLessEqual(pairShare(measures), PROMISED * PROBED_SHARE)
        self.assertEqual(sorted(n for n, m in measures.items() if "probed" in m.flags), ["exit1", "exit2", "relay4"])
        self.assertTrue(all(measures[n].weight > 0 for n in PROBED))

    def test_forgedPairThatMakesTheHonestRelaysDense(self):
        """
        The pair builds circuits through every honest relay it had no link with and confirms 1 byte of each:
        the honest relays then have partners enough to be measured, so their probes no longer stand in, and
        the tiny links read them low.  The pair must still get no more than its probes give it.
        """
        measures = epoch(probed=True, densify=True)
        print(f"\nforged pair that made the honest relays dense, with probes: {pairShare(measures):.3f} of the weight, "
              f"its share of the probes {PROBED_SHARE:.3f}; "
              + ", ".join(f"{n} {sorted(m.flags)} {m.weight}" for n, m in sorted(measures.items())))
        self.assertLessEqual(pairShare(measures), PROMISED * PROBED_SHARE)
        # and no honest relay is read below half of its probe's cap (an exit fell to 0.01% of it without the floor)
        perProbe = {n: measures[n].bandwidth / PROBED[n] for n in PROBED}
        self.assertGreaterEqual(min(perProbe[n] for n in PROBED if n not in PAIR),
                                Params().probeFloor * max(perProbe.values()) * (1 - 1e-9))

    def test_forgedPairInASparseEpochWithoutProbes(self):
        """The same attack against a client that reads no probes: the pair must not take the honest relays' weight."""
        self.assertLess(pairShare(epoch()), 0.5)  # 0.9999

    # (only the assertion is expected to fail: any other error fails)
    test_forgedPairInASparseEpochWithoutProbes.todo = (
        unittest.FailTest, "without probes nothing stands in for sparse reports: the proportional-link model reads "
        "sparse honest links low, and the pair's own link at its cap (doc/measurement.md, Sparse epochs)")

    def test_denseLinksHoldThePair(self):
        """The same bytes with every possible link carrying some: every relay measured, the pair held."""
        without, withProbes = epoch(dense=True), epoch(dense=True, probed=True)
        for measures in (without, withProbes):
            self.assertEqual([n for n, m in measures.items() if "measured" not in m.flags], ["bootstrap"])
            self.assertEqual([n for n, m in measures.items() if "probed" in m.flags], [])
        self.assertLess(pairShare(without), 0.25)
        self.assertLessEqual(pairShare(withProbes), PROMISED * PROBED_SHARE)

    def test_theSparseEpochWithoutForgeriesMeasuresFew(self):
        """Nobody attacks: the sparse epoch alone leaves relay4 and both exits unmeasured (2 partners of 3 needed)."""
        measures = epoch(forged=False)
        self.assertEqual(sorted(n for n, m in measures.items() if "measured" in m.flags), ["relay1", "relay3"])
        self.assertEqual([measures[n].reporters for n in ("relay4", "exit1", "exit2")], [2, 2, 2])

    def test_probesWeighTheRelaysTheSparseReportsDoNotMeasure(self):
        """Nobody attacks, with probes: the relays the reports leave unmeasured are drawn by their probes, not left out."""
        measures = epoch(forged=False, probed=True)
        self.assertEqual(sorted(n for n, m in measures.items() if "probed" in m.flags),
                         ["exit1", "exit2", "relay2", "relay4"])
        for n in ("exit1", "exit2", "relay2", "relay4"):
            self.assertNotIn("measured", measures[n].flags)  # drawn by its probe, not paid for it
        self.assertTrue(all(measures[n].weight > 0 for n in PROBED))
        self.assertEqual(measures["bootstrap"].weight, 0)  # no probe, no links: nothing stands in

    def test_aRelayGainsNothingByHidingItsLinks(self):
        """
        A relay whose reports leave out its links is held at its probe, the most its reports could have given
        it: per probed byte, no more than a relay its reports measure.
        """
        def perProbe(measures, name):
            return measures[name].bandwidth / PROBED[name]

        dense = epoch(dense=True, forged=False, probed=True)
        hidden = epoch(dense=True, forged=False, probed=True, hide="relay3")
        self.assertIn("probed", hidden["relay3"].flags)
        self.assertNotIn("measured", hidden["relay3"].flags)
        most = max(perProbe(dense, n) for n in PROBED)
        self.assertLessEqual(perProbe(hidden, "relay3"), most * (1 + 1e-9))
