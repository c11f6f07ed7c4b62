"""3-hop circuits over in-memory links: build, data both ways, confidentiality
against guard and middle, integrity (a flipped bit destroys the circuit),
RELAY_EARLY cap, TRUNCATE, DESTROY reasons, timeouts, onion key rotation."""

from twisted.internet import task
from twisted.trial import unittest
from zope.interface import implementer

from meshvpn.interfaces import ICircuitEdge

from meshvpn.onion import cells as C
from meshvpn.onion.cells import DestroyReason, RelayCommand
from meshvpn.onion.origin import HopSpec, OriginCircuit
from meshvpn.onion.destroy import CircuitDestroyed
from meshvpn.onion.relaycircuit import RelayCircuit
from meshvpn.tools.onionfakes import MemoryNetwork, TestRelay

SECRET = b"MEET-AT-THE-OLD-MILL-AT-NOON-" * 4


@implementer(ICircuitEdge)
class EchoEdge:
    """An exit edge that records packets and sends them back reversed."""

    def __init__(self):
        self.packets = []
        self.relay = []
        self.closed = []

    def relayReceived(self, circuit, command, streamId, data):
        self.relay.append((command, streamId, data))

    def packetsReceived(self, circuit, packets):
        self.packets.extend(packets)
        circuit.sendPackets([p[::-1] for p in packets])

    def circuitWindowOpened(self, circuit):
        pass

    def circuitClosed(self, circuit, reason):
        self.closed.append(reason)


class Net:
    def __init__(self, testCase, edge=None):
        self.clock = task.Clock()
        self.net = MemoryNetwork(self.clock)
        self.dir = {}
        self.edge = edge or EchoEdge()
        self.guard = TestRelay(self.net, self.clock, "guard", directory=self.dir)
        self.middle = TestRelay(self.net, self.clock, "middle", directory=self.dir)
        self.exit = TestRelay(self.net, self.clock, "exit", edge=self.edge, directory=self.dir)
        self.client = TestRelay(self.net, self.clock, "client", directory=self.dir)
        self.client.switch.keyRing = None  # clients carry no one's circuits

    def circuit(self, path=None, timeout=10.0, anonymous=False):
        path = path or [self.guard.hopSpec(), self.middle.hopSpec(), self.exit.hopSpec()]
        self.guardLink = self.client.linkTo(path[0].nodeId, anonymous)
        circ = OriginCircuit(self.client.switch, self.guardLink, path, buildTimeout=timeout)
        d = circ.build()
        self.net.pump()
        return circ, d

    def built(self, tc):
        circ, d = self.circuit()
        tc.assertIs(tc.successResultOf(d), circ)
        return circ

    def relayCircuit(self, relay):
        [c] = [e for ch in relay.switch.channels() for e in ch.circuits.values() if isinstance(e, RelayCircuit)]
        return c

    def channel(self, relay, towards):
        """C{relay}'s channel to the node C{towards} (C{None}: an anonymous client)."""
        peerId = towards.nodeId if towards is not None else None
        [ch] = [ch for ch in relay.switch.channels() if ch.peerId == peerId]
        return ch


