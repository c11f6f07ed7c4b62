"""The traffic meter: per link, read per epoch, bounded, and blind to anonymous clients."""

from twisted.trial import unittest
from zope.interface.verify import verifyObject

from meshvpn.interfaces import ICellHandler, ITrafficMeter
from meshvpn.measure.meter import TrafficMeter


class Link:
    """What the meter reads of a link: its peer and its two counters."""

    def __init__(self, peerId):
        self.peerId = peerId
        self.cellsIn = self.cellsOut = 0


class Switch:
    def __init__(self):
        self.calls = []

    def linkOpened(self, link):
        self.calls.append(("opened", link))

    def cellsReceived(self, link, cells):
        self.calls.append(("cells", link, len(cells)))

    def linkClosed(self, link, reason):
        self.calls.append(("closed", link))


class MeterTests(unittest.TestCase):
    def setUp(self):
        self.switch = Switch()
        self.meter = TrafficMeter(self.switch, 514)

    def test_interfaces(self):
        verifyObject(ICellHandler, self.meter)
        verifyObject(ITrafficMeter, self.meter)

    def test_passesEverythingOn(self):
        link = Link(b"a" * 32)
        self.meter.linkOpened(link)
        self.meter.cellsReceived(link, [b"x"] * 3)
        self.meter.linkClosed(link, "bye")
        self.assertEqual(self.switch.calls, [("opened", link), ("cells", link, 3), ("closed", link)])

    def test_bytesPerPeerPerEpoch(self):
        a, b, client = Link(b"a" * 32), Link(b"b" * 32), Link(None)
        a.cellsIn = 5  # before the meter saw it: not ours to report
        for link in (a, b, client):
            self.meter.linkOpened(link)
        a.cellsIn += 10
        a.cellsOut += 4
        b.cellsOut += 2
        client.cellsIn += 1000
        self.assertEqual(self.meter.drain(), {a.peerId: 14 * 514, b.peerId: 2 * 514})
        b.cellsIn += 1
        self.meter.linkClosed(b, "gone")
        a.cellsOut += 1
        self.assertEqual(self.meter.drain(), {a.peerId: 514, b.peerId: 514})
        self.assertEqual(self.meter.drain(), {})

    def test_closedLinksOfOnePeerAddUp(self):
        for _ in range(3):
            link = Link(b"a" * 32)
            self.meter.linkOpened(link)
            link.cellsIn += 2
            self.meter.linkClosed(link, "x")
        self.assertEqual(self.meter.drain(), {b"a" * 32: 6 * 514})

    def test_boundedPeers(self):
        self.meter.maxPeers = 3
        for i in range(10):
            link = Link(bytes([i]) * 32)
            self.meter.linkOpened(link)
            link.cellsIn += i + 1
            self.meter.linkClosed(link, "x")
        out = self.meter.drain()
        self.assertEqual(sorted(out.values()), [8 * 514, 9 * 514, 10 * 514])  # the busiest kept
        self.assertEqual(self.meter.status()["dropped_peers"], 7)
