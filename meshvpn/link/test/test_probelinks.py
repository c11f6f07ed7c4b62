"""Probe-only links (LinkManager.openLink): their own, never routed over, bounded per peer, closed at the slot's end; each attack run."""

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import task
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from meshvpn.errors import LinkError
from meshvpn.interfaces import ILinkManager
from meshvpn.link import wire
from meshvpn.link.manager import LinkLimits
from meshvpn.identity import NodeIdentity
from meshvpn.link.protocol import LinkProtocol, LinkSettings, State
from meshvpn.link.test.helpers import cell, connectLinks, linkPair
from meshvpn.link.test.test_manager import Harness, RecordingHandler, result


class Admits:
    """A probe handler that admits probe-only links from C{peers} for C{seconds} (None: anyone)."""

    def __init__(self, clock, seconds=10.0, peers=None):
        self.clock, self.seconds, self.peers = clock, seconds, peers
        self.probes = []

    def probeReceived(self, link, seq, data, echo):
        self.probes.append((link, seq, data, echo))
        if not echo:
            link.sendProbe(seq, data, echo=True)

    def probeLinkUntil(self, peer):
        if self.peers is not None and peer not in self.peers:
            return None
        return self.clock.seconds() + self.seconds


def opened(h, d):
    """What C{d} (a getLink/openLink) gave once the memory network settled."""
    h.net.flush()
    return result(d)


def setUp(h, seconds=10.0, peers=None):
    """Relay 1 is the target: a cell handler and a probe handler admitting probe-only links."""
    cells = RecordingHandler()
    h.managers[1].setCellHandler(cells)
    admits = Admits(h.clock, seconds, peers)
    h.managers[1].setProbeHandler(admits)
    return cells, admits