class Build(unittest.TestCase):
    def test_threeHops(self):
        n = Net(self)
        circ = n.built(self)
        self.assertEqual(len(circ.crypto.hops), 3)
        self.assertEqual(circ.earlySent, 2)
        for relay in (n.guard, n.middle, n.exit):
            self.assertEqual(relay.switch.counters["circuits_created"], 1)
        self.assertIsNone(n.relayCircuit(n.exit).next)

    def test_anonymousClientLink(self):
        """Clients do not prove an identity on their link: the guard sees peerId None."""
        n = Net(self)
        circ, d = n.circuit(anonymous=True)
        self.successResultOf(d)
        self.assertEqual(len(n.channel(n.guard, None).circuits), 1)
        circ.sendPackets([b"anon"])
        n.net.pump()
        self.assertEqual(n.edge.packets, [b"anon"])

    def test_packetsBothWays(self):
        n = Net(self)
        circ = n.built(self)
        got = []
        circ.setPacketReceiver(got.extend)
        packets = [SECRET, b"\x45" + b"p" * 1419, b"a"]
        self.assertEqual(circ.sendPackets(packets), 3)
        n.net.pump()
        self.assertEqual(n.edge.packets, packets)
        self.assertEqual(got, [p[::-1] for p in packets])

    def test_manyCellsWindowsAndSendmes(self):
        """More than a window's worth in each direction: authenticated SENDMEs keep it flowing."""
        n = Net(self)
        circ = n.built(self)
        got = []
        circ.setPacketReceiver(got.extend)
        for i in range(2500):
            circ.sendPacket(i.to_bytes(4, "big") * 100)
            n.net.pump()
        self.assertEqual(len(n.edge.packets), 2500)
        self.assertEqual(len(got), 2500)
        self.assertEqual(circ.packetsDropped, 0)
        self.assertGreater(circ.circuitRoom(), 0)

    def test_windowFullQueuesThenDropsPackets(self):
        """Past the window packets wait in a bounded backlog (sent, in order, as SENDMEs come back); past that they drop."""
        from meshvpn.onion.dispatch import PACKET_BACKLOG

        n = Net(self)
        circ = n.built(self)
        queued = PACKET_BACKLOG // 400
        for i in range(1000 + queued + 50):  # no pumping: no SENDME can come back
            circ.sendPacket(i.to_bytes(4, "big") + b"z" * 396)
        self.assertEqual(circ.circuitRoom(), 0)
        self.assertEqual(circ.packetsDropped, 50)
        n.net.pump()
        self.assertEqual(len(n.edge.packets), 1000 + queued)
        self.assertEqual([int.from_bytes(p[:4], "big") for p in n.edge.packets], list(range(1000 + queued)))
        self.assertEqual(circ._backlogBytes, 0)


    def test_packetLargerThanTheLeftWindowIsNotStuck(self):
        """
        The attack of a slow path on packet mode: a congestion window at
        its minimum (one SENDME's worth) with 98 cells unacknowledged
        leaves room for 2, and the next packet needs 4.  No SENDME can come
        (the exit acknowledges every 100th cell), so a packet that waited
        for the window whole would wait for ever, and every packet after it;
        instead the window's last cells carry its start and the exit's
        SENDME lets the rest follow.
        """
        from meshvpn.onion.flow import VegasParams, VegasWindow

        class Slow(VegasParams):
            initial = minimum = 100

        n = Net(self)
        circ = n.built(self)
        circ.packWindow = VegasWindow(n.clock, Slow)
        one = circ.maxData - 2  # a record that fills one cell exactly
        small = [bytes([i]) * one for i in range(98)]
        self.assertEqual(circ.sendPackets(small), 98)
        n.net.pump()
        self.assertEqual(circ.circuitRoom(), 2)
        big = b"\x45" + b"B" * (3 * circ.maxData)
        after = [b"after-%d" % i for i in range(5)]
        self.assertEqual(circ.sendPackets([big]), 1)
        self.assertEqual(circ.sendPackets(after), 5)
        n.net.pump()
        self.assertEqual(n.edge.packets, small + [big] + after)
        self.assertEqual(circ.packetsDropped, 0)
        self.assertEqual((circ._backlog, circ._tail, circ._backlogBytes), ([], b"", 0))

    def test_unframeablePacketInTheBacklogIsDropped(self):
        """An empty packet waiting for the window is counted dropped, not a broken circuit when the window opens."""
        n = Net(self)
        circ = n.built(self)
        for i in range(1000):
            circ.sendPacket(b"w" * (circ.maxData - 2))
        self.assertEqual(circ.circuitRoom(), 0)
        self.assertEqual(circ.sendPackets([b"", b"late"]), 2)
        self.assertEqual(circ.packetsDropped, 1)
        n.net.pump()
        self.assertEqual(n.edge.packets[-1], b"late")
        self.assertEqual(len(n.edge.packets), 1001)


