"""The receiving end of a multipath set: per-leg sequence counters and a bounded reorder buffer.

Cells of a linked set arrive on two circuits with different delays; this
puts them back in sequence order before the stream sees them.  What a leg
may make it hold is bounded twice: a cell may be at most L{MAX_AHEAD}
sequence numbers past what was delivered, and the buffer at most
L{MAX_BUFFER} bytes.  A leg that breaks either bound, or sends a sequenced
cell before any MP_SWITCH told it where it stands, gets the whole set
closed (L{MultipathViolation}): an honest sender never does it, because it
keeps within the same window (L{meshvpn.circuits.mpsend}).

Duplicates (a sender resending, after a leg died, cells that had in fact
arrived) are dropped and counted.
"""

from meshvpn.errors import MeshVPNError
from meshvpn.onion.cells import RELAY_DATA_LEN

MAX_AHEAD = 4096  # sequence numbers past the last delivered; ~2 MB of DATA
ENTRY_COST = 32  # bytes charged per held cell on top of its body: empty bodies are not free
MAX_BUFFER = MAX_AHEAD * (RELAY_DATA_LEN + ENTRY_COST)  # bytes held out of order: a full honest window fits
ACK_EVERY = 128  # cells delivered between two MP_ACKs


class MultipathViolation(MeshVPNError):
    """A leg broke the multipath rules; the set is closed."""


class ReorderBuffer:
    """
    @param deliver: C{callable(command, body)} for each sequenced cell, in order.
    @param acknowledge: C{callable(delivered)} every L{ACK_EVERY} cells delivered.
    """

    def __init__(self, deliver, acknowledge, maxAhead=MAX_AHEAD, maxBuffer=MAX_BUFFER, ackEvery=ACK_EVERY):
        self._deliver = deliver
        self._acknowledge = acknowledge
        self.maxAhead = maxAhead
        self.maxBuffer = maxBuffer
        self.ackEvery = ackEvery
        self.delivered = 0  # every sequence number up to this one went to deliver()
        self.acked = 0
        self.held = {}  # sequence number -> (command, body), all > delivered
        self.heldBytes = 0
        self.duplicates = 0
        self.paused = False  # the reader cannot take more: hold even in-order cells, acknowledge nothing
        self._next = {}  # leg -> the sequence number its next sequenced cell has (None: no MP_SWITCH yet)

    def addLeg(self, leg):
        self._next[leg] = None

    def removeLeg(self, leg):
        self._next.pop(leg, None)

    def switch(self, leg, seq):
        """MP_SWITCH on C{leg}: its next sequenced cell is number C{seq}."""
        self._known(leg)
        if seq > self.delivered + self.maxAhead:
            raise MultipathViolation(f"MP_SWITCH to {seq}, more than {self.maxAhead} past the {self.delivered} delivered")
        self._next[leg] = seq

    def received(self, leg, command, body):
        """A sequenced cell (MP_DATA or MP_FIN) arrived on C{leg}."""
        seq = self._next.get(leg)
        if seq is None:
            self._known(leg)
            raise MultipathViolation("sequenced cell on a leg before its MP_SWITCH")
        if seq - self.delivered > self.maxAhead:
            raise MultipathViolation(f"sequence number {seq} more than {self.maxAhead} past the {self.delivered} delivered")
        self._next[leg] = seq + 1
        if seq <= self.delivered or seq in self.held:
            self.duplicates += 1
            return
        if seq != self.delivered + 1 or self.paused:
            size = len(body) + ENTRY_COST
            if self.heldBytes + size > self.maxBuffer:
                raise MultipathViolation(f"reorder buffer over {self.maxBuffer} bytes")
            self.held[seq] = (command, body)
            self.heldBytes += size
            return
        self.delivered = seq
        self._deliver(command, body)
        self._drain()

    def pause(self):
        """Deliver nothing more (the reader paused): the sender's window closes as acknowledgements stop."""
        self.paused = True

    def resume(self):
        self.paused = False
        self._drain()

    def _drain(self):
        held = self.held
        while self.delivered + 1 in held and not self.paused:
            self.delivered += 1
            command, body = held.pop(self.delivered)
            self.heldBytes -= len(body) + ENTRY_COST
            self._deliver(command, body)
        if self.delivered - self.acked >= self.ackEvery:
            self.flushAck()

    def flushAck(self):
        """Acknowledge what was delivered now (the stream ended, or a leg died)."""
        if self.delivered != self.acked:
            self.acked = self.delivered
            self._acknowledge(self.delivered)

    def _known(self, leg):
        if leg not in self._next:
            raise MultipathViolation("cell on a circuit that is not a leg of this set")
