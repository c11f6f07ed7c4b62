"""LinkManager: one link per peer, shared attempts, incoming registration, the cell-handler hook."""

from twisted.internet import task
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from meshvpn.errors import LinkError
from meshvpn.identity import NodeIdentity
from meshvpn.interfaces import ICellHandler, ILink, ILinkManager
from meshvpn.link.manager import LinkManager, LinkTarget
from meshvpn.link.protocol import LinkSettings, State
from meshvpn.link.test.helpers import MemoryNet, MemoryTransport, cell


@implementer(ICellHandler)
class RecordingHandler:
    def __init__(self):
        self.opened, self.cells, self.closed = [], [], []

    def linkOpened(self, link):
        self.opened.append(link)

    def cellsReceived(self, link, cells):
        self.cells.append((link, list(cells)))

    def linkClosed(self, link, reason):
        self.closed.append((link, reason))


class Harness:
    def __init__(self, n, settings=None):
        self.clock = task.Clock()
        self.net = MemoryNet(self.clock)
        self.ids = [NodeIdentity.generate() for _ in range(n)]
        transport = MemoryTransport(self.net)
        self.managers = [
            LinkManager(self.clock, ident, settings or LinkSettings(), transports={"tls": transport})
            for ident in self.ids
        ]
        for i, m in enumerate(self.managers):
            self.net.servers[f"mem:{i}"] = m.serverFactory("tls")

    def target(self, i):
        return LinkTarget(self.ids[i].nodeId, (("tls", f"mem:{i}"),))


def result(d):
    out = []
    d.addBoth(out.append)
    return out[0] if out else None


class LinkManagerTests(unittest.TestCase):
    def test_interfaces(self):
        h = Harness(2)
        verifyObject(ILinkManager, h.managers[0])
        d = h.managers[0].getLink(h.target(1))
        h.net.flush()
        link = result(d)
        verifyObject(ILink, link)

    def test_concurrentGetLinkSharesOneAttempt(self):
        h = Harness(2)
        a = h.managers[0]
        d1, d2 = a.getLink(h.target(1)), a.getLink(h.target(1))
        h.net.flush()
        l1, l2 = result(d1), result(d2)
        self.assertIs(l1, l2)
        self.assertEqual(l1.peerId, h.ids[1].nodeId)
        self.assertEqual(h.net.connects, 1)
        self.assertIs(result(a.getLink(h.target(1))), l1)
        self.assertEqual(h.net.connects, 1)

    def test_incomingAuthenticatedLinkIsReusedBackwards(self):
        """Relay 1 dials relay 0; relay 0 then extends to relay 1 over that same link."""
        h = Harness(2)
        d = h.managers[1].getLink(h.target(0))
        h.net.flush()
        out = result(d)
        back = result(h.managers[0].getLink(h.target(1)))
        self.assertIsNotNone(back)
        self.assertFalse(back.isInitiator)
        self.assertEqual(back.peerId, h.ids[1].nodeId)
        self.assertEqual(h.net.connects, 1)
        self.assertTrue(out.isInitiator)

    def test_wrongIdFailsAllWaiters(self):
        h = Harness(3)
        wrong = LinkTarget(h.ids[2].nodeId, (("tls", "mem:1"),))
        d1, d2 = h.managers[0].getLink(wrong), h.managers[0].getLink(wrong)
        h.net.flush()
        for d in (d1, d2):
            f = result(d)
            self.assertIsInstance(f.value, LinkError)
            self.assertIn("not the expected node id", str(f.value))
        self.assertIsNone(h.managers[0].linkTo(h.ids[2].nodeId))
        self.assertEqual(h.managers[0].counters["failed"], 1)

    def test_fallsBackToNextAddress(self):
        h = Harness(2)
        target = LinkTarget(h.ids[1].nodeId, (("obfs9", "x"), ("tls", "mem:nowhere"), ("tls", "mem:1")))
        d = h.managers[0].getLink(target)
        h.net.flush()
        self.assertEqual(result(d).peerId, h.ids[1].nodeId)

    def test_unreachable(self):
        h = Harness(2)
        f = result(h.managers[0].getLink(LinkTarget(h.ids[1].nodeId, (("tls", "mem:nowhere"),))))
        self.assertIsInstance(f.value, LinkError)

    def test_notOurselves(self):
        h = Harness(1)
        self.assertIsInstance(result(h.managers[0].getLink(h.target(0))).value, LinkError)

    def test_badDescriptor(self):
        h = Harness(1)
        self.assertIsInstance(result(h.managers[0].getLink(object())).value, LinkError)

    def test_descriptorShape(self):
        class Descriptor:
            nodeId = b"\x01" * 32
            linkAddresses = [("tls", "127.0.0.1:9001")]

        self.assertEqual(LinkTarget.of(Descriptor()), LinkTarget(b"\x01" * 32, (("tls", "127.0.0.1:9001"),)))

    def test_cellHandlerHook(self):
        """Cells arriving on any link go to the registered handler, with the link they came on."""
        h = Harness(2)
        handler = RecordingHandler()
        h.managers[1].setCellHandler(handler)
        d = h.managers[0].getLink(h.target(1))
        h.net.flush()
        link = result(d)
        link.sendCells([cell(1), cell(2)])
        h.net.flush()
        [incoming] = handler.opened
        self.assertEqual(incoming.peerId, h.ids[0].nodeId)
        self.assertEqual(handler.cells, [(incoming, [cell(1), cell(2)])])
        link.close("done")
        h.net.flush()
        self.assertEqual([l for l, _ in handler.closed], [incoming])
        self.assertIsNone(h.managers[1].linkTo(h.ids[0].nodeId))

    def test_closedLinkIsReplaced(self):
        h = Harness(2)
        d = h.managers[0].getLink(h.target(1))
        h.net.flush()
        first = result(d)
        first.close("test")
        h.net.flush()
        d = h.managers[0].getLink(h.target(1))
        h.net.flush()
        second = result(d)
        self.assertIsNot(first, second)
        self.assertIs(second.state, State.OPEN)
        self.assertEqual(h.net.connects, 2)

    def test_idleLinksLeaveTheTable(self):
        h = Harness(2, LinkSettings(keepaliveInterval=30, idleTimeout=60))
        d = h.managers[0].getLink(h.target(1))
        h.net.flush()
        for _ in range(4):
            h.clock.advance(30)
            h.net.flush()
        self.assertIs(result(d).state, State.CLOSED)
        self.assertEqual(h.managers[0].links(), [])
        self.assertEqual(h.managers[1].links(), [])

    def test_stopServiceClosesLinks(self):
        h = Harness(2)
        d = h.managers[0].getLink(h.target(1))
        h.net.flush()
        h.managers[0].startService()
        stopped = h.managers[0].stopService()
        h.net.flush()
        self.assertTrue(stopped.called)
        self.assertIs(result(d).state, State.CLOSED)
        self.assertEqual(h.managers[0].status()["links_open"], 0)


