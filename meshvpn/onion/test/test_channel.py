"""The channel: application writes leave in one link write per reactor turn
(stream writes, TUN packets, an exit's reads), at most one scheduled call
per turn, the public API only; and the onion plane's interfaces are true."""

from twisted.internet.interfaces import IPushProducer
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from meshvpn.interfaces import (
    ICellHandler, IChannel, ICircuit, ICircuitEdge, ICircuitEnd, IRelayCircuit, IStatusSource,
)
from meshvpn.onion.cells import RelayCommand
from meshvpn.onion.channel import Channel
from meshvpn.onion.nulledge import NullEdge
from meshvpn.onion.origin import OriginCircuit
from meshvpn.onion.relaycircuit import NextHopEnd, RelayCircuit
from meshvpn.onion.switch import CircuitSwitch
from meshvpn.onion.test.test_circuit import EchoEdge, Net


class Interfaces(unittest.TestCase):
    def test_everyOnionPieceProvidesWhatItDeclares(self):
        n = Net(self)
        circ = n.built(self)
        hop = n.relayCircuit(n.middle)
        self.assertTrue(verifyObject(ICircuit, circ))
        self.assertTrue(verifyObject(ICircuitEnd, circ))
        self.assertTrue(verifyObject(ICircuitEnd, hop))
        self.assertTrue(verifyObject(IRelayCircuit, hop))
        self.assertTrue(verifyObject(ICircuitEnd, n.channel(n.middle, n.exit).circuits[hop.nextId]))
        self.assertIsInstance(n.channel(n.middle, n.exit).circuits[hop.nextId], NextHopEnd)
        self.assertTrue(verifyObject(ICellHandler, n.middle.switch))
        self.assertTrue(verifyObject(IStatusSource, n.middle.switch))
        self.assertIsInstance(n.middle.switch, CircuitSwitch)
        channel = n.channel(n.middle, n.exit)
        self.assertIsInstance(channel, Channel)
        self.assertTrue(verifyObject(IChannel, channel))
        self.assertTrue(verifyObject(IPushProducer, channel))
        self.assertTrue(verifyObject(ICircuitEdge, NullEdge()))
        self.assertTrue(verifyObject(ICircuitEdge, EchoEdge()))
        self.assertIsInstance(hop, RelayCircuit)
        self.assertIsInstance(circ, OriginCircuit)


