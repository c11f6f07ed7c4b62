"""A stream carried by a multipath set, and circuits as the set's legs.

A bulk stream starts as an ordinary L{CircuitStream} on one circuit.  To give
it a second path, the origin hands it to a
L{meshvpn.circuits.mpset.MultipathSet} (L{upgradeStream}): MP_LINK on the
stream's own circuit names the stream, MP_LINK on a second circuit to the
same exit joins it, and from then on both ends read and write a
L{MultipathStream} (an L{IStream}) instead.  The hand-over keeps byte
order: bytes written and not yet sent leave through the set first, and
bytes the exit sent as DATA before it saw MP_LINK arrive before its
MP_LINKED, so they reach the reader before anything the set delivers.

A circuit's L{StreamMux} sends its MP_* messages to its L{CircuitLeg}.
"""

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from meshvpn.circuits.mpreorder import MultipathViolation
from meshvpn.circuits.mpsend import MAX_PENDING
from meshvpn.circuits.mpset import MultipathSet
from meshvpn.errors import StreamRefused
from meshvpn.interfaces import IMultipathLeg, IStream
from meshvpn.onion.cells import DestroyReason, RelayCommand
from meshvpn.onion.endreasons import EndReason

log = Logger()


@implementer(IMultipathLeg)
class CircuitLeg:
    """
    A circuit (origin or exit end) as a leg of a set.

    @param circuit: an L{meshvpn.onion.origin.OriginCircuit} or the exit's
        L{meshvpn.onion.relaycircuit.RelayCircuit}.
    @param mux: the circuit's L{meshvpn.streams.mux.StreamMux}.
    @param onMessage: C{callable(leg, command, streamId, body)} for MP_* messages.
    @param onClosed: C{callable(leg)} when the circuit closes (default: the set hears it).
    """

    def __init__(self, circuit, mux, onMessage, onClosed=None):
        self.circuit = circuit
        self.mux = mux
        self.mpset = None
        self._onMessage = onMessage
        self._onClosed = onClosed
        self.isClosed = False
        mux.multipath = self

    # IMultipathLeg

    def sendRelay(self, command, streamId, body):
        self.circuit.sendRelay(command, streamId, body)

    def room(self):
        return 0 if self.isClosed else self.circuit.circuitRoom()

    def rtt(self):
        return getattr(self.circuit.packWindow, "ewmaRtt", None)

    def close(self):
        if not self.isClosed:
            self.isClosed = True
            if hasattr(self.circuit, "close"):
                self.circuit.close(DestroyReason.FINISHED)
            else:
                self.circuit.destroy(DestroyReason.PROTOCOL, "multipath set closed")

    # what the mux hands over

    def relayReceived(self, command, streamId, body):
        try:
            self._onMessage(self, command, streamId, body)
        except MultipathViolation as e:
            self.mux.violations += 1
            log.info("multipath leg refused: {why}", why=str(e))
            self.close()

    def windowOpened(self):
        if self.mpset is not None and not self.mpset.closed:
            self.mpset.sender.flush()

    def circuitClosed(self):
        self.isClosed = True
        if self._onClosed is not None:
            self._onClosed(self)
        elif self.mpset is not None:
            self.mpset.legClosed(self)


@implementer(IStream)
class MultipathStream:
    """
    The stream a set carries, as the reader and writer at one end see it.
    The set is its own flow control: the reader pausing stops delivery and
    so acknowledgements, which stops the peer within the set's window; a
    writer is paused above L{MAX_PENDING} queued bytes.
    """

    def __init__(self, mpset):
        self.mpset = mpset
        mpset.receiver = self
        mpset._onClose = self._setClosed
        mpset.sender.drained = self._drained
        self.receiver = None
        self._early = []  # what arrived before a reader was set
        self._readEnded = False
        self._ended = None
        self._producer = None
        self._producerPaused = False
        self.bytesSent = self.bytesReceived = 0
        self.built = []  # the legs built for this set (every one but the stream's own circuit)
        self.legLinked = None  # callable(leg): a built leg finished its handshake
        self.legLost = None  # callable(leg): a leg left the set (closed, refused, timed out) while the set lives

    # what the set delivers, in order

    def dataReceived(self, data):
        self.bytesReceived += len(data)
        if self.receiver is None:
            self._early.append(data)
        else:
            self.receiver.streamDataReceived(data)

    def finished(self):
        self._readEnded = True
        if self.receiver is not None:
            self.receiver.streamReadEnded()

    def _setClosed(self, why):
        self._ended = EndReason.DONE if why is None else EndReason.DESTROY
        if self._producer is not None:
            self._producer.stopProducing() if why is not None else None
        if self.receiver is not None:
            receiver, self.receiver = self.receiver, None
            receiver.streamEnded(self._ended)

    # IStream

    def setReceiver(self, receiver):
        self.receiver = receiver
        early, self._early = self._early, []
        for data in early:
            if self.receiver is None:
                return
            self.receiver.streamDataReceived(data)
        if self._readEnded and self.receiver is not None:
            self.receiver.streamReadEnded()
        if self._ended is not None and self.receiver is not None:
            receiver, self.receiver = self.receiver, None
            receiver.streamEnded(self._ended)

    def write(self, data):
        if self.mpset.closed or self.mpset.sender.finished or not data:
            return
        self.bytesSent += len(data)
        self.mpset.write(data)
        if not self.mpset.sender.wantsMore() and self._producer is not None and not self._producerPaused:
            self._producerPaused = True
            self._producer.pauseProducing()

    def _drained(self):
        if self._producerPaused and self._producer is not None:
            self._producerPaused = False
            self._producer.resumeProducing()

    def halfClose(self):
        if not self.mpset.closed:
            self.mpset.finish()

    def close(self, reason=EndReason.DONE):
        if self.mpset.closed:
            return
        if reason == EndReason.DONE and self.mpset.finReceived:
            # The peer had finished: a clean end (the set closes when our
            # MP_FIN is acknowledged), not an abort that costs both circuits.
            self.mpset.finish()
            return
        self.mpset.abort(f"closed here: {EndReason.fromWire(reason).name}")

    def registerProducer(self, producer, streaming):
        self._producer = producer
        if self._producerPaused:
            producer.pauseProducing()

    def unregisterProducer(self):
        self._producer = None

    def pauseProducing(self):
        self.mpset.reorder.pause()

    def resumeProducing(self):
        self.mpset.reorder.resume()

    def stopProducing(self):
        self.close(EndReason.DONE)