class _NeverEndpoint:
    def connect(self, factory):
        from twisted.internet import defer

        return defer.Deferred()


class _HangingTransport:
    name, kind = "tls", "stream"

    def clientEndpoint(self, reactor, address, options):
        return _NeverEndpoint()


class LinkManagerLimitsTests(unittest.TestCase):
    def test_connectTimeout(self):
        clock = task.Clock()
        m = LinkManager(clock, NodeIdentity.generate(), LinkSettings(connectTimeout=30), transports={"tls": _HangingTransport()})
        d = m.getLink(LinkTarget(b"\x02" * 32, (("tls", "x"),)))
        clock.advance(29)
        self.assertFalse(d.called)
        clock.advance(1)
        err = result(d).value
        self.assertIsInstance(err, LinkError)
        self.assertIn("timed out after 30s", str(err))

    def test_cancelledWaiterDoesNotBreakOthers(self):
        h = Harness(2)
        d1, d2 = h.managers[0].getLink(h.target(1)), h.managers[0].getLink(h.target(1))
        d1.cancel()
        result(d1)  # consume the CancelledError
        h.net.flush()
        self.assertEqual(result(d2).peerId, h.ids[1].nodeId)

    def test_fullManagerRefusesIncoming(self):
        h = Harness(3, LinkSettings(maxLinks=1))
        d1 = h.managers[0].getLink(h.target(1))
        h.net.flush()
        self.assertEqual(result(d1).peerId, h.ids[1].nodeId)
        self.assertIsNone(h.net.servers["mem:1"].buildProtocol(None))
        self.assertEqual(h.managers[1].counters["refused_full"], 1)


class _BlackHoleOrMemory:
    """'hole:...' addresses never answer; 'mem:...' ones are the memory network."""

    name, kind = "tls", "stream"

    def __init__(self, net):
        self._memory = MemoryTransport(net)

    def clientEndpoint(self, reactor, address, options):
        if address.startswith("hole:"):
            return _NeverEndpoint()
        return self._memory.clientEndpoint(reactor, address, options)


def _peer(host, port=40000):
    from twisted.internet.address import IPv4Address, IPv6Address

    return (IPv6Address if ":" in host else IPv4Address)("TCP", host, port)