class OneWritePerTurn(unittest.TestCase):
    """Cells that applications make in one reactor turn reach the link in one C{sendCells} call."""

    def setUp(self):
        self.n = Net(self)
        self.circ = self.n.built(self)
        self.n.net.pump()

    def _turn(self, link, write, n=None):
        """Run C{write()} in one turn; @return: (batches written by the turn, cells, calls scheduled)."""
        n = n or self.n
        clock = n.clock
        batches, cells = link.batchesSent, link.cellsSent
        calls = len(clock.getDelayedCalls())
        write()
        scheduled = len(clock.getDelayedCalls()) - calls
        self.assertEqual(link.batchesSent, batches, "nothing is written before the turn ends")
        n.net.endTurn()
        return link.batchesSent - batches, link.cellsSent - cells, scheduled

    def test_tenStreamWritesOneLinkWrite(self):
        from meshvpn.streams.edge import StreamExitEdge, attachStreams
        from meshvpn.streams.test.test_mux import Collect, FarEnd

        exitSide = []

        def accept(circuit, host, port):
            # The exit's TCP side: what it "reads" goes to its receiver, the circuit's stream.
            target = FarEnd()
            exitSide.append(target)
            return target

        n = Net(self, edge=StreamExitEdge(accept))
        circ = n.built(self)
        attachStreams(circ)
        collect = Collect()
        d = circ.openStream("198.18.0.9", 7, protocol=collect)
        n.net.pump()
        stream = self.successResultOf(d)

        def tenWrites():
            for i in range(10):
                stream.write(bytes([65 + i]) * 494)  # one DATA cell each

        self.assertEqual(self._turn(n.guardLink, tenWrites, n), (1, 10, 1))
        n.net.pump()

        # The exit's side: ten reads from its TCP connection in one turn, one write toward the middle.
        [exitStream] = exitSide
        toMiddle = n.channel(n.exit, n.middle).link
        self.assertEqual(self._turn(toMiddle, lambda: [exitStream.receiver.streamDataReceived(b"r" * 494)
                                                       for _ in range(10)], n),
                         (1, 10, 1))
        n.net.pump()
        self.assertEqual(b"".join(collect.data), b"r" * 4940)

    def test_packetsFromManyTunReadsOneLinkWrite(self):
        def tunReads():
            for i in range(10):
                self.assertEqual(self.circ.sendPackets([bytes([i]) * 1400]), 1)

        batches, cells, scheduled = self._turn(self.n.guardLink, tunReads)
        self.assertEqual((batches, scheduled), (1, 1))
        self.assertEqual(cells, 30)  # 1402 bytes of record = 3 cells each
        self.n.net.pump()
        self.assertEqual(len(self.n.edge.packets), 10)

    def test_exitPacketsOneLinkWrite(self):
        hop = self.n.relayCircuit(self.n.exit)
        toMiddle = self.n.channel(self.n.exit, self.n.middle).link
        got = []
        self.circ.setPacketReceiver(got.extend)
        self.assertEqual(self._turn(toMiddle, lambda: [hop.sendPackets([b"p" * 400]) for _ in range(10)]),
                         (1, 10, 1))
        self.n.net.pump()
        self.assertEqual(got, [b"p" * 400] * 10)

    def test_twoCircuitsOnOneLinkOneWrite(self):
        other = OriginCircuit(self.n.client.switch, self.n.guardLink,
                              [self.n.guard.hopSpec(), self.n.middle.hopSpec(), self.n.exit.hopSpec()])
        d = other.build()
        self.n.net.pump()
        self.successResultOf(d)

        def both():
            for i in range(5):
                self.circ.sendRelay(RelayCommand.DROP, 0, b"")
                other.sendRelay(RelayCommand.DROP, 0, b"")

        self.assertEqual(self._turn(self.n.guardLink, both), (1, 10, 1))

    def test_twoLinksOneScheduledCall(self):
        """However many channels a turn touches, one call writes them all, one write per link."""
        first = self.n.guardLink
        other, d = self.n.circuit()  # over a second guard link
        self.successResultOf(d)
        second = self.n.guardLink
        self.assertIsNot(first, second)
        before = (first.batchesSent, second.batchesSent)

        def both():
            for i in range(5):
                self.circ.sendRelay(RelayCommand.DROP, 0, b"")
                other.sendRelay(RelayCommand.DROP, 0, b"")

        self.assertEqual(self._turn(second, both), (1, 5, 1))
        self.assertEqual((first.batchesSent, second.batchesSent), (before[0] + 1, before[1] + 1))

    def test_aTurnOverTheHighWaterMarkIsWrittenInSeveralBatches(self):
        """A turn that makes more cells than the queue's high-water mark writes early instead of overflowing."""
        channel = self.circ.channel
        link = self.n.guardLink
        high = self.n.client.switch.limits.queueHigh
        batches, cells = link.batchesSent, link.cellsSent
        for i in range(high * 5):
            self.assertTrue(self.circ.sendRelay(RelayCommand.DROP, 0, b""))
        self.assertEqual(link.batchesSent - batches, 4)  # each time the queue reached the mark
        self.n.net.endTurn()
        self.assertEqual(link.batchesSent - batches, 5)
        self.assertEqual(link.cellsSent - cells, high * 5)
        self.assertEqual(channel.queued(), 0)
        self.assertFalse(self.circ.closed)


