"""Multipath sets over in-memory circuits on task.Clock: linking, order, a dying leg, hostile legs."""

import os

from hypothesis import given, settings, strategies as st
from twisted.internet import task
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from meshvpn.circuits.mplinks import LinkRegistry, MultipathRefused
from meshvpn.circuits.mpreorder import MultipathViolation, ReorderBuffer
from meshvpn.circuits.mpset import LINK_TIMEOUT, LegState, MultipathSet
from meshvpn.circuits.test.mpmemory import Collector, memoryLeg
from meshvpn.interfaces import IMultipathLeg
from meshvpn.onion.cells import RelayCommand
from meshvpn.onion.multipathmsgs import MpAck, MpLink, MpSwitch

NONCE = b"n" * 32
STREAM = 7


class Network:
    """An origin set and an exit registry joined by in-memory legs."""

    def __init__(self, delays=(0.001, 0.001), window=200, setWindow=None, maxSets=64, maxLinking=16):
        self.clock = task.Clock()
        self.exitData = Collector()
        self.originData = Collector()
        self.exitSets = []
        self.closed = []

        def makeSet(nonce, leg, streamId):
            if streamId != STREAM:
                raise MultipathRefused("no such stream")
            s = MultipathSet(self.clock, nonce, False, self.exitData, window=setWindow)
            self.exitSets.append(s)
            return s

        self.registry = LinkRegistry(makeSet, maxSets=maxSets, maxLinking=maxLinking)
        self.origin = MultipathSet(self.clock, NONCE, True, self.originData, onClose=self.closed.append, window=setWindow)
        self.legs = []
        for k, delay in enumerate(delays):
            self.legs.append(self.leg(delay, window, f"leg{k}"))

    def leg(self, delay, window=200, name="leg"):
        o, e = memoryLeg(self.clock, delay, window, name)
        o.mpset = self.origin
        e.registry = self.registry
        return o, e

    def link(self):
        for k, (o, _) in enumerate(self.legs):
            self.origin.addLeg(o, STREAM if k == 0 else 0)
        self.run(1.0)

    def run(self, seconds, step=0.0005):
        for _ in range(int(seconds / step)):
            self.clock.advance(step)

    def runUntil(self, done, limit=60.0, step=0.0005):
        t = 0.0
        while not done() and t < limit:
            self.clock.advance(step)
            t += step
        return done()


