"""A held channel queue leaves light circuits first, each circuit's cells in order."""

from hypothesis import given, strategies as st
from twisted.trial import unittest

from meshvpn.onion.cells import RelayCommand
from meshvpn.onion.lightfirst import lightFirst
from meshvpn.onion.origin import OriginCircuit
from meshvpn.onion.test.test_circuit import Net


def cell(circ, n):
    return circ.to_bytes(4, "big") + n.to_bytes(4, "big")


class LightFirstTests(unittest.TestCase):
    def test_lightCircuitBeforeABacklog(self):
        cells = [cell(1, i) for i in range(500)] + [cell(2, 0)] + [cell(1, 500)]
        out = lightFirst(cells)
        self.assertEqual(out[0], cell(2, 0))
        self.assertEqual(out[1:], [cell(1, i) for i in range(501)])

    def test_oneCircuitUntouched(self):
        cells = [cell(7, i) for i in range(3)]
        self.assertIs(lightFirst(cells), cells)

    def test_tiesKeepQueueOrder(self):
        cells = [cell(3, 0), cell(1, 0), cell(3, 1), cell(1, 1)]
        self.assertEqual(lightFirst(cells), [cell(3, 0), cell(3, 1), cell(1, 0), cell(1, 1)])

    @given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 2 ** 31)), max_size=300))
    def test_aPermutationThatKeepsEachCircuitsOrder(self, spec):
        cells = [cell(c, i) + bytes([k % 256]) for k, (c, i) in enumerate(spec)]
        out = lightFirst(cells)
        self.assertEqual(sorted(out), sorted(cells))
        for c in {c for c, _ in spec}:
            prefix = c.to_bytes(4, "big")
            self.assertEqual([x for x in out if x.startswith(prefix)], [x for x in cells if x.startswith(prefix)])
        sizes = [sum(1 for y in cells if y[:4] == x[:4]) for x in out]
        self.assertEqual(sizes, sorted(sizes))


class HeldChannelTests(unittest.TestCase):
    """On a simulated link that stops taking cells: the quiet circuit's cell leaves before the bulk backlog."""

    def setUp(self):
        self.n = Net(self)
        self.bulk = self.n.built(self)
        self.n.net.pump()
        self.quiet = OriginCircuit(self.n.client.switch, self.n.guardLink,
                                   [self.n.guard.hopSpec(), self.n.middle.hopSpec(), self.n.exit.hopSpec()])
        d = self.quiet.build()
        self.n.net.pump()
        self.successResultOf(d)
        self.channel = self.bulk.channel
        self.assertIs(self.quiet.channel, self.channel)
        self.written = []
        self.n.guardLink.tap = self.written.extend

    def test_quietCellLeavesFirstOnResume(self):
        self.channel.pauseProducing()  # the peer stopped reading the link
        for _ in range(300):
            self.bulk.sendRelay(RelayCommand.DROP, 0, b"")
        self.quiet.sendRelay(RelayCommand.DROP, 0, b"")
        self.bulk.sendRelay(RelayCommand.DROP, 0, b"")
        self.n.net.endTurn()
        self.assertEqual(self.written, [])  # held
        self.channel.resumeProducing()
        self.assertEqual(len(self.written), 302)
        self.assertTrue(self.written[0].startswith(self.quiet.prefix))
        self.assertTrue(all(c.startswith(self.bulk.prefix) for c in self.written[1:]))
        # Both circuits' cells still decrypt at their hops in order: nothing was refused.
        self.n.net.pump()
        self.assertFalse(self.bulk.closed or self.quiet.closed)

    def test_unheldTurnKeepsArrivalOrder(self):
        self.bulk.sendRelay(RelayCommand.DROP, 0, b"")
        self.quiet.sendRelay(RelayCommand.DROP, 0, b"")
        self.bulk.sendRelay(RelayCommand.DROP, 0, b"")
        self.n.net.endTurn()
        self.assertEqual([c[:4] for c in self.written],
                         [self.bulk.prefix[:4], self.quiet.prefix[:4], self.bulk.prefix[:4]])