class Queue(unittest.TestCase):
    """The channel's bounded queue through its public API."""

    def setUp(self):
        self.n = Net(self)
        self.circ = self.n.built(self)
        self.n.net.pump()
        self.channel = self.circ.channel
        self.link = self.n.guardLink

    def _cells(self, count):
        return [self.circ.prefix + bytes([0]) + bytes(509)] * count  # PADDING on our circuit

    def test_sendCellsIsOneBatch(self):
        before = self.link.batchesSent
        self.assertTrue(self.channel.sendCells(self._cells(3)))
        self.assertTrue(self.channel.send(self._cells(1)[0]))
        self.assertEqual(self.channel.queued(), 4)
        self.n.net.endTurn()
        self.assertEqual((self.link.batchesSent - before, self.channel.queued()), (1, 0))

    def test_pausedLinkFillsToTheLimitThenRefuses(self):
        limits = self.n.client.switch.limits
        self.channel.pauseProducing()  # the link's peer stopped taking cells
        self.assertTrue(self.channel.sendCells(self._cells(limits.queueLimit - 1)))
        self.assertFalse(self.channel.sendCells(self._cells(2)))  # all or none
        self.assertTrue(self.channel.send(self._cells(1)[0]))
        self.assertFalse(self.channel.send(self._cells(1)[0]))
        self.assertEqual(self.channel.queued(), limits.queueLimit)
        self.channel.sendDestroy(self.circ.circId, 9)  # DESTROY is never refused
        self.assertEqual(self.channel.queued(), limits.queueLimit + 1)
        before = self.link.batchesSent
        self.channel.resumeProducing()
        self.assertEqual((self.link.batchesSent - before, self.channel.queued()), (1, 0))


class OneWritePerTurn(unittest.TestCase):
    """Switched cells leave once per reactor turn, however many batches the turn delivered."""

    def setUp(self):
        self.n = Net(self)
        self.circ = self.n.built(self)
        self.n.net.pump()
        guard = self.n.guard
        [self.fromClient] = [ch for ch in guard.switch.channels() if ch.peerId == self.n.client.nodeId]
        [self.toMiddle] = [ch for ch in guard.switch.channels() if ch.peerId == self.n.middle.nodeId]

    def _forward(self, count):
        # Cells for the middle (or beyond): the guard forwards them without recognizing them.
        return [self.circ.prefix + bytes([3]) + self.circ.crypto.encrypt(
            bytes(509), 2)[0] for _ in range(count)]

    def test_twoBatchesOneWrite(self):
        link = self.toMiddle.link
        before = link.batchesSent
        self.fromClient.receive(self._forward(10))
        self.fromClient.receive(self._forward(10))
        self.assertEqual(link.batchesSent, before, "small batches wait for the end of the turn")
        self.n.net.endTurn()
        self.assertEqual(link.batchesSent - before, 1)
        self.assertEqual(self.toMiddle.queued(), 0)

    def test_bigBatchWritesAtOnce(self):
        from meshvpn.onion.flusher import WRITE_EARLY

        link = self.toMiddle.link
        before = link.batchesSent
        self.fromClient.receive(self._forward(WRITE_EARLY))
        self.assertEqual(link.batchesSent - before, 1)


