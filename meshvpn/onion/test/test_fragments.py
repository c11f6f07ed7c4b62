"""Long handshake messages: how they are cut, reassembled and bounded (meshvpn.onion.fragments)."""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial import unittest

from meshvpn.onion import fragments as F
from meshvpn.onion.cells import PAYLOAD_LEN, CellError, Command, Create2, Created2, RelayCommand, parseCell


def feed(pending, cells, circId=0x80000001):
    """Hand C{cells} to C{pending} as a channel would; @return: the whole payload or C{None}."""
    out = None
    for raw in cells:
        cell = parseCell(raw)
        if cell.command in (Command.CREATE2, Command.CREATED2):
            out = pending.first(circId, cell.command, cell.payload)
        else:
            first = Command.CREATE2 if cell.command == Command.CREATE2_MORE else Command.CREATED2
            out = pending.more(circId, first, cell.payload)
    return out


class LinkBodyTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.expired = []
        self.budget = F.HalfOpenBudget(limit=4)
        self.pending = F.PendingBodies(self.clock, self.budget, lambda *a: self.expired.append(a), perChannel=3)

    @settings(max_examples=60, deadline=None)
    @given(st.binary(min_size=128, max_size=F.MAX_BODY))
    def test_create2RoundTrip(self, hdata):
        pending = F.PendingBodies(Clock(), F.HalfOpenBudget(), None)
        cells = F.create2Cells(0x80000001, 0x0103, hdata)
        self.assertEqual(len(cells), 1 + max(0, -(-(len(hdata) - F.CREATE2_FIRST) // PAYLOAD_LEN)))
        payload = feed(pending, cells)
        self.assertEqual(Create2.decode(payload), Create2(0x0103, hdata))
        self.assertEqual(len(pending), 0)

    @settings(max_examples=60, deadline=None)
    @given(st.binary(min_size=64, max_size=F.MAX_BODY))
    def test_created2RoundTrip(self, hdata):
        budget = F.HalfOpenBudget()
        pending = F.PendingBodies(Clock(), budget, None)
        self.assertEqual(Created2.decode(feed(pending, F.created2Cells(0x80000001, hdata))).hdata, hdata)
        self.assertEqual(budget.count, 0)

    def test_hybridSizes(self):
        """The hybrid CREATE2 (1,319 bytes) is 3 cells, its CREATED2 (1,155) 3 cells; ntor stays 1."""
        self.assertEqual(len(F.create2Cells(1, 0x0103, bytes(1319))), 3)
        self.assertEqual(len(F.created2Cells(1, bytes(1155))), 3)
        self.assertEqual(len(F.create2Cells(1, 0x0002, bytes(96))), 1)
        self.assertEqual(len(F.create2Cells(1, 0x0103, bytes(F.MAX_BODY))), 5)

    def test_tooLong(self):
        self.assertRaises(CellError, F.create2Cells, 1, 3, bytes(F.MAX_BODY + 1))
        payload = b"\x01\x03" + (F.MAX_BODY + 1).to_bytes(2, "big") + bytes(505)
        self.assertRaises(CellError, self.pending.first, 1, Command.CREATE2, payload)

    def test_moreWithoutFirst(self):
        self.assertRaises(CellError, self.pending.more, 7, Command.CREATE2, bytes(509))

    def test_secondFirst(self):
        cells = F.create2Cells(5, 3, bytes(1000))
        feed(self.pending, cells[:1], 5)
        self.assertRaises(CellError, feed, self.pending, cells[:1], 5)

    def test_perChannelBound(self):
        """A fourth half-received body on one link is refused with RESOURCELIMIT."""
        for circId in (1, 2, 3):
            self.assertIsNone(feed(self.pending, F.create2Cells(circId, 3, bytes(1000))[:1], circId))
        e = self.assertRaises(F.Refused, feed, self.pending, F.create2Cells(4, 3, bytes(1000))[:1], 4)
        self.assertEqual(e.reason, 5)

    def test_nodeBound(self):
        """The budget is shared: a second channel gets only what the first left."""
        other = F.PendingBodies(self.clock, self.budget, None, perChannel=3)
        for circId in (1, 2, 3):
            feed(self.pending, F.create2Cells(circId, 3, bytes(1000))[:1], circId)
        feed(other, F.create2Cells(9, 3, bytes(1000))[:1], 9)
        self.assertRaises(F.Refused, feed, other, F.create2Cells(10, 3, bytes(1000))[:1], 10)
        self.pending.clear()
        self.assertEqual(self.budget.count, 1)
        feed(other, F.create2Cells(10, 3, bytes(1000))[:1], 10)

    def test_expiry(self):
        """A body not finished within maxAge is dropped and reported, and its budget returned."""
        cells = F.create2Cells(1, 3, bytes(1500))
        feed(self.pending, cells[:2], 1)
        self.clock.advance(4)
        feed(self.pending, F.create2Cells(2, 3, bytes(1500))[:1], 2)
        self.clock.advance(1.5)
        self.assertEqual(self.expired, [(1, Command.CREATE2)])
        self.assertEqual(self.budget.count, 1)
        self.assertRaises(CellError, feed, self.pending, cells[2:], 1)
        self.clock.advance(5)
        self.assertEqual(self.expired, [(1, Command.CREATE2), (2, Command.CREATE2)])
        self.assertEqual((len(self.pending), self.budget.count, self.clock.getDelayedCalls()), (0, 0, []))

    def test_forget(self):
        feed(self.pending, F.create2Cells(1, 3, bytes(1500))[:1], 1)
        self.pending.forget(1)
        self.assertEqual((len(self.pending), self.budget.count), (0, 0))

    @settings(max_examples=100, deadline=None)
    @given(st.lists(st.tuples(st.sampled_from([Command.CREATE2, Command.CREATED2]), st.integers(1, 4),
                              st.booleans(), st.binary(max_size=PAYLOAD_LEN)), max_size=30))
    def test_garbageNeverGrows(self, events):
        """Any sequence of firsts and continuations: only CellError, and never more than the bounds."""
        budget = F.HalfOpenBudget(limit=5)
        pending = F.PendingBodies(Clock(), budget, None, perChannel=3)
        for command, circId, isFirst, payload in events:
            try:
                if isFirst:
                    pending.first(circId, command, payload)
                else:
                    pending.more(circId, command, payload)
            except CellError:
                pass
            self.assertLessEqual(len(pending), 3)
            self.assertEqual(budget.count, len(pending))


class RelayMessageTests(unittest.TestCase):
    @settings(max_examples=60, deadline=None)
    @given(st.binary(max_size=F.MAX_BODY))
    def test_roundTrip(self, data):
        pieces = F.splitMessage(data)
        self.assertTrue(all(len(p) <= 494 for p in pieces))
        a = F.MessageAssembler()
        for p in pieces[:-1]:
            a.fragment(p)
        self.assertEqual(a.finish(RelayCommand.EXTEND2, pieces[-1]), data)
        self.assertFalse(a.busy)

    def test_onlyLongCommandsAfterFragments(self):
        a = F.MessageAssembler()
        a.fragment(b"x" * 494)
        self.assertRaises(CellError, a.finish, RelayCommand.DATA, b"y")
        self.assertFalse(a.busy)

    def test_bounded(self):
        a = F.MessageAssembler()
        for _ in range(4):
            a.fragment(b"x" * 494)
        self.assertRaises(CellError, a.fragment, b"x" * 494)
        self.assertFalse(a.busy)