class LinkingTests(unittest.TestCase):
    def test_memoryLegIsALeg(self):
        o, _ = memoryLeg(task.Clock(), 0.001)
        verifyObject(IMultipathLeg, o)

    def test_twoLegsLink(self):
        net = Network()
        net.link()
        self.assertEqual(len(net.origin.linkedLegs), 2)
        self.assertEqual(list(net.registry.sets), [NONCE])
        (exitSet,) = net.exitSets
        self.assertEqual(len(exitSet.linkedLegs), 2)
        self.assertEqual(net.registry.linking(), 0)
        sent = [c for c, _, _ in net.legs[0][0].sent]
        self.assertEqual(sent[:2], [RelayCommand.MP_LINK, RelayCommand.MP_LINKED_ACK])

    def test_thirdLegRefused(self):
        net = Network(delays=(0.001, 0.001, 0.001))
        for k, (o, _) in enumerate(net.legs[:2]):
            net.origin.addLeg(o, STREAM if k == 0 else 0)
        net.run(0.1)
        third, thirdExit = net.legs[2]
        # The origin's own set will not take a third leg either; speak for a rogue client.
        third.sendRelay(RelayCommand.MP_LINK, 0, MpLink(NONCE).encode())
        net.run(0.1)
        self.assertIsInstance(thirdExit.violations[0], MultipathRefused)
        self.assertTrue(thirdExit.isClosed)
        self.assertEqual(len(net.exitSets[0].linkedLegs), 2)
        self.assertRaises(MultipathViolation, net.origin.addLeg, third)

    def test_firstLegMustNameAStream(self):
        net = Network(delays=(0.001,))
        net.origin.addLeg(net.legs[0][0], 0)
        net.run(0.1)
        self.assertIsInstance(net.legs[0][1].violations[0], MultipathRefused)
        self.assertEqual(net.registry.sets, {})

    def test_linkingLegsPilingUpAreRefused(self):
        """A client opening many links and never finishing them meets a bound, and each times out."""
        clock = task.Clock()
        made = []

        def makeSet(nonce, leg, streamId):
            made.append(MultipathSet(clock, nonce, False, Collector()))
            return made[-1]

        registry = LinkRegistry(makeSet, maxSets=100, maxLinking=4)
        legs = []
        for k in range(4):
            _, e = memoryLeg(clock, 0.001)
            e.registry = registry
            legs.append(e)
            registry.linkReceived(e, STREAM, MpLink(bytes([k]) * 32).encode())
        _, extra = memoryLeg(clock, 0.001)
        self.assertRaises(MultipathRefused, registry.linkReceived, extra, STREAM, MpLink(b"x" * 32).encode())
        clock.advance(LINK_TIMEOUT + 1)
        self.assertTrue(all(e.isClosed for e in legs))
        self.assertEqual(registry.linking(), 0)
        self.assertEqual(registry.sets, {})
        registry.linkReceived(extra, STREAM, MpLink(b"x" * 32).encode())

    def test_setsBounded(self):
        clock = task.Clock()
        registry = LinkRegistry(lambda n, leg, s: MultipathSet(clock, n, False, Collector()), maxSets=2)
        for k in range(2):
            _, e = memoryLeg(clock, 0.001)
            registry.linkReceived(e, STREAM, MpLink(bytes([k]) * 32).encode())
        _, e = memoryLeg(clock, 0.001)
        self.assertRaises(MultipathRefused, registry.linkReceived, e, STREAM, MpLink(b"z" * 32).encode())

    def test_sameCircuitTwiceRefused(self):
        clock = task.Clock()
        registry = LinkRegistry(lambda n, leg, s: MultipathSet(clock, n, False, Collector()))
        _, e = memoryLeg(clock, 0.001)
        registry.linkReceived(e, STREAM, MpLink(NONCE).encode())
        self.assertRaises(MultipathRefused, registry.linkReceived, e, 0, MpLink(NONCE).encode())


class DeliveryTests(unittest.TestCase):
    def transfer(self, net, size, both=True):
        up, down = os.urandom(size), os.urandom(size)
        net.origin.write(up)
        net.origin.finish()
        exitSet = net.exitSets[0]
        if both:
            exitSet.write(down)
        exitSet.finish()
        self.assertTrue(net.runUntil(lambda: net.exitData.fin and net.originData.fin and net.origin.closed))
        self.assertEqual(net.exitData.data, up)
        self.assertEqual(net.originData.data, down if both else b"")
        return up, down

    def test_inOrderDifferentDelays(self):
        """One leg 1 ms, the other 20 ms: both carry data, and the stream arrives in order, both ways."""
        net = Network(delays=(0.001, 0.020))
        net.link()
        self.transfer(net, 1 << 20)
        for o, e in net.legs:
            self.assertGreater(sum(1 for c, _, _ in o.sent if c == RelayCommand.MP_DATA), 0)
            self.assertGreater(sum(1 for c, _, _ in e.sent if c == RelayCommand.MP_DATA), 0)
        self.assertLessEqual(net.exitSets[0].reorder.heldBytes, 0)
        self.assertEqual(net.closed, [None])

    def test_fasterLegPreferred(self):
        net = Network(delays=(0.001, 0.020))
        net.link()
        self.transfer(net, 1 << 20)
        fast, slow = (sum(1 for c, _, _ in o.sent if c == RelayCommand.MP_DATA) for o, _ in net.legs)
        self.assertGreater(fast, slow)

    def test_setWindowBoundsWhatIsKept(self):
        """The sender never keeps more than its window, however much the application queued."""
        net = Network(delays=(0.001, 0.020), setWindow=64)
        net.link()
        net.origin.write(os.urandom(1 << 20))
        peak = 0
        for _ in range(4000):
            net.clock.advance(0.0005)
            peak = max(peak, len(net.origin.sender.kept))
        self.assertLessEqual(peak, 64)
        self.assertFalse(net.origin.sender.wantsMore() and net.origin.sender.pendingBytes > (1 << 20))

    def test_legDiesMidTransfer(self):
        """The slow leg dies with cells in flight: the stream finishes on the other, nothing lost or doubled."""
        net = Network(delays=(0.001, 0.020))
        net.link()
        up, down = os.urandom(1 << 20), os.urandom(1 << 20)
        net.origin.write(up)
        net.origin.finish()
        exitSet = net.exitSets[0]
        exitSet.write(down)
        exitSet.finish()
        slow = net.legs[1][0]
        self.assertTrue(net.runUntil(lambda: slow.inflight > 20 and len(net.exitData.chunks) > 100))
        slow.kill()
        self.assertTrue(net.runUntil(lambda: net.exitData.fin and net.originData.fin))
        self.assertEqual(net.exitData.data, up)
        self.assertEqual(net.originData.data, down)
        self.assertGreater(net.origin.sender.resent + exitSet.sender.resent, 0)
        self.assertEqual(len(net.origin.legs), 1)

    def test_fastLegDiesMidTransfer(self):
        net = Network(delays=(0.001, 0.020))
        net.link()
        up = os.urandom(1 << 20)
        net.origin.write(up)
        net.origin.finish()
        net.exitSets[0].finish()
        net.run(0.03)
        net.legs[0][0].kill()
        self.assertTrue(net.runUntil(lambda: net.exitData.fin))
        self.assertEqual(net.exitData.data, up)

    def test_everyLegDies(self):
        net = Network()
        net.link()
        net.origin.write(b"x" * 100000)
        net.run(0.002)
        for o, _ in net.legs:
            o.kill()
        self.assertTrue(net.origin.closed)
        self.assertEqual(net.closed, ["every leg is gone"])
        self.assertEqual(net.registry.sets, {})


