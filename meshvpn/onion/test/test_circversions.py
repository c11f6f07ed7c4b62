"""Circuit versions from descriptors: a client never sends a hop a relay command newer than the hop speaks."""

from hypothesis import given, strategies as st
from twisted.trial import unittest

from meshvpn.dht.descriptor import encodeDescriptor, makeDescriptor, parseDescriptor
from meshvpn.identity import NodeIdentity
from meshvpn.onion import circversions
from meshvpn.onion.cells import RelayCommand
from meshvpn.onion.circversions import CircuitVersionTooOld, descriptorNames, hopVersion
from meshvpn.onion.flow import FLOW_ALL, FLOW_CC, FLOW_EARLY, FLOW_XON, flagsFor
from meshvpn.onion.test.test_circuit import Net

NEXT_RELEASE_COMMAND = 250  # a stand-in for a command the next circuit version adds


class NamesTests(unittest.TestCase):
    def test_names(self):
        self.assertEqual(descriptorNames((1,)), ())
        self.assertEqual(descriptorNames((1, 3, 2)), ("circuit-2", "circuit-3"))
        self.assertEqual(hopVersion(()), 1)
        self.assertEqual(hopVersion(("ntor", "circuit-2", "circuit-3", "ipv6-exit")), 3)
        for junk in ("circuit-", "circuit-x", "circuit-0", "circuit-1", "circuit-99999", "circuit--2"):
            self.assertEqual(hopVersion((junk,)), 1, junk)

    @given(st.lists(st.text(max_size=20), max_size=10))
    def test_anyNamesNeverRaise(self, names):
        self.assertGreaterEqual(hopVersion(names), 1)

    def test_descriptorCarriesThem(self):
        ident = NodeIdentity.generate()
        d = makeDescriptor(ident, {"udp": "198.18.0.1:1", "tls": "198.18.0.1:2"}, {"middle"}, 1_800_000_000,
                           handshakes=("ntor", *descriptorNames((1, 2))))
        self.assertEqual(hopVersion(parseDescriptor(encodeDescriptor(d)).handshakes), 2)


class OriginRefusesNewerCommandsTests(unittest.TestCase):
    def setUp(self):
        self.patch(circversions, "COMMAND_SINCE", {NEXT_RELEASE_COMMAND: 4})
        self.n = Net(self)

    def build(self, exitNames):
        n = self.n
        path = [n.guard.hopSpec(), n.middle.hopSpec(), n.exit.hopSpec(handshakes=exitNames)]
        circ, d = n.circuit(path)
        self.assertIs(self.successResultOf(d), circ)
        return circ

    def test_olderExitIsNotSentTheCommand(self):
        circ = self.build(("ntor", "ntor3", "circuit-2", "circuit-3"))  # what a release before circuit version 4 lists
        self.assertRaises(CircuitVersionTooOld, circ.sendRelay, NEXT_RELEASE_COMMAND, 0, b"x")
        self.n.net.pump()
        self.assertEqual(self.n.edge.relay, [])
        # version-1 commands still go to it
        self.assertTrue(circ.sendRelay(RelayCommand.DROP, 0, b""))

    def test_newerExitIsSentTheCommand(self):
        circ = self.build(("ntor", "ntor3", "circuit-2", "circuit-3", "circuit-4"))
        self.assertTrue(circ.sendRelay(NEXT_RELEASE_COMMAND, 0, b"x"))

    def test_relayListsTheVersionsItSpeaks(self):
        from meshvpn.onion import switch

        self.assertEqual(hopVersion(self.n.exit.switch.advertisedHandshakes()), 3)  # this release: 1 to 3
        self.patch(switch, "CIRCUIT_VERSIONS", (1, 2, 3, 4))  # the next release, beside it
        self.assertEqual(hopVersion(self.n.exit.switch.advertisedHandshakes()), 4)

    def test_middleCountsForCommandsToTheMiddle(self):
        circ = self.build(("ntor", "circuit-2", "circuit-3", "circuit-4"))
        self.assertRaises(CircuitVersionTooOld, circ.sendRelay, NEXT_RELEASE_COMMAND, 0, b"x", hop=1)


class FlowFlagsByVersionTests(unittest.TestCase):
    """Optimistic data (FLOW_EARLY) is proposed only to a last hop that lists circuit version 2."""

    def setUp(self):
        self.n = Net(self)

    def build(self, exitNames):
        n = self.n
        circ, d = n.circuit([n.guard.hopSpec(), n.middle.hopSpec(), n.exit.hopSpec(handshakes=exitNames)])
        self.assertIs(self.successResultOf(d), circ)
        n.net.pump()
        return circ

    def olderExit(self):
        # an exit of the release before version 2: it knows CC and XON only and
        # destroys a circuit proposing anything else
        from meshvpn.onion import cells

        self.patch(cells, "FLOW_KNOWN_FLAGS", FLOW_CC | FLOW_XON)

    def test_version2ExitIsNotProposedOffloadRecords(self):
        from meshvpn.onion import cells

        self.patch(cells, "FLOW_KNOWN_FLAGS", FLOW_CC | FLOW_XON | FLOW_EARLY)  # a release before version 3
        circ = self.build(("ntor", "ntor3", "circuit-2"))
        self.assertFalse(circ.closed)
        self.assertEqual(circ.flowFlags, FLOW_CC | FLOW_XON | FLOW_EARLY)
        self.assertFalse(circ.packetReader.offload)

    def test_olderExitIsNotProposedEarlyData(self):
        self.olderExit()
        circ = self.build(("ntor", "ntor3"))
        self.assertFalse(circ.closed)
        self.assertEqual(circ.flowFlags, FLOW_CC | FLOW_XON)

    def test_withoutTheVersionCheckTheOlderExitDestroysTheCircuit(self):
        # what the check prevents: every circuit to an older exit died
        from meshvpn.onion import flow

        self.olderExit()
        self.patch(flow, "FLAG_SINCE", {})
        circ = self.build(("ntor", "ntor3"))
        self.assertTrue(circ.closed)

    def test_exitOfThisReleaseGetsEverything(self):
        circ = self.build(self.n.exit.switch.advertisedHandshakes())
        self.assertFalse(circ.closed)
        self.assertEqual(circ.flowFlags, FLOW_ALL)

    def test_flagsFor(self):
        self.assertEqual(flagsFor(FLOW_ALL, 1), FLOW_CC | FLOW_XON)
        self.assertEqual(flagsFor(FLOW_ALL, 2), FLOW_CC | FLOW_XON | FLOW_EARLY)
        self.assertEqual(flagsFor(FLOW_ALL, 3), FLOW_ALL)
        self.assertEqual(flagsFor(FLOW_CC, 1), FLOW_CC)