class Confidentiality(unittest.TestCase):
    def test_guardAndMiddleCannotRead(self):
        """
        Every byte the guard and the middle see, both what reaches them and
        what they produce after removing their layer, lacks the plaintext;
        the exit gets it.
        """
        n = Net(self)
        seen = {"client->guard": [], "guard->middle": [], "middle->exit": [], "exit->middle": [],
                "middle->guard": [], "guard->client": []}

        def tapAll():
            for relay, name in ((n.guard, "guard"), (n.middle, "middle"), (n.exit, "exit")):
                for ch in relay.switch.channels():
                    peer = n.dir[ch.peerId].name
                    key = f"{name}->{peer}"
                    if key in seen:
                        ch.link.tap = seen[key].extend
            n.guardLink.tap = seen["client->guard"].extend

        circ = n.built(self)
        tapAll()
        circ.setPacketReceiver(lambda p: None)
        circ.sendPackets([SECRET])
        n.net.pump()
        self.assertEqual(n.edge.packets, [SECRET])
        for name, cells in seen.items():
            self.assertTrue(cells, name)
            blob = b"".join(cells)
            self.assertNotIn(SECRET[:16], blob, name)
            self.assertNotIn(SECRET[::-1][:16], blob, name)


class Integrity(unittest.TestCase):
    def _flipAt(self, link, n, offset):
        """Make C{link} flip one bit in the next relay cell it sends."""
        original = link.sendCells

        def flipping(cells):
            out = []
            for cell in cells:
                if cell[4] in (3, 9) and not n.flipped:
                    n.flipped = True
                    b = bytearray(cell)
                    b[offset] ^= 0x01
                    cell = bytes(b)
                out.append(cell)
            original(out)

        link.sendCells = flipping

    def _middleLink(self, n, towards):
        return n.channel(n.middle, towards).link

    def _assertDestroyedEverywhere(self, n, circ, reason=DestroyReason.PROTOCOL):
        closed = self.successResultOf(circ.whenClosed())
        self.assertIsInstance(closed, CircuitDestroyed)
        self.assertEqual(closed.reason, reason)
        for relay in (n.guard, n.middle, n.exit):
            self.assertEqual(relay.switch.circuitCount(), 0, relay.name)

    def test_middleFlipsBitForward(self):
        for offset in (5, 5 + 8, 5 + 20, 5 + 300, 513):
            n = Net(self)
            n.flipped = False
            circ = n.built(self)
            self._flipAt(self._middleLink(n, n.exit), n, offset)
            circ.sendPackets([SECRET])
            n.net.pump()
            self.assertTrue(n.flipped)
            self.assertEqual(n.edge.packets, [], offset)
            self._assertDestroyedEverywhere(n, circ)

    def test_middleFlipsBitBackward(self):
        for offset in (5, 5 + 9, 5 + 100, 513):
            n = Net(self)
            n.flipped = False
            circ = n.built(self)
            got = []
            circ.setPacketReceiver(got.extend)
            self._flipAt(self._middleLink(n, n.guard), n, offset)
            circ.sendPackets([SECRET])
            n.net.pump()
            self.assertTrue(n.flipped)
            self.assertEqual(got, [])
            self._assertDestroyedEverywhere(n, circ)

    def test_replayedCell(self):
        n = Net(self)
        circ = n.built(self)
        sent = []
        n.guardLink.tap = sent.extend
        circ.sendPackets([b"one"])
        n.net.pump()
        n.guardLink.sendCells([sent[-1]])  # the same cell again
        n.net.pump()
        self.assertEqual(n.edge.packets, [b"one"])
        self._assertDestroyedEverywhere(n, circ)

    def test_reorderedCells(self):
        n = Net(self)
        circ = n.built(self)
        held = []
        original = n.guardLink.sendCells
        n.guardLink.sendCells = held.extend
        circ.sendPackets([b"one"])
        circ.sendPackets([b"two"])
        n.net.endTurn()  # the guard channel writes both cells in one batch
        original([held[1], held[0]])
        n.net.pump()
        self.assertEqual(n.edge.packets, [])
        self._assertDestroyedEverywhere(n, circ)


