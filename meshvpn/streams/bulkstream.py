"""A client stream that moves to two paths once it turns out to be a bulk transfer.

The opener hands the application a L{BulkStream}: an L{IStream} over the
stream's L{CircuitStream} that counts the bytes moved both ways.  When
L{meshvpn.circuits.mpbulk.BulkDetector} says the stream is bulk, it asks
the circuit manager for a second leg to the same exit and hands the stream
to a multipath set (L{upgradeStream}); from then on writes go to the set,
and reads come from it once the first leg is linked.  If no second leg can
be built the stream simply stays on its circuit.
"""

import secrets

from twisted.logger import Logger
from zope.interface import implementer

from meshvpn.circuits.mpbulk import BulkDetector
from meshvpn.interfaces import IStream, IStreamReceiver
from meshvpn.onion.endreasons import EndReason
from meshvpn.streams.circuitstream import StreamState
from meshvpn.streams.multipathstream import upgradeStream

log = Logger()


@implementer(IStream, IStreamReceiver)
class BulkStream:
    """
    @param stream: the open L{CircuitStream}.
    @param circuit: its L{meshvpn.onion.origin.OriginCircuit}.
    @param manager: the L{meshvpn.interfaces.ICircuitManager} (C{getSecondLeg}).
    @param detector: a L{BulkDetector}.
    """

    def __init__(self, stream, circuit, manager, detector=None):
        self.inner = stream
        self.circuit = circuit
        self.manager = manager
        self.detector = detector or BulkDetector()
        self.receiver = None
        self.multipath = None  # the MultipathStream once the hand-over started
        self.linked = None  # its Deferred
        self.state = "single"  # single -> building -> upgrading -> multipath (or failed: single for good)
        self._readEnded = False
        self._halfClosed = False

    @property
    def _target(self):
        return self.multipath if self.multipath is not None else self.inner

    # IStream

    def setReceiver(self, receiver):
        self.receiver = receiver
        if self.multipath is None or not self.linked.called:
            self.inner.setReceiver(self)

    def registerProducer(self, producer, streaming):
        self._producer = producer
        self._target.registerProducer(producer, streaming)

    def unregisterProducer(self):
        self._producer = None
        self._target.unregisterProducer()

    def pauseProducing(self):
        self._target.pauseProducing()

    def resumeProducing(self):
        self._target.resumeProducing()

    def stopProducing(self):
        self._target.stopProducing()

    def write(self, data):
        self._target.write(data)
        self._moved(len(data))

    def halfClose(self):
        self._halfClosed = True
        self._target.halfClose()

    def close(self, reason=EndReason.DONE):
        self._target.close(reason)

    # IStreamReceiver: what the stream (circuit, then set) delivers

    def streamDataReceived(self, data):
        receiver = self.receiver
        if receiver is not None:
            receiver.streamDataReceived(data)
        self._moved(len(data))

    def streamReadEnded(self):
        self._readEnded = True
        if self.receiver is not None:
            self.receiver.streamReadEnded()

    def streamEnded(self, reason):
        receiver, self.receiver = self.receiver, None
        if receiver is not None:
            receiver.streamEnded(reason)

    # the hand-over

    def _moved(self, nbytes):
        if self.state == "single" and self.detector.moving(nbytes):
            self.upgrade()

    def upgrade(self):
        """Build a second leg and move the stream to the set (once; no-op if it cannot)."""
        if self.state != "single" or self._readEnded or self._halfClosed or self.inner.state is not StreamState.OPEN:
            return
        self.state = "building"
        d = self.manager.getSecondLeg(self.circuit)
        d.addCallbacks(self._haveLeg, self._noLeg)

    def _noLeg(self, failure):
        log.info("stream stays single-path: {why}", why=failure.getErrorMessage())
        self.state = "failed"

    def _haveLeg(self, second):
        if self.inner.state is not StreamState.OPEN or self._readEnded or self._halfClosed:
            second.close()
            self.state = "failed"
            return
        self.state = "upgrading"
        self.multipath, self.linked = upgradeStream(self.inner, self.circuit, second, secrets.token_bytes(32), self.circuit.clock)
        self.linked.addCallbacks(self._linked, self._linkFailed)

    def _linked(self, mstream):
        self.state = "multipath"
        log.info("stream now carried by two circuits (multipath) after {moved} bytes", moved=self.detector.moved)

    def _linkFailed(self, failure):
        log.info("multipath link failed: {why}", why=failure.getErrorMessage())
        self.state = "failed"
        # Hand-over had begun: the stream cannot go back to its circuit.
        receiver, self.receiver = self.receiver, None
        if receiver is not None:
            receiver.streamEnded(EndReason.DESTROY)

    def status(self):
        return {"multipath": self.state, "moved": self.detector.moved}