class Runs(unittest.TestCase):
    """Consecutive RELAY cells of one circuit are handed over as a run; the outcome is the per-cell one."""

    def test_runAtTheOriginStopsAtATamperedCell(self):
        n = Net(self)
        circ = n.built(self)
        got = []
        circ.setPacketReceiver(got.extend)
        ex = n.relayCircuit(n.exit)
        captured = []
        guardToClient = n.channel(n.guard, n.client).link
        guardToClient.tap = captured.append
        for i in range(6):
            ex.sendPackets([bytes([0x45, i]) * 20])
        guardToClient.discard = True
        n.net.pump()
        guardToClient.discard = False
        cells = [c for batch in captured for c in batch if c[4] == 3]
        self.assertEqual(len(cells), 6)
        cells[4] = cells[4][:200] + bytes([cells[4][200] ^ 0x80]) + cells[4][201:]
        circ.channel.receive(cells)
        self.assertEqual(got, [bytes([0x45, i]) * 20 for i in range(4)])
        self.assertTrue(circ.closed)

    def test_runsOfTwoCircuitsInOneBatch(self):
        """A batch interleaving two circuits' runs: each circuit gets its own cells, in order."""
        n = Net(self)
        first = n.built(self)
        second = n.built(self)
        got = {1: [], 2: []}
        first.setPacketReceiver(got[1].extend)
        second.setPacketReceiver(got[2].extend)
        for i in range(5):
            first.sendPackets([b"\x45a" * 10 + bytes([i])])
            second.sendPackets([b"\x45b" * 10 + bytes([i])])
        n.net.pump()
        self.assertEqual(sorted(n.edge.packets), sorted((b"\x45" + bytes([c])) * 10 + bytes([i]) for c in b"ab" for i in range(5)))
        self.assertEqual(got[1], [(b"\x45a" * 10 + bytes([i]))[::-1] for i in range(5)])
        self.assertEqual(got[2], [(b"\x45b" * 10 + bytes([i]))[::-1] for i in range(5)])

    def test_middleTakesItsCellFromARun(self):
        """A DROP for the middle among cells for the exit: the middle consumes it, the rest go on, in order."""
        n = Net(self)
        circ = n.built(self)
        middle = n.relayCircuit(n.middle)
        taken, dispatch = [], middle._dispatch

        def counting(cmd, plain, *rest):
            taken.append(plain[10])
            return dispatch(cmd, plain, *rest)

        middle._dispatch = counting
        for i in range(3):
            circ.sendPackets([b"\x45" + bytes([i]) * 30])
        circ.sendRelay(RelayCommand.DROP, 0, b"", hop=1)
        for i in range(3, 6):
            circ.sendPackets([b"\x45" + bytes([i]) * 30])
        n.net.pump()
        self.assertEqual(n.edge.packets, [b"\x45" + bytes([i]) * 30 for i in range(6)])
        self.assertFalse(circ.closed)
        self.assertEqual(taken, [RelayCommand.DROP])


class ReadDone(unittest.TestCase):
    """
    When a link's read is over, the cells it made leave in that turn: a
    relayed cell does not wait for the end-of-turn call (under a bulk
    transfer, behind the next read of another link).
    """

    def setUp(self):
        self.n = Net(self)
        self.circ = self.n.built(self)
        self.n.net.pump()

    def test_aRelayedCellLeavesWhenTheReadIsDone(self):
        n = self.n
        toMiddle = n.channel(n.guard, n.middle).link
        before = toMiddle.batchesSent
        calls = len(n.clock.getDelayedCalls())
        self.circ.sendRelay(RelayCommand.DROP, 0, b"")
        n.net.endTurn()  # the client writes
        n.guardLink.peer.deliver()  # the guard reads it
        self.assertEqual(toMiddle.batchesSent, before, "without readDone the cell waits for the end of the turn")
        self.assertEqual(len(n.clock.getDelayedCalls()), calls + 1)
        n.guard.switch.flusher.readDone()
        self.assertEqual(toMiddle.batchesSent, before + 1)
        self.assertEqual(len(n.clock.getDelayedCalls()), calls, "the end-of-turn call is cancelled")
        n.guard.switch.flusher.readDone()  # nothing waiting: nothing written, nothing scheduled
        self.assertEqual(toMiddle.batchesSent, before + 1)

    def test_theSwitchHearsItsLinksReads(self):
        """A link that says when a read is over (a TLS link: meshvpn.link.tlsturn) is wired to the switch's flusher."""
        from meshvpn.tools.onionfakes import MemoryLink

        heard = []

        class ReadingLink(MemoryLink):
            def setReadDone(self, readDone):
                heard.append(readDone)

        a, b = ReadingLink(self.n.net, b"a" * 32, b"b" * 32, True), MemoryLink(self.n.net, b"b" * 32, b"a" * 32, False)
        a.peer, b.peer = b, a
        self.n.middle.switch.attachLink(a)
        self.assertEqual(heard, [self.n.middle.switch.flusher.readDone])