class Protocol(unittest.TestCase):
    def test_relayEarlyCap(self):
        n = Net(self)
        circ = n.built(self)
        for i in range(C.MAX_RELAY_EARLY - circ.earlySent):
            circ.sendRelay(RelayCommand.DROP, 0, b"", early=True)
        n.net.pump()
        self.assertFalse(circ.closed)
        # the origin refuses to spend more; a hostile origin sending one more is destroyed
        self.assertRaises(Exception, circ.sendRelay, RelayCommand.DROP, 0, b"", early=True)
        circ.earlySent = 0
        circ.sendRelay(RelayCommand.DROP, 0, b"", early=True)
        n.net.pump()
        self._closedWith(circ, DestroyReason.PROTOCOL)

    def _closedWith(self, circ, reason):
        closed = self.successResultOf(circ.whenClosed())
        self.assertEqual(closed.reason, reason)

    def test_extendOutsideRelayEarly(self):
        n = Net(self)
        circ, d = n.circuit(path=[n.guard.hopSpec()])
        self.successResultOf(d)
        ext = C.Extend2(n.middle.nodeId, (), (), C.Create2(C.HTYPE_NTOR, bytes(96)))
        circ.sendRelay(RelayCommand.EXTEND2, 0, ext.encode(), early=False)
        n.net.pump()
        self._closedWith(circ, DestroyReason.PROTOCOL)
        self.assertEqual(n.middle.switch.counters["circuits_created"], 0)

    def test_truncateAndExtendAgain(self):
        n = Net(self)
        circ = n.built(self)
        d = circ.truncate(2)
        n.net.pump()
        self.assertEqual(self.successResultOf(d), DestroyReason.REQUESTED)
        self.assertEqual(len(circ.crypto.hops), 2)
        self.assertEqual(n.exit.switch.circuitCount(), 0)
        other = TestRelay(n.net, n.clock, "exit2", edge=n.edge, directory=n.dir)
        d = circ.extend(other.hopSpec())
        n.net.pump()
        self.successResultOf(d)
        circ.sendPackets([b"via exit2"])
        n.net.pump()
        self.assertEqual(n.edge.packets, [b"via exit2"])

    def test_extendToUnknownRelayTruncates(self):
        n = Net(self)
        ghost = HopSpec(b"\x09" * 32, b"\x01" * 32)
        circ, d = n.circuit(path=[n.guard.hopSpec(), n.middle.hopSpec(), ghost])
        f = self.failureResultOf(d, CircuitDestroyed)
        self.assertEqual(f.value.reason, DestroyReason.CONNECTFAILED)
        # Charged to no hop: the middle's word that the exit is unreachable is
        # only its word (a hostile hop would name honest relays to steer paths).
        self.assertIsNone(f.value.hop)
        self.assertTrue(circ.closed)
        n.net.pump()
        for relay in (n.guard, n.middle):
            self.assertEqual(relay.switch.circuitCount(), 0)

    def test_destroyReasonReachesOrigin(self):
        n = Net(self)
        circ = n.built(self)
        n.relayCircuit(n.exit).destroy(DestroyReason.HIBERNATING)
        n.net.pump()
        self._closedWith(circ, DestroyReason.HIBERNATING)
        self.assertEqual(n.guard.switch.circuitCount(), 0)
        self.assertEqual(n.middle.switch.circuitCount(), 0)

    def test_closeSendsDestroy(self):
        n = Net(self)
        circ = n.built(self)
        self.assertEqual(n.guardLink.users, 1)  # circuits hold their links (no idle close)
        circ.close("finished")  # the circuit manager closes with names
        n.net.pump()
        self._closedWith(circ, DestroyReason.FINISHED)
        self.assertEqual(n.guardLink.users, 0)
        for relay in (n.guard, n.middle, n.exit):
            self.assertEqual(relay.switch.circuitCount(), 0)
        self.assertEqual(n.edge.closed, [DestroyReason.FINISHED])

    def test_linkLossTearsDown(self):
        n = Net(self)
        circ = n.built(self)
        n.channel(n.middle, n.exit).link.close("lost")
        n.net.pump()
        self._closedWith(circ, DestroyReason.CHANNEL_CLOSED)
        self.assertEqual(n.guard.switch.circuitCount(), 0)
        self.assertEqual(n.exit.switch.circuitCount(), 0)

    def test_buildTimeout(self):
        n = Net(self)
        n.middle.switch.connector = lambda ext: __import__("twisted.internet.defer").internet.defer.Deferred()
        circ, d = n.circuit(timeout=5)
        self.assertNoResult(d)
        n.clock.advance(5)
        n.net.pump()
        f = self.failureResultOf(d, CircuitDestroyed)
        self.assertEqual(f.value.reason, DestroyReason.TIMEOUT)
        self.assertEqual(n.guard.switch.circuitCount(), 0)

    def test_forgedSendmeDestroys(self):
        n = Net(self)
        circ = n.built(self)
        for i in range(100):
            circ.sendPacket(b"q" * 480)
        ex = n.relayCircuit(n.exit)
        ex.sendRelay(RelayCommand.SENDME, 0, C.Sendme(b"\x00" * 8).encode())
        n.net.pump()
        self._closedWith(circ, DestroyReason.PROTOCOL)