def upgradeStream(stream, circuit, second, nonce, clock):
    """
    At the origin: carry C{stream} (a L{CircuitStream} on C{circuit}) over a
    multipath set whose second leg is the circuit C{second} (built to the
    same exit, L{meshvpn.circuits.mppath.chooseSecondLeg}).

    @return: C{(mstream, linked)}: the L{MultipathStream}, to write to from
        now on (bytes wait in the set until a leg is linked), and a Deferred
        firing with it once the first leg is linked (the reader and producer
        of C{stream} carried over), or failing with L{StreamRefused} if the
        exit refused the link.  When the set ends cleanly the second circuit
        is closed and the first is free for another set; when it is aborted
        both circuits are closed (the exit holds the set until they go).
    """
    mpset = MultipathSet(clock, nonce, True, None)
    mstream = MultipathStream(mpset)
    # Bytes the stream still had to send go first, through the set.
    for data in stream.takePending():
        mpset.write(data)
    done = defer.Deferred()
    joined = []
    first = CircuitLeg(circuit, stream.mux, _originMessage, onClosed=lambda leg: _legClosed(mstream, leg))
    streamId = stream.streamId

    def linked(leg):
        if leg is not first:
            if mstream.legLinked is not None:
                mstream.legLinked(leg)
            return
        if not mpset.closed:
            # The second leg joins by nonce, so it links once the set exists at the exit.
            joined.append(joinLeg(mstream, second))
        if not done.called:
            _pending, held, receiver, producer = stream.detach()
            mstream._early[:0] = held
            if producer is not None:
                mstream.registerProducer(producer, True)
                producer.resumeProducing()  # the stream may have paused it; the set pauses it when it must
            if receiver is not None:
                mstream.setReceiver(receiver)
            done.callback(mstream)

    def closed(why):
        first.mux.multipath = None
        if not joined:
            second.close()  # built for the set, and the set ended before it could join
        for leg in mstream.built:
            leg.close()
        if not done.called:
            done.errback(StreamRefused(EndReason.DESTROY, f"multipath link failed: {why}"))
        mstream._setClosed(why)

    def refused(leg):
        if leg in mstream.built:
            leg.close()
            if not mpset.closed and mstream.legLost is not None:
                mstream.legLost(leg)

    mpset._onLinked = linked
    mpset._onClose = closed
    mpset.onRefused = refused
    first.mpset = mpset
    mpset.addLeg(first, streamId)
    return mstream, done


def joinLeg(mstream, circuit):
    """
    At the origin: link the circuit C{circuit} (to the set's exit) as one
    more leg of C{mstream}'s set; C{mstream.legLinked} hears when it is
    linked, C{mstream.legLost} if it is refused or closes.

    @return: its L{CircuitLeg}.
    """
    leg = CircuitLeg(circuit, _muxOf(circuit), _originMessage, onClosed=lambda leg: _legClosed(mstream, leg))
    leg.mpset = mstream.mpset
    mstream.built.append(leg)
    mstream.mpset.addLeg(leg, 0)
    return leg


def unlinkLeg(mstream):
    """
    Give back the newest built leg while another leg is linked: its circuit
    closes, and what it carried and was not acknowledged is sent again on
    the other (the set's own answer to a leg that dies).

    @return: C{True} if a leg was closed.
    """
    mpset = mstream.mpset
    if mpset.closed or len(mpset.linkedLegs) < 2:
        return False
    for leg in reversed(mstream.built):
        if leg in mpset.legs and not leg.isClosed:
            leg.close()
            return True
    return False


def _legClosed(mstream, leg):
    mpset = mstream.mpset
    member = leg in mpset.legs
    mpset.legClosed(leg)
    if leg in mstream.built:
        mstream.built.remove(leg)
    if member and not mpset.closed and mstream.legLost is not None:
        mstream.legLost(leg)


def _muxOf(circuit):
    from meshvpn.streams.edge import attachStreams

    return circuit.streamHandler if circuit.streamHandler is not None else attachStreams(circuit)


def _originMessage(leg, command, streamId, body):
    if leg.mpset is None:
        raise MultipathViolation("multipath message on a circuit that is not a leg")
    leg.mpset.relayReceived(leg, command, body)
