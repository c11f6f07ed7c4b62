"""Link record framing: round trips and hostile input (hypothesis), at parser and link level."""

from hypothesis import given, settings, strategies as st
from twisted.trial import unittest

from meshvpn.link import wire
from meshvpn.link.protocol import State
from meshvpn.link.cellsize import CELL_SIZE
from meshvpn.link.test.helpers import cell
from meshvpn.link.test.test_manager import Harness, result

MAX_BUFFERED = 3 + wire.MAX_CONTROL_PAYLOAD + CELL_SIZE


def chunked(data, cuts):
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in points + [len(data)]:
        out.append(data[prev:p])
        prev = p
    return out


class ParserTests(unittest.TestCase):
    def parser(self):
        cells, controls = [], []
        p = wire.RecordParser(lambda batch: cells.append(batch), lambda k, pl: controls.append((k, pl)))
        return p, cells, controls

    @given(st.lists(st.integers(0, 700), min_size=1, max_size=6), st.lists(st.integers(0, 10**6), max_size=20))
    @settings(max_examples=60, deadline=None)
    def test_roundTripAnySplit(self, batches, cuts):
        """Any batches, cut at any byte boundaries, arrive as the same cells in order, in whole-cell batches."""
        sent, stream = [], b""
        for n in batches:
            cells = [cell(len(sent) + i) for i in range(n)]
            sent += cells
            stream += wire.encodeCells(cells) + wire.encodeControl(wire.KEEPALIVE)
        p, got, controls = self.parser()
        for piece in chunked(stream, cuts):
            p.feed(piece)
            self.assertLessEqual(p.buffered(), MAX_BUFFERED)
        self.assertEqual([c for b in got for c in b], sent)
        self.assertTrue(all(b for b in got))
        self.assertEqual(len(controls), len(batches))
        self.assertEqual(p.buffered(), 0)

    @given(st.binary(max_size=3000), st.lists(st.integers(0, 3000), max_size=8))
    @settings(max_examples=300, deadline=None)
    def test_garbageRaisesOnlyLinkProtocolError(self, data, cuts):
        p, got, controls = self.parser()
        try:
            for piece in chunked(data, cuts):
                p.feed(piece)
                self.assertLessEqual(p.buffered(), MAX_BUFFERED)
        except wire.LinkProtocolError:
            p.feed(b"more")  # a dead parser ignores the rest
            self.assertEqual(p.buffered(), 0)
        for batch in got:
            self.assertTrue(all(len(c) == CELL_SIZE for c in batch))

    def test_rejects(self):
        for bad, why in [
            (b"\x01\x00\x00", "count 0"),
            (b"\x01\x01\x01", "count 257"),
            (b"\x0a\x00\x00", "unknown record type 0x0a"),
            (b"\x04\x04\x01" + b"x" * 1025, "control record of 1025 bytes"),
        ]:
            p, _, _ = self.parser()
            e = self.assertRaises(wire.LinkProtocolError, p.feed, bad)
            self.assertIn(why, str(e))

    def test_oversizedControlRejectedBeforeItArrives(self):
        """A huge length field is refused from the header alone: nothing is buffered for it."""
        p, _, _ = self.parser()
        self.assertRaises(wire.LinkProtocolError, p.feed, b"\x03\xff\xff")

    def test_versions(self):
        self.assertEqual(wire.decodeVersions(wire.encodeVersions([1, 7])[3:]), [1, 7])
        self.assertRaises(wire.LinkProtocolError, wire.decodeVersions, b"\x00")
        self.assertRaises(wire.LinkProtocolError, wire.decodeVersions, b"")

    def test_encodeRejectsWrongSizes(self):
        self.assertRaises(ValueError, wire.encodeCells, [b"x" * (CELL_SIZE + 1)])
        self.assertRaises(ValueError, wire.encodeCells, [cell(1)] * 300 + [b"x"])
        self.assertEqual(wire.encodeCells([]), b"")


class HostileLinkTests(unittest.TestCase):
    @given(st.binary(min_size=1, max_size=2000))
    @settings(max_examples=40, deadline=None)
    def test_garbageClosesOnlyThatLink(self, garbage):
        """
        Garbage injected into one open link (after TLS, where only an
        authenticated peer can write) closes at most that link: the node's
        other link keeps carrying cells and nothing raises.
        """
        h = Harness(3)
        relay = h.managers[1]
        d0, d2 = h.managers[0].getLink(h.target(1)), h.managers[2].getLink(h.target(1))
        h.net.flush()
        victim = relay.linkTo(h.ids[0].nodeId)
        bystander = relay.linkTo(h.ids[2].nodeId)
        got = []
        bystander.setCellReceiver(got.extend)
        victim.dataReceived(garbage)
        self.assertIn(victim.state, (State.OPEN, State.CLOSED))
        h.net.flush()
        result(d2).sendCells([cell(7)])
        h.net.flush()
        self.assertIs(bystander.state, State.OPEN)
        self.assertEqual(got, [cell(7)])

    def test_tlsGarbageClosesOnlyThatConnection(self):
        h = Harness(3)
        d0, d2 = h.managers[0].getLink(h.target(1)), h.managers[2].getLink(h.target(1))
        h.net.flush()
        victim = h.managers[1].linkTo(h.ids[0].nodeId)
        victim.transport.dataReceived(b"\x17\x03\x03\x00\x10" + b"\x00" * 16)  # a forged TLS record
        h.net.flush()
        self.assertIs(victim.state, State.CLOSED)
        self.assertIs(h.managers[1].linkTo(h.ids[2].nodeId).state, State.OPEN)

    def test_oversizedRecordClosesLink(self):
        h = Harness(2)
        d = h.managers[0].getLink(h.target(1))
        h.net.flush()
        victim = h.managers[1].linkTo(h.ids[0].nodeId)
        victim.dataReceived(b"\x02\x7f\xff")
        self.assertIs(victim.state, State.CLOSED)
        self.assertIn("control record of 32767 bytes", str(victim.closeReason))
        h.net.flush()
        self.assertIs(result(d).state, State.CLOSED)
