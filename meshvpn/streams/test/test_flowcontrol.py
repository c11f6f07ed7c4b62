"""Congestion control and XON/XOFF on real 3-hop circuits over in-memory links:
negotiation, bulk transfer, a slow reader bounded by XOFF, a sender that
ignores XOFF cut off, hostile negotiation messages, fair sharing."""

import hashlib

from twisted.trial import unittest
from zope.interface import implementer

from meshvpn.interfaces import IStream
from meshvpn.onion import cells as C
from meshvpn.onion.cells import DestroyReason, RelayCommand
from meshvpn.onion.cgohops import CgoRelayHop
from meshvpn.onion.destroy import CircuitDestroyed
from meshvpn.onion.flow import FLOW_ALL, FLOW_CC, VegasWindow
from meshvpn.onion.test.test_circuit import Net
from meshvpn.streams import circuitstream as cs
from meshvpn.streams.edge import StreamExitEdge, attachStreams
from meshvpn.streams.test.test_mux import Collect, FarEnd


@implementer(IStream)
class Source(FarEnd):
    """The exit's target: sends C{size} bytes as fast as the circuit stream takes them (a push producer)."""

    def __init__(self, size, chunk=64 * 1024):
        super().__init__()
        self.left, self.chunk, self.paused = size, chunk, False

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        self.push()

    def push(self):
        while not self.paused and self.left > 0 and self.receiver is not None:
            n = min(self.chunk, self.left)
            self.left -= n
            self.receiver.streamDataReceived(_body(self.left, n))
        if self.left == 0 and self.receiver is not None:
            receiver, self.receiver = self.receiver, None
            receiver.streamReadEnded()


