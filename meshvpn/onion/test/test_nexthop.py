"""NEXT_HOP_SUSPECTED over in-memory links: a relay tells every circuit through a hung next hop, the origin hears which hop said it.

The circuits are real (handshakes, relay crypto, CGO where offered); only
the links are in memory and the suspicion is handed to the relay's watch
as its link manager would.
"""

from hypothesis import given, strategies as st
from twisted.trial import unittest

from meshvpn.onion import nexthop
from meshvpn.onion.cells import CellError, DestroyReason, RelayCommand
from meshvpn.onion.destroy import CircuitDestroyed
from meshvpn.onion.nexthop import NextHopWatch
from meshvpn.onion.test.test_circuit import Net


class BodyTests(unittest.TestCase):
    def test_roundTrip(self):
        self.assertIs(nexthop.decode(nexthop.encode(True)), True)
        self.assertIs(nexthop.decode(nexthop.encode(False)), False)

    @given(st.binary(max_size=600))
    def test_anythingElseIsRefused(self, body):
        if body in (b"\x00", b"\x01"):
            return
        self.assertRaises(CellError, nexthop.decode, body)


class Heard:
    def __init__(self, circuit):
        self.calls = []
        circuit.onNextHopSuspected = lambda c, hop, suspected: self.calls.append((c, hop, suspected))


class RelayTellsTests(unittest.TestCase):
    def setUp(self):
        self.net = Net(self)
        self.circuits = [self.net.built(self) for _ in range(3)]
        self.heard = [Heard(c) for c in self.circuits]

    def test_guardTellsEveryCircuitThroughTheMiddle(self):
        watch = NextHopWatch(self.net.guard.switch)
        watch.peerSuspected(self.net.middle.nodeId, True)
        self.net.net.pump()
        for circuit, heard in zip(self.circuits, self.heard):
            self.assertEqual(heard.calls, [(circuit, 0, True)])
            self.assertFalse(circuit.closed)  # a warning, not a teardown: the suspicion may be wrong
        self.assertEqual(watch.status()["next_hop_warned_circuits"], 3)

    def test_middleTellsAboutTheExitThenHearsItAgain(self):
        watch = NextHopWatch(self.net.middle.switch)
        watch.peerSuspected(self.net.exit.nodeId, True)
        watch.peerSuspected(self.net.exit.nodeId, False)
        self.net.net.pump()
        for circuit, heard in zip(self.circuits, self.heard):
            self.assertEqual(heard.calls, [(circuit, 1, True), (circuit, 1, False)])

    def test_circuitStillCarriesDataAfterward(self):
        """A message from an inner hop keeps every hop's crypto in step (CGO's chain included)."""
        NextHopWatch(self.net.middle.switch).peerSuspected(self.net.exit.nodeId, True)
        NextHopWatch(self.net.guard.switch).peerSuspected(self.net.middle.nodeId, True)
        self.net.net.pump()
        circuit = self.circuits[0]
        got = []
        circuit.setPacketReceiver(got.extend)
        circuit.sendPackets([b"after the warning"])
        self.net.net.pump()
        self.assertEqual(got, [b"gninraw eht retfa"])
        self.assertFalse(circuit.closed)

    def test_circuitsFromThatPeerAreNotTold(self):
        """The exit's link to the middle carries circuits whose origin is on the middle's side: nothing to tell."""
        watch = NextHopWatch(self.net.exit.switch)
        watch.peerSuspected(self.net.middle.nodeId, True)
        self.net.net.pump()
        self.assertEqual([h.calls for h in self.heard], [[], [], []])
        self.assertEqual(watch.status()["next_hop_warned_circuits"], 0)

    def test_strangerIsNothing(self):
        watch = NextHopWatch(self.net.guard.switch)
        watch.peerSuspected(b"\x07" * 32, True)
        self.assertEqual(watch.status()["next_hop_warned_circuits"], 0)