class HostileTests(unittest.TestCase):
    """A leg that sends what no honest sender sends gets its whole set closed, and memory stays bounded."""

    def linked(self):
        net = Network()
        net.link()
        return net, net.legs[0][0], net.exitSets[0]

    def assertSetClosed(self, net, exitSet):
        net.run(0.05)
        self.assertTrue(exitSet.closed)
        self.assertTrue(all(o.isClosed and e.isClosed for o, e in net.legs))
        self.assertEqual(net.registry.sets, {})

    def test_switchFarAhead(self):
        net, rogue, exitSet = self.linked()
        rogue.sendRelay(RelayCommand.MP_SWITCH, 0, MpSwitch(10 ** 9).encode())
        self.assertSetClosed(net, exitSet)

    def test_dataBeforeSwitch(self):
        net = Network()
        net.link()
        exitSet = net.exitSets[0]
        fresh, _ = net.legs[1]
        # A leg whose first sequenced cell has no MP_SWITCH before it: the exit cannot place it.
        fresh.sendRelay(RelayCommand.MP_DATA, 0, b"x")
        self.assertSetClosed(net, exitSet)

    def test_reorderFlood(self):
        """Holding back one number and flooding past it meets the buffer's cap, not the machine's."""
        net, rogue, exitSet = self.linked()
        exitSet.reorder.maxBuffer = 64 * 1024
        rogue.sendRelay(RelayCommand.MP_SWITCH, 0, MpSwitch(2).encode())
        peak = 0
        for _ in range(1000):
            rogue.sendRelay(RelayCommand.MP_DATA, 0, b"y" * 494)
        for _ in range(200):
            net.clock.advance(0.0005)
            peak = max(peak, exitSet.reorder.heldBytes)
        self.assertLessEqual(peak, 64 * 1024)
        self.assertSetClosed(net, exitSet)

    def test_ackOfUnsentCells(self):
        net, rogue, exitSet = self.linked()
        rogue.sendRelay(RelayCommand.MP_ACK, 0, MpAck(5).encode())
        self.assertSetClosed(net, exitSet)

    def test_dataAfterFin(self):
        net, rogue, exitSet = self.linked()
        rogue.sendRelay(RelayCommand.MP_SWITCH, 0, MpSwitch(1).encode())
        rogue.sendRelay(RelayCommand.MP_FIN, 0, b"")
        rogue.sendRelay(RelayCommand.MP_DATA, 0, b"late")
        self.assertSetClosed(net, exitSet)
        self.assertEqual(net.exitData.data, b"")

    def test_linkedAtTheExit(self):
        net, rogue, exitSet = self.linked()
        rogue.sendRelay(RelayCommand.MP_LINKED, 0, MpLink(NONCE).encode())
        self.assertSetClosed(net, exitSet)

    def test_duplicatesDropped(self):
        net, rogue, exitSet = self.linked()
        rogue.sendRelay(RelayCommand.MP_SWITCH, 0, MpSwitch(1).encode())
        rogue.sendRelay(RelayCommand.MP_DATA, 0, b"a")
        rogue.sendRelay(RelayCommand.MP_SWITCH, 0, MpSwitch(1).encode())
        rogue.sendRelay(RelayCommand.MP_DATA, 0, b"a")
        rogue.sendRelay(RelayCommand.MP_DATA, 0, b"b")
        net.run(0.05)
        self.assertFalse(exitSet.closed)
        self.assertEqual(net.exitData.data, b"ab")
        self.assertEqual(exitSet.reorder.duplicates, 1)