def _body(offset, n):
    """Deterministic content: the chunk that leaves with C{offset} bytes still to send."""
    start = offset & 0xFF
    return (bytes(range(start, 256)) + bytes(range(256)) * (n // 256 + 1))[:n]


class Digest(Collect):
    def __init__(self):
        super().__init__()
        self.n = 0

    def streamDataReceived(self, data):
        self.n += len(data)


class World:
    def __init__(self, testCase, size=0, flow=FLOW_ALL, sources=None, push=True):
        self.sources = sources if sources is not None else []
        self.size = size

        def accept(circuit, host, port):
            src = Source(self.size)
            self.sources.append(src)
            if push:
                circuit.switch.clock.callLater(0, src.push)
            return src

        self.n = Net(testCase, edge=StreamExitEdge(accept))
        path = [self.n.guard.hopSpec(), self.n.middle.hopSpec(), self.n.exit.hopSpec()]
        self.guardLink = self.n.client.linkTo(path[0].nodeId)
        from meshvpn.onion.origin import OriginCircuit

        self.circ = OriginCircuit(self.n.client.switch, self.guardLink, path, flow=flow)
        attachStreams(self.circ)
        d = self.circ.build()
        self.pump()
        testCase.assertIs(testCase.successResultOf(d), self.circ)
        self.exitCircuit = self.n.relayCircuit(self.n.exit)

    def pump(self, turns=1):
        for _ in range(turns):
            self.n.net.pump()
            self.n.clock.advance(0)

    def open(self, testCase, receiver):
        d = self.circ.openStream("198.18.0.9", 80, protocol=receiver)
        self.pump()
        return testCase.successResultOf(d)


class Negotiation(unittest.TestCase):
    def test_bothEndsAgree(self):
        w = World(self)
        self.assertEqual(w.circ.flowFlags, FLOW_ALL)
        self.assertEqual(w.exitCircuit.flowFlags, FLOW_ALL)
        self.assertIsInstance(w.circ.packWindow, VegasWindow)
        self.assertIsInstance(w.exitCircuit.packWindow, VegasWindow)
        self.assertEqual(w.circ._flowState, "agreed")

    def test_fixedWindowsWhenNotProposed(self):
        w = World(self, flow=0)
        self.assertEqual((w.circ.flowFlags, w.exitCircuit.flowFlags), (0, 0))
        self.assertNotIsInstance(w.exitCircuit.packWindow, VegasWindow)
        got = Digest()
        w.size = 300_000
        w.open(self, got)
        w.pump(200)
        self.assertEqual(got.n, 300_000)

    def test_secondNegotiateDestroys(self):
        w = World(self)
        w.circ.sendRelay(RelayCommand.FLOW_NEGOTIATE, 0, C.FlowNegotiate(FLOW_ALL).encode())
        w.pump()
        self.assertIsInstance(w.circ.closeReason, CircuitDestroyed)
        self.assertEqual(w.circ.closeReason.reason, DestroyReason.PROTOCOL)

    def test_negotiateAfterStreamsDestroys(self):
        w = World(self, flow=0)
        w.open(self, Digest())
        w.circ.sendRelay(RelayCommand.FLOW_NEGOTIATE, 0, C.FlowNegotiate(FLOW_ALL).encode())
        w.pump()
        self.assertEqual(w.circ.closeReason.reason, DestroyReason.PROTOCOL)

    def test_negotiateAtMiddleDestroys(self):
        w = World(self, flow=0)
        w.circ.sendRelay(RelayCommand.FLOW_NEGOTIATE, 0, C.FlowNegotiate(FLOW_ALL).encode(), hop=1)
        w.pump()
        self.assertEqual(w.circ.closeReason.reason, DestroyReason.PROTOCOL)

    def test_unknownFlagDestroys(self):
        w = World(self, flow=0)
        w.circ.sendRelay(RelayCommand.FLOW_NEGOTIATE, 0, b"\x01\x80")
        w.pump()
        self.assertEqual(w.circ.closeReason.reason, DestroyReason.PROTOCOL)

    def test_unaskedNegotiatedDestroys(self):
        """An exit that claims a negotiation the origin never proposed is a protocol error."""
        w = World(self, flow=0)
        w.exitCircuit.sendRelay(RelayCommand.FLOW_NEGOTIATED, 0, C.FlowNegotiate(FLOW_CC).encode())
        w.pump()
        self.assertEqual(w.circ.closeReason.reason, DestroyReason.PROTOCOL)


class Bulk(unittest.TestCase):
    def test_downloadPastTheOldWindows(self):
        """5 MB (over 10,000 cells, 20 old stream windows) arrive whole and in order."""
        w = World(self, size=5_000_000)
        got = []

        class Keep(Collect):
            def streamDataReceived(self, data):
                got.append(data)

        keep = Keep()
        w.open(self, keep)
        w.pump(2000)
        data = b"".join(got)
        self.assertEqual(len(data), 5_000_000)
        src = Source(5_000_000)
        expected = []
        src.receiver = type("R", (), {"streamDataReceived": lambda s, d: expected.append(d),
                                      "streamReadEnded": lambda s: None})()
        src.push()
        self.assertEqual(hashlib.sha256(data).digest(), hashlib.sha256(b"".join(expected)).digest())
        self.assertTrue(keep.readEnded)


class SlowReader(unittest.TestCase):
    """A reader that pauses the stream: XOFF bounds what waits for it; XON lets the rest come."""

    def test_xoffBoundsHeldBytes(self):
        w = World(self, size=20_000_000, push=False)
        got = Digest()
        stream = w.open(self, got)
        stream.pauseProducing()  # the application stopped reading
        w.sources[0].push()
        w.pump(3000)
        self.assertEqual(got.n, 0)
        self.assertTrue(stream._xoffSent)
        self.assertLessEqual(stream._heldBytes, cs.HOLD_LIMIT)
        # The exit stopped sending: its stream's window is shut and its source paused.
        [src] = w.sources
        self.assertTrue(src.paused)
        self.assertGreater(src.left, 10_000_000)
        self.assertEqual(stream.state, cs.StreamState.OPEN)
        stream.resumeProducing()
        w.pump(5000)
        self.assertEqual(got.n, 20_000_000)
        self.assertTrue(got.readEnded)
        self.assertEqual(w.circ.streamHandler.violations, 0)

    def test_noStreamSendmesUnderXon(self):
        """With XON/XOFF no stream SENDME is ever sent, even after the reader resumes (the exit would end the stream)."""
        w = World(self, size=2_000_000, push=False)
        got = Digest()
        stream = w.open(self, got)
        stream.pauseProducing()
        w.sources[0].push()
        w.pump(50)
        stream.resumeProducing()
        w.pump(500)
        self.assertEqual(got.n, 2_000_000)
        self.assertEqual(w.exitCircuit.edgeState.violations, 0)

    def test_senderIgnoringXoffIsCutOff(self):
        """An exit that keeps sending DATA after XOFF, past a whole window more, loses the stream (RESOURCELIMIT)."""
        w = World(self, size=1 << 40, push=False)
        got = Digest()
        stream = w.open(self, got)
        stream.pauseProducing()
        body = b"x" * 494
        for i in range(cs.HOLD_LIMIT // 494 + 10):
            stream.relayReceived(RelayCommand.DATA, body)  # what a hostile exit's cells deliver
            if stream.state is cs.StreamState.CLOSED:
                break
        self.assertTrue(stream._xoffSent)
        self.assertIs(stream.state, cs.StreamState.CLOSED)
        self.assertLessEqual(stream._heldBytes, cs.HOLD_LIMIT)
        self.assertEqual(w.circ.streamHandler.violations, 1)

    def test_xonWithoutNegotiationIsAViolation(self):
        w = World(self, flow=0, size=0)
        stream = w.open(self, Digest())
        stream.relayReceived(RelayCommand.XOFF, b"")
        self.assertIs(stream.state, cs.StreamState.CLOSED)

    def test_streamSendmeUnderXonIsAViolation(self):
        w = World(self, size=0)
        stream = w.open(self, Digest())
        stream.relayReceived(RelayCommand.SENDME, b"")
        self.assertIs(stream.state, cs.StreamState.CLOSED)


class Fairness(unittest.TestCase):
    def test_eightDownloadsShare(self):
        """Eight streams downloading at once on one circuit progress within 20% of each other."""
        w = World(self, size=50_000_000)
        readers = [Digest() for _ in range(8)]
        for r in readers:
            w.open(self, r)
        w.pump(400)
        counts = [r.n for r in readers]
        self.assertGreater(min(counts), 0)
        self.assertLessEqual(max(counts), min(counts) * 1.2, counts)


class MalformedData(unittest.TestCase):
    # CGO circuits (the default) carry 488 data bytes: 495 is past the cell either way, 489 past a CGO hop's.
    """DATA is parsed in place on the hot path: it still refuses what unpackRelay refuses."""

    def _send(self, w, payload):
        ex = w.exitCircuit
        if isinstance(ex.layer, CgoRelayHop):
            # A lying exit: its CGO layer around whatever header it writes (the honest path refuses to).
            ct, tag = ex.layer._layer.originate(bytes([C.Command.RELAY]), payload[C.CGO_BODY_AT:C.CGO_BODY_AT + C.CGO_BODY_LEN])
        else:
            ct, tag = ex.layer.originateBackward(payload)
        ex.prev.send(ex.prevPrefix + bytes([C.Command.RELAY]) + ct)
        w.pump()

    def test_lengthPastTheCell(self):
        w = World(self, size=0)
        good = C.packRelay(RelayCommand.DATA, 1, b"x")
        self._send(w, good[:13] + (495).to_bytes(2, "big") + good[15:])
        self.assertEqual(w.circ.closeReason.reason, DestroyReason.PROTOCOL)

    def test_lengthPastACgoCell(self):
        w = World(self, size=0)
        good = C.packRelay(RelayCommand.DATA, 1, b"x")
        self._send(w, good[:13] + (C.CGO_RELAY_DATA_LEN + 1).to_bytes(2, "big") + good[15:])
        self.assertEqual(w.circ.closeReason.reason, DestroyReason.PROTOCOL)

    def test_streamZero(self):
        w = World(self, size=0)
        self._send(w, C.packRelay(RelayCommand.DATA, 1, b"x")[:11] + b"\0\0" + C.packRelay(RelayCommand.DATA, 1, b"x")[13:])
        self.assertEqual(w.circ.closeReason.reason, DestroyReason.PROTOCOL)

    def test_fromMiddleHop(self):
        w = World(self, size=0)
        mid = w.n.relayCircuit(w.n.middle)
        ct, tag = mid.layer.originateBackward(C.packRelay(RelayCommand.DATA, 1, b"x"))
        mid.prev.send(mid.prevPrefix + bytes([C.Command.RELAY]) + ct)
        w.pump()
        self.assertEqual(w.circ.closeReason.reason, DestroyReason.PROTOCOL)

    def test_manyPausedStreamsBoundedTogether(self):
        """Streams that each stay under their own limit cannot make the circuit hold more than its limit."""
        w = World(self, size=1 << 40, push=False)
        streams = []
        for i in range(12):
            s = w.open(self, Digest())
            s.pauseProducing()
            streams.append(s)
        body = b"y" * 494
        perStream = (cs.CIRCUIT_HOLD_LIMIT // 12) + 494 * 200  # each alone stays below HOLD_LIMIT
        self.assertLess(perStream, cs.HOLD_LIMIT)
        for s in streams:
            for i in range(perStream // 494):
                if s.state is cs.StreamState.CLOSED:
                    break
                s.relayReceived(RelayCommand.DATA, body)
        mux = w.circ.streamHandler
        self.assertLessEqual(mux.heldBytes, cs.CIRCUIT_HOLD_LIMIT + 494)
        self.assertTrue(any(s.state is cs.StreamState.CLOSED for s in streams))
        self.assertEqual(mux.heldBytes, sum(s._heldBytes for s in streams))
