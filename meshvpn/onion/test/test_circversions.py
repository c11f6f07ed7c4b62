"""Circuit versions from descriptors: a client never sends a hop a relay command newer than the hop speaks."""

from hypothesis import given, strategies as st
from twisted.trial import unittest

from meshvpn.dht.descriptor import encodeDescriptor, makeDescriptor, parseDescriptor
from meshvpn.identity import NodeIdentity
from meshvpn.onion import circversions
from meshvpn.onion.cells import RelayCommand
from meshvpn.onion.circversions import CircuitVersionTooOld, descriptorNames, hopVersion
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
        self.patch(circversions, "COMMAND_SINCE", {NEXT_RELEASE_COMMAND: 2})
        self.n = Net(self)

    def build(self, exitNames):
        n = self.n
        path = [n.guard.hopSpec(), n.middle.hopSpec(), n.exit.hopSpec(handshakes=exitNames)]
        circ, d = n.circuit(path)
        self.assertIs(self.successResultOf(d), circ)
        return circ

    def test_olderExitIsNotSentTheCommand(self):
        circ = self.build(("ntor", "ntor3"))  # what a release before circuit version 2 lists
        self.assertRaises(CircuitVersionTooOld, circ.sendRelay, NEXT_RELEASE_COMMAND, 0, b"x")
        self.n.net.pump()
        self.assertEqual(self.n.edge.relay, [])
        # version-1 commands still go to it
        self.assertTrue(circ.sendRelay(RelayCommand.DROP, 0, b""))

    def test_newerExitIsSentTheCommand(self):
        circ = self.build(("ntor", "ntor3", "circuit-2"))
        self.assertTrue(circ.sendRelay(NEXT_RELEASE_COMMAND, 0, b"x"))

    def test_relayListsTheVersionsItSpeaks(self):
        from meshvpn.onion import switch

        self.assertEqual(hopVersion(self.n.exit.switch.advertisedHandshakes()), 1)  # this release: version 1 only
        self.patch(switch, "CIRCUIT_VERSIONS", (1, 2))  # the next release, beside it
        self.assertEqual(hopVersion(self.n.exit.switch.advertisedHandshakes()), 2)

    def test_middleCountsForCommandsToTheMiddle(self):
        circ = self.build(("ntor", "circuit-2"))
        self.assertRaises(CircuitVersionTooOld, circ.sendRelay, NEXT_RELEASE_COMMAND, 0, b"x", hop=1)