class SlowLink:
    """What the watch reads of a link to a relay on a starved machine: PONGs of 2-3 s seen lately."""

    class roundTrips:
        samples = [0.1, 2.0, 3.0]

    def suspectTimeout(self):
        return 0.5


class StarvedMachineTests(unittest.TestCase):
    """A live peer on a starved machine answers late: its circuits' users are not moved for that."""

    def setUp(self):
        self.net = Net(self)
        self.circuits = [self.net.built(self) for _ in range(2)]
        self.heard = [Heard(c) for c in self.circuits]
        self.net.guard.switch.linkToPeer = lambda nodeId: SlowLink()
        self.watch = NextHopWatch(self.net.guard.switch)
        self.clock = self.net.clock

    def test_heardWithinItsUsualSlownessNobodyIsTold(self):
        self.watch.peerSuspected(self.net.middle.nodeId, True)
        self.clock.advance(2.0)  # 1.5 x 2.0 s - the 0.5 s already waited = 2.5 s more
        self.watch.peerSuspected(self.net.middle.nodeId, False)
        self.clock.advance(10)
        self.net.net.pump()
        self.assertEqual([h.calls for h in self.heard], [[], []])
        self.assertEqual(self.watch.status()["next_hop_heard_in_time"], 1)

    def test_stillSilentAfterThatEveryCircuitIsTold(self):
        self.watch.peerSuspected(self.net.middle.nodeId, True)
        self.clock.advance(2.6)
        self.net.net.pump()
        self.assertEqual([h.calls for h in self.heard], [[(c, 0, True)] for c in self.circuits])
        self.watch.peerSuspected(self.net.middle.nodeId, False)
        self.net.net.pump()
        self.assertEqual([h.calls[-1] for h in self.heard], [(c, 0, False) for c in self.circuits])


class OriginRulesTests(unittest.TestCase):
    def test_fromTheLastHopIsAViolation(self):
        """The exit has no next hop: a NEXT_HOP_SUSPECTED from it is a lie, charged to it."""
        net = Net(self)
        circuit = net.built(self)
        net.relayCircuit(net.exit).sendRelay(RelayCommand.NEXT_HOP_SUSPECTED, 0, nexthop.encode(True))
        net.net.pump()
        self.assertTrue(circuit.closed)
        self.assertEqual(circuit.closeReason.reason, DestroyReason.PROTOCOL)
        self.assertEqual(circuit.closeReason.hop, 2)

    def test_malformedBodyIsAViolationOfItsHop(self):
        net = Net(self)
        circuit = net.built(self)
        [hop] = [e for ch in net.middle.switch.channels() for e in ch.circuits.values()
                 if getattr(e, "next", None) is not None]
        hop.sendRelay(RelayCommand.NEXT_HOP_SUSPECTED, 0, b"\x02")
        net.net.pump()
        self.assertTrue(circuit.closed)
        self.assertEqual(circuit.closeReason.hop, 1)

    def test_relaysRefuseItFromTheOrigin(self):
        net = Net(self)
        circuit = net.built(self)
        circuit.sendRelay(RelayCommand.NEXT_HOP_SUSPECTED, 0, nexthop.encode(True), hop=1)
        net.net.pump()
        self.assertTrue(circuit.closed)

    def test_aBuildWaitingOnTheSuspectedHopFailsNow(self):
        """The middle was asked to extend to an exit that hangs: the build fails now, charged to no hop."""
        net = Net(self)
        net.exit.switch.createReceived = lambda *a: None  # the exit never answers
        circuit, d = net.circuit(timeout=60.0)
        self.assertNoResult(d)
        NextHopWatch(net.middle.switch).peerSuspected(net.exit.nodeId, True)
        net.net.pump()
        f = self.failureResultOf(d, CircuitDestroyed)
        self.assertIsNone(f.value.hop)
        self.assertEqual(f.value.extending, 2)