class ProbeLinkTests(unittest.TestCase):
    def test_interface(self):
        verifyObject(ILinkManager, Harness(1).managers[0])

    def test_aLinkOfItsOwnBesideTheSharedOne(self):
        h = Harness(2)
        cells, admits = setUp(h)
        a, b = h.managers
        shared = opened(h, a.getLink(h.target(1)))
        h.net.flush()
        probe = opened(h, a.openLink(h.target(1), purpose="probe"))
        h.net.flush()
        self.assertIsNot(probe, shared)
        self.assertTrue(probe.probeOnly)
        self.assertFalse(shared.probeOnly)
        self.assertEqual(h.net.connects, 2)
        # neither end routes over it: the table keeps the shared link, the cell handler never heard of it
        self.assertIs(a.linkTo(h.ids[1].nodeId), shared)
        self.assertEqual(b.linkTo(h.ids[0].nodeId).peerId, h.ids[0].nodeId)
        self.assertFalse(b.linkTo(h.ids[0].nodeId).probeOnly)
        self.assertEqual(len(cells.opened), 1)
        self.assertIs(opened(h, a.getLink(h.target(1))), shared)
        # it carries probes and their echoes
        self.assertTrue(probe.sendProbe(7, b"x" * 100))
        h.net.flush()
        self.assertEqual([(s, d, e) for _, s, d, e in admits.probes], [(7, b"x" * 100, False)])
        self.assertEqual(b.status()["probe_links_open"], 1)
        self.assertEqual((a.counters["probe_links_out"], b.counters["probe_links_in"]), (1, 1))
        # but no cells: the sending side refuses them
        self.assertFalse(probe.sendCells([cell(1)]))
        probe.close("probe slot over")
        h.net.flush()
        self.assertEqual(b.status()["probe_links_open"], 0)
        self.assertEqual(shared.state, State.OPEN)

    def test_aTargetNeverRoutesOverAMeasurersProbeLink(self):
        """The attack: a peer opens only a probe link, hoping the target sends its circuits over it."""
        h = Harness(2)
        setUp(h)
        a, b = h.managers
        probe = opened(h, a.openLink(h.target(1)))
        h.net.flush()
        self.assertIsNone(b.linkTo(h.ids[0].nodeId))
        back = opened(h, b.getLink(h.target(0)))
        self.assertFalse(back.probeOnly)
        self.assertEqual(h.net.connects, 2)
        self.assertEqual(probe.state, State.OPEN)

    def test_cellsOnAProbeLinkCloseItOnly(self):
        """The attack: a hostile measurer writes cells on its probe link (bypassing sendCells)."""
        h = Harness(2)
        cells, _ = setUp(h)
        a, b = h.managers
        shared = opened(h, a.getLink(h.target(1)))
        probe = opened(h, a.openLink(h.target(1)))
        h.net.flush()
        probe.transport.write(wire.encodeCells([cell(1)]))
        h.net.flush()
        self.assertEqual(probe.state, State.CLOSED)
        self.assertEqual(cells.cells, [])
        self.assertEqual(shared.state, State.OPEN)
        self.assertEqual(b.status()["probe_links_open"], 0)

    def test_directoryOnAProbeLinkClosesIt(self):
        h = Harness(2)
        setUp(h)
        probe = opened(h, h.managers[0].openLink(h.target(1)))
        h.net.flush()
        self.assertFalse(probe.sendDirectory(b"\x00"))
        probe.transport.write(wire.encodeControl(wire.DIRECTORY, b"\x00"))
        h.net.flush()
        self.assertEqual(probe.state, State.CLOSED)

    def test_atMostTwoPerPeer(self):
        """The attack: one peer opens many probe links to a target; it keeps probeLinksPerPeer of them."""
        h = Harness(3)
        setUp(h)
        a, b, c = h.managers
        tries = [a.openLink(h.target(1)) for _ in range(6)]
        links = [opened(h, d) for d in tries]
        kept = [l for l in links if l.state is State.OPEN]
        self.assertEqual(len(kept), LinkLimits().probeLinksPerPeer)
        self.assertEqual(b.counters["probe_links_refused"], 6 - len(kept))
        self.assertEqual(b.status()["probe_links_open"], len(kept))
        # another peer is not held by the first one's links
        other = opened(h, c.openLink(h.target(1)))
        h.net.flush()
        self.assertEqual(other.state, State.OPEN)
        # a closed one makes room again
        kept[0].close()
        h.net.flush()
        again = opened(h, a.openLink(h.target(1)))
        h.net.flush()
        self.assertEqual(again.state, State.OPEN)

    def test_atMostProbeLinksInAll(self):
        h = Harness(4)
        h.managers[1].limits = LinkLimits(probeLinks=2)
        setUp(h)
        got = [opened(h, h.managers[i].openLink(h.target(1))) for i in (0, 2, 3)]
        h.net.flush()
        self.assertEqual([l.state is State.OPEN for l in got].count(True), 2)
        self.assertEqual(h.managers[1].counters["probe_links_refused"], 1)

    def test_onlyFromPeersTheHandlerAdmits(self):
        """A node the target does not echo now (the plan, the slot) gets no probe link; with no handler, nobody."""
        h = Harness(3)
        setUp(h, peers={h.ids[0].nodeId})
        ok = opened(h, h.managers[0].openLink(h.target(1)))
        stranger = opened(h, h.managers[2].openLink(h.target(1)))
        h.net.flush()
        self.assertEqual(ok.state, State.OPEN)
        self.assertEqual(stranger.state, State.CLOSED)
        self.assertEqual(h.managers[1].counters["probe_links_unassigned"], 1)
        h.managers[1].setProbeHandler(None)
        none = opened(h, h.managers[0].openLink(h.target(1)))
        h.net.flush()
        self.assertEqual(none.state, State.CLOSED)

    def test_anonymousInitiatorsGetNone(self):
        h = Harness(2, settings=LinkSettings(authenticate=False))
        setUp(h)
        probe = opened(h, h.managers[0].openLink(h.target(1)))
        h.net.flush()
        self.assertEqual(probe.state, State.CLOSED)
        self.assertEqual(h.managers[1].counters["probe_links_unassigned"], 1)

    def test_closedByTheTargetAtTheSlotsEnd(self):
        """The attack: a measurer keeps its probe link open past the slot; the target closes it then."""
        h = Harness(2)
        setUp(h, seconds=5.0)
        probe = opened(h, h.managers[0].openLink(h.target(1)))
        h.net.flush()
        h.clock.advance(4.9)
        h.net.flush()
        self.assertEqual(probe.state, State.OPEN)
        h.clock.advance(0.2)
        h.net.flush()
        self.assertEqual(probe.state, State.CLOSED)
        self.assertEqual(h.managers[1].counters["probe_links_expired"], 1)
        self.assertEqual(h.managers[1].status()["probe_links_open"], 0)

    def test_aPeerBelowVersion5TakesNone(self):
        """A target that cannot take a probe-only link fails the attempt (the measurer falls back)."""
        h = Harness(2)
        setUp(h)
        h.managers[1].settings = LinkSettings(versions=(1, 2, 3, 4))
        f = opened(h, h.managers[0].openLink(h.target(1)))
        h.net.flush()
        self.assertIsInstance(f.value, LinkError)
        self.assertEqual(h.managers[0].counters["probe_links_failed"], 1)

    def test_onlyProbePurpose(self):
        h = Harness(2)
        f = opened(h, h.managers[0].openLink(h.target(1), purpose="cells"))
        self.assertIsInstance(f.value, LinkError)