_COMMANDS = st.sampled_from([RelayCommand.MP_SWITCH, RelayCommand.MP_DATA, RelayCommand.MP_FIN, RelayCommand.MP_ACK,
                             RelayCommand.MP_LINKED, RelayCommand.MP_LINKED_ACK, RelayCommand.MP_LINK,
                             RelayCommand.MP_REFUSED, 200])
_BODIES = st.one_of(st.binary(max_size=60), st.integers(0, 1 << 64 - 1).map(lambda n: n.to_bytes(8, "big")),
                    st.integers(0, 300).map(lambda n: n.to_bytes(8, "big")))


class HypothesisTests(unittest.TestCase):
    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(st.integers(0, 1), _COMMANDS, _BODIES), max_size=60))
    def test_anyCellsOnAnyLeg(self, cells):
        """Whatever two legs send, the exit set either goes on or closes; it never holds more than its caps."""
        clock = task.Clock()
        got = Collector()
        exitSet = MultipathSet(clock, NONCE, False, got)
        exitSet.reorder.maxBuffer = 4096
        legs = [memoryLeg(clock, 0.001)[1] for _ in range(2)]
        for leg in legs:
            exitSet.acceptLeg(leg, MpLink(NONCE))
        for k, command, body in cells:
            try:
                exitSet.relayReceived(legs[k], command, body)
            except MultipathViolation:
                self.assertTrue(exitSet.closed)
                break
            self.assertLessEqual(exitSet.reorder.heldBytes, 4096)
            self.assertLessEqual(len(exitSet.reorder.held), exitSet.reorder.maxAhead)

    @settings(max_examples=200, deadline=None)
    @given(st.permutations(list(range(1, 41))))
    def test_anyArrivalOrderDeliversInOrder(self, order):
        out = []
        buf = ReorderBuffer(lambda c, b: out.append(b), lambda n: None)
        for leg in range(40):
            buf.addLeg(leg)
        for leg, seq in enumerate(order):
            buf.switch(leg, seq)
            buf.received(leg, RelayCommand.MP_DATA, seq.to_bytes(2, "big"))
        self.assertEqual([int.from_bytes(b, "big") for b in out], list(range(1, 41)))
        self.assertEqual(buf.heldBytes, 0)


class CodecTests(unittest.TestCase):
    @given(st.binary(max_size=80))
    def test_linkDecodeAnyBytes(self, body):
        from meshvpn.onion.cells import CellError
        try:
            link = MpLink.decode(body)
        except CellError:
            return
        self.assertEqual(link.encode(), body)

    @given(st.binary(max_size=12))
    def test_switchAndAckDecodeAnyBytes(self, body):
        from meshvpn.onion.cells import CellError
        for cls in (MpSwitch, MpAck):
            try:
                msg = cls.decode(body)
            except CellError:
                continue
            self.assertEqual(msg.encode(), body)

    def test_roundTrip(self):
        link = MpLink(NONCE, 5, 3)
        self.assertEqual(MpLink.decode(link.encode()), link)
        self.assertEqual(MpSwitch.decode(MpSwitch(9).encode()).seq, 9)
        self.assertEqual(MpAck.decode(MpAck(0).encode()).delivered, 0)
