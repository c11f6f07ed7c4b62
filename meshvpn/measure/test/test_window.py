"""The agreed history: a chain from a fixed anchor gives the same weights however a node got there."""

import random

from hypothesis import given, strategies as st
from twisted.trial import unittest

from meshvpn.measure.aggregate import computeWeights
from meshvpn.measure.test.test_aggregate import network, reports
from meshvpn.measure.window import WINDOW, Chain, anchorOf, anchorsFor, chainWeights, priorOf


class AnchorTests(unittest.TestCase):
    @given(st.integers(min_value=0, max_value=2**32))
    def test_aChainHoldsAtLeastAWindow(self, epoch):
        a = anchorOf(epoch)
        self.assertEqual(a % WINDOW, 0)
        self.assertTrue(WINDOW + 1 <= epoch - a + 1 <= 2 * WINDOW)
        first, second = anchorsFor(epoch)
        self.assertEqual(first, a)
        self.assertLessEqual(second, epoch)
        # the next chain is the one in use a window later
        self.assertEqual(anchorOf(second + WINDOW), second)

    def test_stepsInOrderOnly(self):
        c = Chain(12)
        c.step(12, {})
        self.assertRaises(ValueError, c.step, 14, {})
        self.assertTrue(c.rewind())
        self.assertFalse(c.rewind())
        self.assertEqual(c.last, 11)


class ChainTests(unittest.TestCase):
    def epochs(self, first, last):
        """Reports of epochs C{first}..C{last}: the same relays, traffic that changes every epoch."""
        out = {}
        for e in range(first, last + 1):
            ids, _, _, traffic = network(n=20, circuits=1500, seed=e % 3)
            out[e] = reports(ids, traffic)
        return out

    def test_fromScratchOrStepByStepTheSame(self):
        epoch = 5 * WINDOW + 3
        byEpoch = self.epochs(anchorOf(epoch), epoch)
        scratch = chainWeights(byEpoch.__getitem__, epoch, computeWeights)
        chain = Chain(anchorOf(epoch))
        for e in range(anchorOf(epoch), epoch + 1):
            rs = list(byEpoch[e])
            random.Random(e).shuffle(rs)  # the order reports arrive in does not matter
            chain.step(e, computeWeights(rs, prior=chain.prior, confirmedEpochs=chain.confirmed))
        self.assertEqual(chain.measures, scratch)
        self.assertEqual(priorOf(scratch), chain.prior)

    def test_anEpochWithoutReportsChangesNothing(self):
        epoch = 4 * WINDOW + 1
        byEpoch = self.epochs(anchorOf(epoch), epoch)
        withGap = dict(byEpoch)
        withGap[epoch] = []
        self.assertEqual(chainWeights(withGap.__getitem__, epoch, computeWeights),
                         chainWeights(byEpoch.__getitem__, epoch - 1, computeWeights))

    def test_whatCameBeforeTheAnchorDoesNotCount(self):
        epoch = 3 * WINDOW + 2
        byEpoch = self.epochs(anchorOf(epoch) - 3, epoch)
        seen = []

        def reportsOf(e):
            seen.append(e)
            return byEpoch[e]

        chainWeights(reportsOf, epoch, computeWeights)
        self.assertEqual(seen, list(range(anchorOf(epoch), epoch + 1)))
