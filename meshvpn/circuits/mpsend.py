"""The sending end of a multipath set: sequence numbers, the leg scheduler and resending after a leg dies.

Each sequenced cell gets the next sequence number and goes on the leg that
should deliver it first: among legs whose congestion window has room, the
one with the lowest smoothed round trip (Tor's conflux "lowest RTT"
scheduler; a leg without a sample yet counts as fastest, so a new leg gets
measured).  Sending on a leg whose counter is not at that number costs an
MP_SWITCH first.

Every cell is kept until an MP_ACK covers it, and no cell goes out more
than L{meshvpn.circuits.mpreorder.MAX_AHEAD} numbers past the last
acknowledged one, so the sender holds at most that window and the
receiver's reorder buffer can never overflow for an honest sender.  When a
leg dies, what it carried and was not acknowledged is sent again, in
order, on the legs left: the stream loses and duplicates nothing (the
receiver drops the copies of what had in fact arrived).
"""

from collections import deque

from meshvpn.circuits.mpreorder import MAX_AHEAD, MultipathViolation
from meshvpn.onion.cells import RELAY_DATA_LEN, RelayCommand
from meshvpn.onion.multipathmsgs import MpSwitch

MAX_PENDING = 256 * 1024  # bytes the application may queue before being paused


class _LegState:
    __slots__ = ("leg", "nextSeq", "cells")

    def __init__(self, leg):
        self.leg = leg
        self.cells = 0  # sequenced cells sent on this leg (resent ones included)
        self.nextSeq = None  # None: the receiver has not been told where this leg stands


class MultipathSender:
    """
    @ivar legs: the live legs, in the order they joined.
    """

    def __init__(self, window=MAX_AHEAD, maxData=RELAY_DATA_LEN):
        self.window = window
        self.maxData = maxData
        self.legs = []
        self.nextSeq = 1
        self.acked = 0
        self.kept = {}  # seq -> (command, body, leg state it last went on); seq > acked
        self._pending = deque()  # (command, body) not yet numbered
        self.pendingBytes = 0
        self._resend = deque()  # seqs to send again, ascending
        self.resent = 0
        self.finished = False
        self.drained = None  # callable(): the pending bytes fell below half of MAX_PENDING

    def addLeg(self, leg):
        self.legs.append(_LegState(leg))
        self.flush()

    def write(self, data):
        """Queue stream bytes; they leave as room opens (L{flush})."""
        if self.finished:
            raise ValueError("write after finish")
        step = self.maxData
        for k in range(0, len(data), step):
            chunk = bytes(data[k:k + step])
            self._pending.append((RelayCommand.MP_DATA, chunk))
            self.pendingBytes += len(chunk)
        self.flush()

    def finish(self):
        """The stream's last byte was written: MP_FIN follows it in sequence."""
        if not self.finished:
            self.finished = True
            self._pending.append((RelayCommand.MP_FIN, b""))
            self.flush()

    def wantsMore(self):
        """False while the application should be paused."""
        return self.pendingBytes < MAX_PENDING

    @property
    def done(self):
        """Everything, MP_FIN included, was sent and acknowledged."""
        return self.finished and not self._pending and not self._resend and not self.kept

    def acknowledged(self, delivered):
        """MP_ACK (or a link's last-received number): the peer delivered every cell up to C{delivered}."""
        if delivered < self.acked or delivered >= self.nextSeq:
            raise MultipathViolation(f"MP_ACK of {delivered}, outside {self.acked}..{self.nextSeq - 1}")
        kept = self.kept
        for seq in range(self.acked + 1, delivered + 1):
            kept.pop(seq, None)
        self.acked = delivered
        while self._resend and self._resend[0] <= delivered:
            self._resend.popleft()
        self.flush()

    def legClosed(self, leg):
        """C{leg} died: what it carried and was not acknowledged goes again on the others."""
        state = next((s for s in self.legs if s.leg is leg), None)
        if state is None:
            return
        self.legs.remove(state)
        again = sorted(set(self._resend).union(seq for seq, (_, _, s) in self.kept.items() if s is state))
        self._resend = deque(again)
        self.flush()

    def choose(self):
        """The leg the next cell should go on, or C{None} when every window is shut."""
        best = bestRtt = None
        for state in self.legs:
            if state.leg.room() <= 0:
                continue
            rtt = state.leg.rtt()
            rtt = 0.0 if rtt is None else rtt
            if best is None or rtt < bestRtt:
                best, bestRtt = state, rtt
        return best

    def flush(self):
        """Send what the windows (each leg's, and the set's) take now."""
        self._flush()
        if self.drained is not None and self.pendingBytes < MAX_PENDING // 2:
            self.drained()

    def _flush(self):
        kept = self.kept
        while self._resend:
            state = self.choose()
            if state is None:
                return
            seq = self._resend.popleft()
            command, body, _ = kept[seq]
            kept[seq] = (command, body, state)
            self.resent += 1
            self._send(state, seq, command, body)
        pending = self._pending
        while pending and self.nextSeq - self.acked <= self.window:
            state = self.choose()
            if state is None:
                return
            command, body = pending.popleft()
            self.pendingBytes -= len(body)
            seq = self.nextSeq
            self.nextSeq = seq + 1
            kept[seq] = (command, body, state)
            self._send(state, seq, command, body)

    @staticmethod
    def _send(state, seq, command, body):
        if state.nextSeq != seq:
            state.leg.sendRelay(RelayCommand.MP_SWITCH, 0, MpSwitch(seq).encode())
        state.leg.sendRelay(command, 0, body)
        state.nextSeq = seq + 1
        state.cells += 1

    def cellsPerLeg(self):
        """Sequenced cells sent on each live leg, for status and tests."""
        return [state.cells for state in self.legs]