class KeyRotation(unittest.TestCase):
    def test_overlap(self):
        n = Net(self)
        oldSpec = n.middle.hopSpec()
        ring = n.middle.keyRing
        nextSpec = HopSpec(n.middle.nodeId, ring.publicKeys()["next"])
        ring.overlap = 3600
        ring.rotate()
        self.assertEqual(ring.publicKeys()["current"], nextSpec.onionKey)
        # within the overlap: the old key (stale descriptor) and the new one both work
        for spec in (oldSpec, nextSpec, HopSpec(n.middle.nodeId, ring.publicKeys()["next"])):
            circ, d = n.circuit(path=[n.guard.hopSpec(), spec, n.exit.hopSpec()])
            self.successResultOf(d)
        # after it, the old key is refused
        n.clock.advance(3601)
        circ, d = n.circuit(path=[n.guard.hopSpec(), oldSpec, n.exit.hopSpec()])
        f = self.failureResultOf(d, CircuitDestroyed)
        self.assertIsNone(f.value.hop)  # past the guard, failures are charged to no hop
        self.assertEqual(n.middle.switch.counters["circuits_created"], 3)


class StreamHook(unittest.TestCase):
    """The stream layer plugs in with a StreamMux-shaped handler at each end."""

    def test_dataBothWaysThroughTheHooks(self):
        class Origin:
            def __init__(self):
                self.cells, self.opened, self.closed = [], 0, []

            def relayReceived(self, command, streamId, data):
                self.cells.append((command, streamId, data))

            def circuitWindowOpened(self):
                self.opened += 1

            def circuitClosed(self):
                self.closed.append(True)

        class ExitEdge(EchoEdge):
            def relayReceived(self, circuit, command, streamId, data):
                self.relay.append((command, streamId, data))
                if command == RelayCommand.DATA:
                    self.assertRoom = circuit.circuitRoom()
                    circuit.sendRelay(RelayCommand.DATA, streamId, data.upper())

        edge = ExitEdge()
        n = Net(self, edge=edge)
        circ = n.built(self)
        hook = circ.streamHandler = Origin()
        self.assertEqual(circ.circuitRoom(), 1000)
        for i in range(150):
            self.assertTrue(circ.sendRelay(RelayCommand.DATA, 7, b"abc"))
        n.net.pump()
        self.assertEqual({(c, sid) for c, sid, _ in edge.relay}, {(RelayCommand.DATA, 7)})
        self.assertEqual(b"".join(d for _, _, d in edge.relay), b"abc" * 150)
        # The circuit negotiated XON/XOFF: consecutive DATA cells of a stream
        # may reach the stream layer as one message.
        self.assertEqual({(c, sid) for c, sid, _ in hook.cells}, {(RelayCommand.DATA, 7)})
        self.assertEqual(b"".join(d for _, _, d in hook.cells), b"ABC" * 150)
        self.assertEqual(hook.opened, 1)  # one authenticated circuit SENDME after 100 cells
        circ.close()
        self.assertEqual(hook.closed, [True])


class RealStreamMux(unittest.TestCase):
    """The stream layer (StreamMux) at both ends of a real 3-hop circuit."""

    def test_echoStream(self):
        from meshvpn.streams.edge import StreamExitEdge, attachStreams
        from meshvpn.streams.test.test_mux import Collect, EchoStream

        def accept(circuit, host, port):
            if port != 7:
                from meshvpn.errors import StreamRefused
                raise StreamRefused(4)
            return EchoStream()

        n = Net(self, edge=StreamExitEdge(accept))
        circ = n.built(self)
        attachStreams(circ)
        collect = Collect()
        d = circ.openStream("198.18.0.9", 7, protocol=collect)
        n.net.pump()
        stream = self.successResultOf(d)
        payload = bytes(range(256)) * 400  # ~100 KB: > 200 cells, past the circuit's first SENDME
        stream.write(payload)
        for i in range(50):
            n.net.pump()
        self.assertEqual(b"".join(collect.data), payload)
        refused = circ.openStream("198.18.0.9", 80, protocol=Collect())
        n.net.pump()
        self.assertEqual(self.failureResultOf(refused).value.reason, 4)
