"""The exit's side of multipath: every circuit a possible leg, one registry of sets.

MP_LINK naming an open stream of its circuit turns that stream into a
multipath set (the target connection is re-spliced to a
L{MultipathStream}); MP_LINK with stream id 0 joins a set by its nonce.
The bounds (sets, legs, legs still linking, reorder memory) are
L{meshvpn.circuits.mplinks}'s; a refused link or any violation closes the
circuit it came on (and a violation inside a set closes the set's legs).
"""

from meshvpn.circuits.mplinks import LinkRegistry, MultipathRefused
from meshvpn.circuits.mpreorder import MultipathViolation
from meshvpn.circuits.mpset import MultipathSet
from meshvpn.onion.cells import RelayCommand
from meshvpn.streams.circuitstream import StreamState
from meshvpn.streams.multipathstream import CircuitLeg, MultipathStream
from meshvpn.streams.splice import splice

# A stream the exit still sends on (or has bytes pending for, after the target
# ended); one whose END(DONE) already left is not taken over.
_TAKEN = (StreamState.OPEN, StreamState.FLUSHING)


class MultipathExit:
    def __init__(self):
        self.registry = LinkRegistry(self._makeSet)

    def attach(self, circuit, mux):
        """Make C{circuit} (whose streams C{mux} carries) able to be a leg."""
        return CircuitLeg(circuit, mux, self._message, self.registry.legClosed)

    def _message(self, leg, command, streamId, body):
        if command == RelayCommand.MP_LINK:
            try:
                leg.mpset = self.registry.linkReceived(leg, streamId, body)
            except MultipathRefused as e:
                if not e.answer:
                    raise MultipathViolation(f"MP_LINK refused: {e}") from e
                leg.sendRelay(RelayCommand.MP_REFUSED, 0, b"")
            return
        mpset = self.registry.setOf(leg)
        if mpset is None:
            raise MultipathViolation(f"{RelayCommand.NAMES[command]} on a circuit that is not a leg")
        try:
            mpset.relayReceived(leg, command, body)
        finally:
            self.registry.forgetClosed()

    def _makeSet(self, nonce, leg, streamId):
        stream = leg.mux.streams.get(streamId)
        if stream is None or stream.state not in _TAKEN:
            # The stream may have ended while MP_LINK travelled: an answer, not a close.
            raise MultipathRefused("MP_LINK names no stream of this circuit that still sends", answer=True)
        finishing = stream.state is StreamState.FLUSHING
        mpset = MultipathSet(leg.circuit.switch.clock, nonce, False, None)
        mstream = MultipathStream(mpset)
        pending, held, _receiver, far = stream.detach()
        for data in pending:
            mpset.write(data)  # from the target, not yet sent as DATA: first through the set
        if far is not None:
            for data in held:
                far.write(data)  # from the origin, not yet handed to the target
            far.unregisterProducer()  # a TCP transport takes a new producer only after this
            splice(mstream, far)
            far.resumeProducing()  # the stream may have paused it; the set pauses it again when it must
        if finishing:
            mpset.finish()  # the target had ended: its last bytes were pending
        return mpset