class _EarlierResponder(LinkProtocol):
    """A responder of a release that knows no probe-only link: it never sees the entry (so never lists it back)."""

    def _versionsArrived(self, payload):
        entries = [v for v in wire.decodeVersions(payload) if v != wire.PROBE_ONLY_ENTRY]
        return super()._versionsArrived(b"".join(v.to_bytes(2, "big") for v in entries))


class HandshakeTests(unittest.TestCase):
    def test_bothEndsKnowTheKind(self):
        clock = task.Clock()
        cid, sid = NodeIdentity.generate(), NodeIdentity.generate()
        client = LinkProtocol(clock, cid, LinkSettings(), True, sid.nodeId, probeOnly=True)
        server = LinkProtocol(clock, sid, LinkSettings(), False)
        connectLinks(clock, client, server)
        self.assertEqual((client.state, server.state), (State.OPEN, State.OPEN))
        self.assertEqual((client.probeOnly, server.probeOnly), (True, True))
        plain, plainServer, _, _, _ = linkPair(clock)
        self.assertEqual((plain.probeOnly, plainServer.probeOnly), (False, False))

    def test_aResponderThatDoesNotListItBackFailsTheLink(self):
        clock = task.Clock()
        cid, sid = NodeIdentity.generate(), NodeIdentity.generate()
        client = LinkProtocol(clock, cid, LinkSettings(), True, sid.nodeId, probeOnly=True)
        server = _EarlierResponder(clock, sid, LinkSettings(), False)
        failed = []
        client.whenOpen().addErrback(failed.append)
        connectLinks(clock, client, server)
        self.assertEqual(client.state, State.CLOSED)
        self.assertIn("does not take probe-only links", str(failed[0].value))


class VersionsEntryTests(unittest.TestCase):
    @given(st.lists(st.integers(1, 0x7FFF), min_size=1, max_size=20), st.lists(st.integers(1, 0x7FFF), max_size=20),
           st.booleans())
    def test_theEntryIsNeitherALinkNorACircuitVersion(self, links, circuits, probeOnly):
        entries = wire.decodeVersions(wire.encodeVersions(links, circuits, probeOnly)[3:])
        self.assertEqual(wire.PROBE_ONLY_ENTRY in entries, probeOnly)
        offered, circuitVersions = wire.splitVersions(entries)
        self.assertEqual((offered, circuitVersions), (links, circuits))
