"""A capturing VPN client: nothing dials before its egress gate is up, whatever starts first.

The race: services start one by one in one reactor turn and the circuit
manager starts before the VPN, so a client that knew its relays at start
dialled its guard with no gate yet (no host route, no kill-switch
exception), and the capture that followed cut that connection off.  Here a
real link manager is asked for its guard link before the VPN starts, as
the circuit manager's first spare asks.
"""

from twisted.internet import defer
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from meshvpn.client import egress
from meshvpn.client.egress import EgressGate, EgressHold
from meshvpn.client.test.fakes import FakeTun
from meshvpn.client.test.test_egress import FakeRoutes as GateRoutes, IPMemoryTransport
from meshvpn.client.vpn import TunClient
from meshvpn.errors import EgressRefused
from meshvpn.interfaces import IDirectEgress
from meshvpn.link.manager import LinkTarget
from meshvpn.link.test.test_manager import Harness, result

NODE = bytes(range(32))


class CaptureRoutes:
    """The TUN client's side of the route controller: when it captured, in the shared order of events."""

    def __init__(self, events):
        self.events = events
        self.keptPorts = set()
        self.fail = False

    def capture(self, tun, keep):
        if self.fail:
            raise OSError("no route table")
        self.events.append("capture")

    def restore(self):
        self.events.append("restore")

    def status(self):
        return {}


class OrderedGateRoutes(GateRoutes):
    def __init__(self, events):
        super().__init__()
        self.events = events

    def keep(self, destinations):
        self.events.append(("keep", tuple(sorted(destinations))))
        return super().keep(destinations)


class EarlyDialTests(unittest.TestCase):
    def setUp(self):
        self.h = Harness(2)
        self.links = self.h.managers[0]
        self.links._transports = {"tls": IPMemoryTransport(self.h.net)}
        self.guard = LinkTarget(self.h.ids[1].nodeId, (("tls", "198.18.2.1:9001"),))
        self.events = []
        self.gate = EgressGate(self.h.clock, OrderedGateRoutes(self.events))
        # wiring: the role builds the VPN client (and so its hold) before any service starts
        self.routes = CaptureRoutes(self.events)
        self.client = TunClient(self.h.clock, NODE, defer.Deferred, routes=self.routes, gate=self.gate,
                                egressUsers=[self.links], tunFactory=FakeTun)
        self.addCleanup(lambda: self.client.running and self.client.stopService())

    def test_aDialBeforeTheVpnStartsWaitsForTheGate(self):
        d = self.links.getLink(self.guard)  # the circuit manager's first spare, started first
        self.h.net.flush()
        self.h.clock.advance(0)
        self.assertEqual(self.h.net.connects, 0)  # no SYN: no route or kill-switch exception exists yet
        self.client.startService()
        self.h.clock.advance(0)  # the gate's batch
        self.h.net.flush()
        self.assertEqual(self.events, ["capture", ("keep", (("tcp", "198.18.2.1", 9001),))])
        self.assertEqual(self.h.net.connects, 1)  # dialled once the exception was in place
        self.assertEqual(result(d).peerId, self.h.ids[1].nodeId)

    def test_aFailedCaptureLetsDialsOutDirectly(self):
        """The start failed before capturing: nothing is captured, so nothing is held back."""
        d = self.links.getLink(self.guard)
        self.routes.fail = True
        self.assertRaises(OSError, self.client.startService)
        self.h.net.flush()
        self.assertEqual(result(d).peerId, self.h.ids[1].nodeId)
        self.assertIsNone(self.links._egress)

    def test_noHoldWithoutCapture(self):
        links = Harness(1).managers[0]
        TunClient(self.h.clock, NODE, defer.Deferred, egressUsers=[links], tunFactory=FakeTun)
        self.assertIsNone(links._egress)


class EgressHoldTests(unittest.TestCase):
    def test_interface(self):
        verifyObject(IDirectEgress, EgressHold())

    def test_nothingPasses(self):
        self.assertFalse(EgressHold().passes("udp", ("198.18.2.2", 9000)))

    def test_bounded(self):
        hold = EgressHold()
        for _ in range(egress.MAX_HELD):
            hold.allow([("tcp", "198.18.2.1", 9001)])
        self.assertIsInstance(result(hold.allow([("tcp", "198.18.2.1", 9001)])).value, EgressRefused)

    def test_givenUpRequestsAreForgotten(self):
        hold = EgressHold()
        d = hold.allow([("tcp", "198.18.2.1", 9001)])
        d.cancel()
        self.assertEqual(hold._waiting, {})
        result(d)  # the CancelledError, consumed

    def test_releasedThroughTheGateOrDirect(self):
        hold = EgressHold()
        waiting = hold.allow([("tcp", "198.18.2.1", 9001)])
        asked = []

        class Gate:
            def allow(self, destinations):
                asked.append(destinations)
                return defer.succeed(None)

        hold.release(Gate())
        self.assertEqual(asked, [[("tcp", "198.18.2.1", 9001)]])
        self.assertIsNone(result(waiting))
        late = EgressHold()
        d = late.allow([("udp", "198.18.2.2", 9000)])
        late.release(None)
        self.assertIsNone(result(d))


class EarlyDatagramTests(unittest.TestCase):
    def test_heldDatagramsGoThroughTheGateOnceItIsUp(self):
        """The DHT's first requests (started before the VPN) are neither sent outside the gate nor lost."""
        from meshvpn.client.test.test_egress import ControlledGate, Writes
        from meshvpn.udpmux import DatagramMultiplexer

        mux = DatagramMultiplexer()
        mux.transport = Writes()
        hold, gate = EgressHold(), ControlledGate()
        mux.setEgressGate(hold)
        mux.sendDatagram(b"\x80dht", ("198.18.2.2", 9000))
        self.assertEqual(mux.transport.sent, [])
        mux.setEgressGate(gate)
        hold.release(gate)
        self.assertEqual(mux.transport.sent, [])  # still waiting for the gate's route and exception
        gate.answer()
        self.assertEqual(mux.transport.sent, [(b"\x80dht", ("198.18.2.2", 9000))])
