"""Circuit lifecycles: each end moves through its table's states, and what
a table does not list is refused (a protocol violation from a peer, an
error for our own code)."""

from twisted.internet import defer
from twisted.trial import unittest

from meshvpn.errors import MeshVPNError
from meshvpn.onion import cells as C
from meshvpn.onion.cells import CellError, DestroyReason, RelayCommand
from meshvpn.onion.lifecycle import HOP, ORIGIN, HopEvent, HopState, OriginEvent, OriginState
from meshvpn.onion.test.test_circuit import Net


class Tables(unittest.TestCase):
    def test_unlistedEventsAreRefused(self):
        self.assertRaises(CellError, ORIGIN.onPeer, OriginState.OPEN, OriginEvent.EXTENDED)
        self.assertRaises(CellError, ORIGIN.onPeer, OriginState.TRUNCATING, OriginEvent.CREATED)
        self.assertRaises(MeshVPNError, ORIGIN.onRequest, OriginState.BUILDING, OriginEvent.EXTEND)
        self.assertRaises(MeshVPNError, ORIGIN.onRequest, OriginState.CLOSED, OriginEvent.CLOSE)
        self.assertRaises(CellError, HOP.onPeer, HopState.MIDDLE, HopEvent.EXTEND)
        self.assertRaises(CellError, HOP.onPeer, HopState.LAST, HopEvent.EXTENDED)

    def test_onlyRequestedTruncatedIsAccepted(self):
        """
        TRUNCATED answers our TRUNCATE (the circuit stays open) or our
        EXTEND2 (the build failed: the circuit closes); on an open circuit
        nobody asked for it, and it is refused.
        """
        self.assertEqual(ORIGIN.onPeer(OriginState.TRUNCATING, OriginEvent.TRUNCATED), OriginState.OPEN)
        self.assertEqual(ORIGIN.onPeer(OriginState.BUILDING, OriginEvent.TRUNCATED), OriginState.CLOSED)
        self.assertRaises(CellError, ORIGIN.onPeer, OriginState.OPEN, OriginEvent.TRUNCATED)


class OriginLifecycle(unittest.TestCase):
    def test_buildTruncateExtendClose(self):
        n = Net(self)
        circ, d = n.circuit()
        self.assertIs(self.successResultOf(d), circ)
        self.assertIs(circ.state, OriginState.OPEN)
        t = circ.truncate(2)
        self.assertIs(circ.state, OriginState.TRUNCATING)
        self.assertRaises(MeshVPNError, circ.truncate, 1)  # one at a time
        n.net.pump()
        self.successResultOf(t)
        self.assertIs(circ.state, OriginState.OPEN)
        e = circ.extend(n.exit.hopSpec())
        self.assertIs(circ.state, OriginState.BUILDING)
        n.net.pump()
        self.successResultOf(e)
        self.assertIs(circ.state, OriginState.OPEN)
        circ.close()
        self.assertIs(circ.state, OriginState.CLOSED)
        self.assertTrue(circ.closed)
        self.assertEqual(self.successResultOf(circ.whenClosed()).reason, DestroyReason.FINISHED)
        self.assertEqual(self.failureResultOf(circ.extend(n.exit.hopSpec())).value.reason, DestroyReason.FINISHED)

    def test_extendWhileBuildingFails(self):
        n = Net(self)
        n.middle.switch.connector = lambda ext: defer.Deferred()
        circ, d = n.circuit()
        self.assertIs(circ.state, OriginState.BUILDING)
        self.failureResultOf(circ.extend(n.exit.hopSpec()), MeshVPNError)

    def test_lateHandshakeReplyIsAProtocolViolation(self):
        """An EXTENDED2 on an open circuit is not in the table: the circuit is destroyed."""
        n = Net(self)
        circ = n.built(self)
        exitHop = n.relayCircuit(n.exit)
        exitHop.sendRelay(RelayCommand.EXTENDED2, 0, C.Extended2(C.Created2(bytes(64))).encode())
        n.net.pump()
        self.assertEqual(self.successResultOf(circ.whenClosed()).reason, DestroyReason.PROTOCOL)


class HopLifecycle(unittest.TestCase):
    def test_lastExtendingMiddleAndBack(self):
        n = Net(self)
        circ, d = n.circuit(path=[n.guard.hopSpec()])
        self.successResultOf(d)
        guardHop = n.relayCircuit(n.guard)
        self.assertIs(guardHop.state, HopState.LAST)
        e = circ.extend(n.middle.hopSpec())
        n.net.pump()
        self.successResultOf(e)
        self.assertIs(guardHop.state, HopState.MIDDLE)
        t = circ.truncate(1)
        n.net.pump()
        self.successResultOf(t)
        self.assertIs(guardHop.state, HopState.LAST)
        circ.close()
        n.net.pump()
        self.assertIs(guardHop.state, HopState.CLOSED)

    def test_extendWhileExtendingIsAProtocolViolation(self):
        n = Net(self)
        n.guard.switch.connector = lambda ext: defer.Deferred()
        circ, d = n.circuit(path=[n.guard.hopSpec(), n.middle.hopSpec()])
        guardHop = n.relayCircuit(n.guard)
        self.assertIs(guardHop.state, HopState.EXTENDING)
        ext = C.Extend2(n.exit.nodeId, (), (), C.Create2(C.HTYPE_NTOR, bytes(96)))
        circ.sendRelay(RelayCommand.EXTEND2, 0, ext.encode(), hop=0, early=True)
        n.net.pump()
        self.assertIs(guardHop.state, HopState.CLOSED)
        self.assertEqual(self.failureResultOf(d).value.reason, DestroyReason.PROTOCOL)


class Freed(unittest.TestCase):
    def test_closedCircuitsAreFreedWithoutTheCycleCollector(self):
        """No reference cycles inside a circuit end: a relay carrying many circuits frees each at teardown."""
        import gc
        import weakref

        n = Net(self)
        circ = n.built(self)
        refs = [weakref.ref(n.relayCircuit(relay)) for relay in (n.guard, n.middle, n.exit)]
        refs.append(weakref.ref(circ))
        gc.disable()
        try:
            circ.close()
            n.net.pump()
            del circ
            self.assertEqual([r() for r in refs], [None] * 4)
        finally:
            gc.enable()