class LinkManagerAbuseTests(unittest.TestCase):
    def test_blackHoleAttemptDoesNotHoldHonestOnes(self):
        """
        An EXTEND2 names relay 1's id with an address that never answers;
        an honest extend to relay 1 at its real address right after must
        not wait ~50 s on that attempt (the old manager merged pending
        attempts by node id alone).
        """
        h = Harness(2)
        m = LinkManager(h.clock, h.ids[0], LinkSettings(connectTimeout=30), transports={"tls": _BlackHoleOrMemory(h.net)})
        hostile = m.getLink(LinkTarget(h.ids[1].nodeId, (("tls", "hole:1"),)))
        honest = m.getLink(h.target(1))
        h.net.flush()
        self.assertEqual(result(honest).peerId, h.ids[1].nodeId)
        self.assertFalse(hostile.called)
        h.clock.advance(30)
        self.assertIsInstance(result(hostile).value, LinkError)

    def test_sameTargetStillSharesOneAttempt(self):
        clock = task.Clock()
        m = LinkManager(clock, NodeIdentity.generate(), transports={"tls": _HangingTransport()})
        target = LinkTarget(b"\x02" * 32, (("tls", "x"),))
        d1, d2 = m.getLink(target), m.getLink(LinkTarget(b"\x02" * 32, (("tls", "x"),)))
        self.assertEqual(len(m._pending), 1)
        clock.advance(30)
        self.assertIs(result(d1).value, result(d2).value)

    def test_linksPerAddressAreCapped(self):
        """One address cannot hold more than maxPerAddress incoming links at once (Tor: DoSConnectionMaxConcurrentCount)."""
        from meshvpn.link.manager import LinkLimits

        clock = task.Clock()
        m = LinkManager(clock, NodeIdentity.generate(), limits=LinkLimits(maxPerAddress=5, connectRate=1000, connectBurst=1000))
        factory = m.serverFactory()
        built = [factory.buildProtocol(_peer("203.0.113.66", 40000 + i)) for i in range(8)]
        self.assertEqual(sum(p is not None for p in built), 5)
        self.assertEqual(m.counters["refused_address"], 3)
        self.assertIsNotNone(factory.buildProtocol(_peer("198.51.100.7")))
        # a closed link frees its place
        link = next(iter(l for l in m._all if l.remoteHost == "203.0.113.66"))
        m._linkClosed(None, link)  # what its whenClosed() firing does
        self.assertIsNotNone(factory.buildProtocol(_peer("203.0.113.66", 41000)))
        self.assertEqual(m.status()["links_in"], 6)

    def test_ipv6SourceCountsAsItsSlash64(self):
        """The attack: one host walks its /64, a new address per link; it still holds only maxPerAddress."""
        from meshvpn.link.manager import LinkLimits

        clock = task.Clock()
        m = LinkManager(clock, NodeIdentity.generate(), limits=LinkLimits(maxPerAddress=5, connectRate=1000, connectBurst=1000))
        factory = m.serverFactory()
        built = [factory.buildProtocol(_peer(f"2001:2:66:1::{i + 1:x}", 40000)) for i in range(8)]
        self.assertEqual(sum(p is not None for p in built), 5)
        self.assertEqual(m.counters["refused_address"], 3)
        # the next /64 is another source
        self.assertIsNotNone(factory.buildProtocol(_peer("2001:2:66:2::1")))

    def test_newLinksPerAddressAreRateLimited(self):
        from meshvpn.link.manager import LinkLimits

        clock = task.Clock()
        m = LinkManager(clock, NodeIdentity.generate(), limits=LinkLimits(maxPerAddress=1000, connectRate=20, connectBurst=40))
        factory = m.serverFactory()
        built = [factory.buildProtocol(_peer("203.0.113.66", 40000 + i)) for i in range(60)]
        self.assertEqual(sum(p is not None for p in built), 40)
        self.assertEqual(m.counters["refused_rate"], 20)
        clock.advance(1)
        built = [factory.buildProtocol(_peer("203.0.113.66", 41000 + i)) for i in range(30)]
        self.assertEqual(sum(p is not None for p in built), 20)

    def test_incomingLinksLeaveRoomForOutgoing(self):
        """
        Strangers filling the table with incoming links must not stop the
        relay's own extends (the old maxLinks counted both directions).
        """
        from meshvpn.link.manager import LinkLimits

        h = Harness(2, LinkSettings(maxLinks=8))
        m = h.managers[0]
        m.limits = LinkLimits(outgoingReserve=2)
        factory = h.net.servers["mem:0"]
        built = [factory.buildProtocol(_peer(f"203.0.113.{i}")) for i in range(1, 11)]
        self.assertEqual(sum(p is not None for p in built), 6)
        d = m.getLink(h.target(1))
        h.net.flush()
        self.assertEqual(result(d).peerId, h.ids[1].nodeId)


class SuspicionObserverTests(unittest.TestCase):
    """The fault: a peer stops answering (its pump is no longer flushed).  The manager's observers hear it twice: suspected, then gone."""

    def test_observersHearSuspicionThenTheClose(self):
        h = Harness(2)
        heard = []

        class Observer:
            def peerSuspected(self, nodeId, suspected):
                heard.append((nodeId, suspected, h.clock.seconds()))

        a = h.managers[0]
        a.addLivenessObserver(Observer())
        d = a.getLink(h.target(1))
        h.net.flush()
        link = result(d)
        start = h.clock.seconds()
        link.sendCells([cell(1)])
        for _ in range(60):
            h.clock.advance(0.1)  # nothing delivered: the peer hangs
        h.net.flush()  # the aborted connection is gone
        peer = h.ids[1].nodeId
        self.assertEqual([(n, s) for n, s, _ in heard], [(peer, True), (peer, False)])
        self.assertLess(heard[0][2] - start, 1.5)  # suspected within about a second
        self.assertIs(link.state, State.CLOSED)  # the verdict came later
        self.assertEqual(a.counters["suspected"], 1)
        self.assertEqual(a.counters["closed_silent"], 1)
