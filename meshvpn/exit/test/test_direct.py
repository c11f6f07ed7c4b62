"""Unit tests for TCPStream (meshvpn.exit.direct): pausing, holding, half-close, ends."""

from twisted.internet import error, task
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from meshvpn.exit.direct import MAX_HELD, TCPStream
from meshvpn.interfaces import IStream
from meshvpn.onion.endreasons import EndReason
from meshvpn.ratelimit import BandwidthLimiter


class Receiver:
    def __init__(self):
        self.data = bytearray()
        self.readEnded = False
        self.ended = None

    def streamDataReceived(self, data):
        self.data += data

    def streamReadEnded(self):
        self.readEnded = True

    def streamEnded(self, reason):
        self.ended = reason


class HalfCloseTransport(StringTransport):
    def __init__(self):
        super().__init__()
        self.writeClosed = False

    def loseWriteConnection(self):
        self.writeClosed = True


class TCPStreamTests(unittest.TestCase):
    def setUp(self):
        self.stream = TCPStream()
        self.tr = HalfCloseTransport()
        self.stream.makeConnection(self.tr)
        self.rx = Receiver()

    def test_interface(self):
        from meshvpn.exit.direct import DirectStreamOpener
        from meshvpn.interfaces import IStreamOpener

        self.assertTrue(verifyObject(IStream, self.stream))
        self.assertTrue(verifyObject(IStreamOpener, DirectStreamOpener(None, None)))

    def test_heldUntilReceiver(self):
        self.assertEqual(self.tr.producerState, "paused")
        self.stream.dataReceived(b"early")
        self.stream.setReceiver(self.rx)
        self.assertEqual(bytes(self.rx.data), b"early")
        self.assertEqual(self.tr.producerState, "producing")

    def test_receiverPauseHoldsAndResumes(self):
        self.stream.setReceiver(self.rx)
        self.stream.pauseProducing()
        self.assertEqual(self.tr.producerState, "paused")
        self.stream.dataReceived(b"in flight")
        self.assertEqual(bytes(self.rx.data), b"")
        self.stream.resumeProducing()
        self.assertEqual(bytes(self.rx.data), b"in flight")
        self.assertEqual(self.tr.producerState, "producing")

    def test_heldBounded(self):
        self.stream.setReceiver(self.rx)
        self.stream.pauseProducing()
        self.stream.dataReceived(b"x" * MAX_HELD)
        self.stream.resumeProducing()
        self.assertEqual(len(self.rx.data), MAX_HELD)

    def test_throttleAndReceiverPausesAreIndependent(self):
        clock = task.Clock()
        limiter = BandwidthLimiter(clock, circuitRate=1000, circuitBurst=1000)
        stream = TCPStream(limiter.circuit(1))
        tr = StringTransport()
        stream.makeConnection(tr)
        stream.setReceiver(self.rx)
        stream.dataReceived(b"x" * 2000)  # 1 s of debt: the throttle pauses
        self.assertEqual(tr.producerState, "paused")
        stream.pauseProducing()
        clock.advance(1)  # the throttle lets go, the receiver still holds
        self.assertEqual(tr.producerState, "paused")
        stream.resumeProducing()
        self.assertEqual(tr.producerState, "producing")
        self.assertEqual(limiter.status()["circuits"]["1"]["bytes_in"], 2000)

    def test_writeAndProducerGoToTransport(self):
        self.stream.setReceiver(self.rx)
        self.stream.write(b"GET /")
        self.assertEqual(self.tr.value(), b"GET /")
        producer = object()
        self.stream.registerProducer(producer, True)
        self.assertIs(self.tr.producer, producer)
        self.stream.unregisterProducer()
        self.assertIsNone(self.tr.producer)

    def test_halfCloseBothWays(self):
        self.stream.setReceiver(self.rx)
        self.stream.halfClose()
        self.assertTrue(self.tr.writeClosed)
        self.stream.writeConnectionLost()
        self.stream.readConnectionLost()
        self.assertTrue(self.tr.disconnecting)

    def test_farEndHalfClose(self):
        self.stream.setReceiver(self.rx)
        self.stream.readConnectionLost()
        self.assertTrue(self.rx.readEnded)
        self.assertFalse(self.tr.disconnecting)

    def test_cleanEndDeliversHeldThenDone(self):
        self.stream.setReceiver(self.rx)
        self.stream.pauseProducing()
        self.stream.dataReceived(b"last bytes")
        self.stream.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(bytes(self.rx.data), b"last bytes")
        self.assertEqual(self.rx.ended, EndReason.DONE)

    def test_resetIsConnReset(self):
        self.stream.setReceiver(self.rx)
        self.stream.connectionLost(Failure(error.ConnectionLost()))
        self.assertEqual(self.rx.ended, EndReason.CONNRESET)

    def test_endBeforeReceiver(self):
        self.stream.dataReceived(b"all of it")
        self.stream.connectionLost(Failure(error.ConnectionDone()))
        self.stream.setReceiver(self.rx)
        self.assertEqual((bytes(self.rx.data), self.rx.ended), (b"all of it", EndReason.DONE))

    def test_closeIdempotent(self):
        self.stream.setReceiver(self.rx)
        self.stream.close(EndReason.DONE)
        self.stream.close(EndReason.MISC)
        self.stream.stopProducing()
        self.assertTrue(self.tr.disconnecting)
        self.stream.write(b"ignored")
        self.assertEqual(self.tr.value(), b"")


