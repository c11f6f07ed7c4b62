"""A client stream that moves to two paths once it turns out to be a bulk transfer.

The opener hands the application a L{BulkStream}: an L{IStream} over the
stream's L{CircuitStream} that counts the bytes moved both ways.  It links
a second leg either by volume (L{meshvpn.circuits.mpbulk.BulkDetector}:
C{--multipath-after BYTES}) or by the automatic rule
(L{meshvpn.circuits.mpauto.MultipathRule}, the default): once a second the
rule is told the stream's rate and how busy the client's reactor thread
was (L{meshvpn.circuits.mpload.ThreadBusy}) and answers link, unlink or
nothing.  Linking asks the circuit manager for a second leg to the same
exit and hands the stream to a multipath set (L{upgradeStream}); from then
on writes go to the set, and reads come from it once the first leg is
linked.  Unlinking closes the built leg (the set resends what it carried on
the other; the stream stays in the set, which may take a new leg later).
If no second leg can be built the stream simply stays on its circuit.
"""

import secrets

from twisted.internet import task
from twisted.logger import Logger
from zope.interface import implementer

from meshvpn.circuits.mpauto import START_BYTES, TICK_S, Action, Phase
from meshvpn.circuits.mpbulk import BulkDetector
from meshvpn.interfaces import IStream, IStreamReceiver
from meshvpn.onion.endreasons import EndReason
from meshvpn.streams.circuitstream import StreamState
from meshvpn.streams.multipathstream import joinLeg, unlinkLeg, upgradeStream

log = Logger()