class TCPStreamMachineTests(unittest.TestCase):
    """Each half of the TCP connection ends on its own; the socket closes once both have."""

    def setUp(self):
        self.stream = TCPStream()
        self.tr = HalfCloseTransport()
        self.stream.makeConnection(self.tr)
        self.rx = Receiver()
        self.stream.setReceiver(self.rx)

    def test_table(self):
        from meshvpn.exit.direct import TRANSITIONS, TCPEvent, TCPState

        self.assertEqual({TCPState.OPEN} | set(TRANSITIONS.values()), set(TCPState))
        self.assertFalse([key for key in TRANSITIONS if key[0] is TCPState.ENDED])
        for state in TCPState:
            self.assertEqual((state, TCPEvent.LOST) in TRANSITIONS, state is not TCPState.ENDED)

    def test_illegalEventRaises(self):
        from automat import NoTransition

        from meshvpn.exit.direct import TCPEvent

        self.stream.connectionLost(Failure(error.ConnectionDone()))
        self.assertRaises(NoTransition, self.stream._go, TCPEvent.LOST)

    def test_targetFinishesFirst(self):
        from meshvpn.exit.direct import TCPState

        self.stream.readConnectionLost()
        self.assertEqual((self.stream.state, self.rx.readEnded), (TCPState.READ_ENDED, True))
        self.stream.write(b"still writing")
        self.assertEqual(self.tr.value(), b"still writing")
        self.stream.halfClose()
        self.stream.writeConnectionLost()
        self.assertEqual(self.stream.state, TCPState.CLOSING)
        self.assertTrue(self.tr.disconnecting)

    def test_bothHalvesDoneLeavesTheFedStreamAlone(self):
        # What feeds the socket (the circuit stream) may still hold bytes for
        # the app: closing the socket must not stop it.
        producer = _Producer()
        self.stream.registerProducer(producer, True)
        self.stream.halfClose()
        self.stream.writeConnectionLost()
        self.stream.readConnectionLost()
        self.assertIsNone(self.tr.producer)
        self.assertTrue(self.tr.disconnecting)
        self.stream.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual((producer.stopped, self.rx.ended), (False, EndReason.DONE))

    def test_heldHalfCloseWaitsForHeldData(self):
        told = []
        self.rx.streamReadEnded = lambda: told.append(bytes(self.rx.data))
        self.stream.pauseProducing()
        self.stream.dataReceived(b"tail")
        self.stream.readConnectionLost()
        self.assertEqual(told, [])
        self.stream.resumeProducing()
        self.stream.pauseProducing()
        self.stream.resumeProducing()
        self.assertEqual(told, [b"tail"])  # after the data, and once, not on every resume

    def test_halvesEndingAfterCloseAreQuiet(self):
        self.stream.close(EndReason.DONE)
        self.stream.readConnectionLost()
        self.stream.writeConnectionLost()
        self.stream.halfClose()
        self.assertFalse(self.rx.readEnded)
        self.stream.connectionLost(Failure(error.ConnectionDone()))
        self.assertIsNone(self.rx.ended)  # whoever closed it was not told again


class _Producer:
    stopped = False

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        self.stopped = True


class TCPStreamSendsAtTurnEndTests(unittest.TestCase):
    """What the circuit writes to the target leaves at the end of the turn, in one send, not at the next poll."""

    def test_requestLeavesAtTheEndOfTheTurn(self):
        from twisted.internet import protocol

        from meshvpn.test.test_socketpush import adoptedPair, received

        clock = task.Clock()
        stream, target = adoptedPair(self, protocol.Factory.forProtocol(lambda: TCPStream(clock=clock)))
        stream.write(b"GET / HTTP/1.1\r\n")
        stream.write(b"\r\n")
        self.assertEqual(received(target), b"")
        clock.advance(0)
        self.assertEqual(received(target), b"GET / HTTP/1.1\r\n\r\n")


class TCPStreamReadsInBulkTests(unittest.TestCase):
    def test_targetSocketReadInBulk(self):
        """The target's bytes are read up to BULK_READ a turn (meshvpn/readsize.py): fewer, longer runs of DATA cells."""
        from twisted.internet import protocol

        from meshvpn.readsize import BULK_READ
        from meshvpn.test.test_socketpush import adoptedPair

        stream, _ = adoptedPair(self, protocol.Factory.forProtocol(lambda: TCPStream(clock=task.Clock())))
        self.assertEqual(stream.transport.bufferSize, BULK_READ)