@implementer(IStream, IStreamReceiver)
class BulkStream:
    """
    @param stream: the open L{CircuitStream}.
    @param circuit: its L{meshvpn.onion.origin.OriginCircuit}.
    @param manager: the L{meshvpn.interfaces.ICircuitManager} (C{getSecondLeg}).
    @param detector: a L{BulkDetector} (link by volume), used when C{rule} is C{None}.
    @param rule: a L{meshvpn.circuits.mpauto.MultipathRule} (link automatically), or C{None}.
    @param load: with C{rule}, a L{meshvpn.circuits.mpload.ThreadBusy} shared by the client's streams.
    """

    def __init__(self, stream, circuit, manager, detector=None, rule=None, load=None):
        self.inner = stream
        self.circuit = circuit
        self.manager = manager
        self.rule = rule
        self.load = load
        self.detector = detector or BulkDetector(want=False if rule is not None else None)
        self._ticker = None  # the rule's once-a-second LoopingCall, from START_BYTES moved to the stream's end
        self._lastTick = None  # (time, bytes moved)
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
        self._stopTicking()
        self._target.close(reason)

    # IStreamReceiver: what the stream (circuit, then set) delivers

    def streamDataReceived(self, data):
        receiver = self.receiver
        if receiver is not None:
            receiver.streamDataReceived(data)
        self._moved(len(data))

    def streamReadEnded(self):
        self._readEnded = True
        self._stopTicking()  # the download is over: nothing left to decide
        if self.receiver is not None:
            self.receiver.streamReadEnded()

    def streamEnded(self, reason):
        self._stopTicking()
        receiver, self.receiver = self.receiver, None
        if receiver is not None:
            receiver.streamEnded(reason)

    # the hand-over

    def _moved(self, nbytes):
        if self.detector.moving(nbytes) and self.state == "single":  # counted in every state: the rule reads rates
            self.upgrade()
        if self.rule is not None and self._ticker is None and self.detector.moved >= START_BYTES:
            self._startTicking()

    # the automatic rule

    def _startTicking(self):
        clock = self.circuit.clock
        self._lastTick = (clock.seconds(), self.detector.moved)
        self._ticker = task.LoopingCall(self._tick)
        self._ticker.clock = clock
        self._ticker.start(TICK_S, now=False)

    def _stopTicking(self):
        ticker, self._ticker = self._ticker, False  # False: never started again
        if ticker and ticker.running:
            ticker.stop()

    def _tick(self):
        now = self.circuit.clock.seconds()
        then, moved = self._lastTick
        self._lastTick = (now, self.detector.moved)
        rate = (self.detector.moved - moved) / max(now - then, 1e-3)
        if self.multipath is None and self.inner.mux.multipath is not None:
            return  # another stream's set holds the circuit (one set per circuit): not a candidate while it does
        share = self.load.share() if self.load is not None else None
        phase = self.rule.phase
        action = self.rule.tick(rate, share)
        if action is Action.STAY:
            log.info("multipath: staying on one circuit ({why})", why=self.rule.why)
        elif self.rule.phase is not phase:
            log.info("multipath rule: {before} -> {after} ({why})", before=phase.value, after=self.rule.phase.value, why=self.rule.why)
        if action is Action.LINK:
            if self.multipath is None:
                why = self.upgrade()
                if why is not None and self.rule.phase is Phase.LINKING:
                    self.rule.failed(why)
            else:
                self._relink()
        elif action is Action.UNLINK:
            unlinkLeg(self.multipath)
        if self.rule.phase is Phase.DONE:
            self._stopTicking()

    def _relink(self):
        self.manager.getSecondLeg(self.circuit).addCallbacks(self._haveRelink, self._noLeg)

    def _haveRelink(self, second):
        mstream = self.multipath
        if mstream.mpset.closed or self.rule.phase is not Phase.LINKING:
            second.close()
            if self.rule.phase is Phase.LINKING:
                self.rule.failed("the stream ended while its new leg was built")
            return
        joinLeg(mstream, second)

    def _legLinked(self, leg):
        log.info("stream now carried by two circuits (multipath) after {moved} bytes", moved=self.detector.moved)
        if self.rule is not None and self.rule.phase is Phase.LINKING:
            self.rule.linked()

    def _legLost(self, leg):
        if self.rule is None:
            return
        if self.rule.phase is Phase.LINKING:
            self.rule.failed("the second leg was refused or closed while linking")
        else:
            self.rule.legLost()

    def upgrade(self):
        """
        Build a second leg and move the stream to the set (once; no-op if it cannot).

        @return: why nothing was asked for, or C{None}.
        """
        if self.state != "single" or self._readEnded or self._halfClosed or self.inner.state is not StreamState.OPEN:
            return "the stream is ending"
        if self.inner.mux.multipath is not None:
            # A circuit is a leg of one set at most: the exit takes a second MP_LINK on it as a
            # violation and destroys it, with every stream it carries (8 parallel downloads on one
            # circuit, each bulk, did exactly that before this check).
            self.state = "failed"
            log.info("stream stays single-path: its circuit already carries another stream's multipath set")
            return "its circuit already carries another stream's multipath set"
        self.state = "building"
        d = self.manager.getSecondLeg(self.circuit)
        d.addCallbacks(self._haveLeg, self._noLeg)
        return None

    def _noLeg(self, failure):
        log.info("stream stays single-path: {why}", why=failure.getErrorMessage())
        if self.multipath is None:
            self.state = "failed"
        if self.rule is not None and self.rule.phase is Phase.LINKING:
            self.rule.failed(failure.getErrorMessage())

    def _haveLeg(self, second):
        ending = self.inner.state is not StreamState.OPEN or self._readEnded or self._halfClosed
        if ending or self.inner.mux.multipath is not None:  # another stream's set took the circuit meanwhile
            second.close()
            self.state = "failed"
            if self.rule is not None and self.rule.phase is Phase.LINKING:
                self.rule.failed("the stream ended while its second leg was built" if ending
                                 else "its circuit already carries another stream's multipath set")
            return
        self.state = "upgrading"
        self.multipath, self.linked = upgradeStream(self.inner, self.circuit, second, secrets.token_bytes(32), self.circuit.clock)
        self.multipath.legLinked = self._legLinked
        self.multipath.legLost = self._legLost
        self.linked.addCallbacks(self._linked, self._linkFailed)

    def _linked(self, mstream):
        self.state = "multipath"
        log.info("stream handed to a multipath set after {moved} bytes", moved=self.detector.moved)

    def _linkFailed(self, failure):
        log.info("multipath link failed: {why}", why=failure.getErrorMessage())
        self.state = "failed"
        self._stopTicking()
        # Hand-over had begun: the stream cannot go back to its circuit.
        receiver, self.receiver = self.receiver, None
        if receiver is not None:
            receiver.streamEnded(EndReason.DESTROY)

    def status(self):
        out = {"multipath": self.state, "moved": self.detector.moved}
        if self.rule is not None:
            out.update(rule=self.rule.phase.value, why=self.rule.why, legs=len(self.multipath.mpset.linkedLegs) if self.multipath else 1)
        return out
