"""Circuit flow and congestion control with authenticated acknowledgements (doc/protocol.md).

A sender may have at most C{start} flow-controlled cells unacknowledged.  The
receiver acknowledges every C{increment} cells with a SENDME that carries the
8-byte tag of the last cell it acknowledges; the sender remembers the tag of
every C{increment}-th cell it sent and refuses a SENDME whose tag differs.  A
tag is only known to the hop that removed every layer of that cell, so a
SENDME proves the data arrived (Tor's authenticated SENDMEs, proposal 289,
with our 8-byte tag instead of a 20-byte digest).

A circuit that negotiated congestion control (L{FLOW_CC}) replaces the
fixed sending window with L{VegasWindow}: the same SENDMEs, but each one
also times the round trip of the cell it acknowledges, and a Vegas
controller (Tor's proposal 324) sizes the window to what the path carries,
growing while the round trip stays at its minimum and shrinking when it
grows (a queue builds somewhere on the path).  The receiving side does not
change: it acknowledges every C{increment} cells whatever the sender's
window.
"""

import hmac
import itertools
from collections import deque

from meshvpn.errors import MeshVPNError

CIRCUIT_WINDOW = 1000
CIRCUIT_INCREMENT = 100
STREAM_WINDOW = 500
STREAM_INCREMENT = 50

# What a circuit negotiates (the flags of FLOW_NEGOTIATE, doc/protocol.md).
FLOW_CC = 0x01  # congestion control on the circuit's sending windows (both ends)
FLOW_XON = 0x02  # streams use XON/XOFF from the receiving edge instead of stream SENDMEs
FLOW_EARLY = 0x04  # the origin may send DATA right after BEGIN, before CONNECTED (optimistic data)
FLOW_GSO = 0x08  # packet mode may carry offload records (64 KB TCP segments, checksum left to the kernel; onion/packets.py)
FLOW_ALL = FLOW_CC | FLOW_XON | FLOW_EARLY | FLOW_GSO
# The circuit version (L{meshvpn.onion.circversions}) whose last hops know each
# flag newer than version 1: a last hop of an earlier release refuses a flag
# it does not know by destroying the circuit, so it is never proposed one.
FLAG_SINCE = {FLOW_EARLY: 2, FLOW_GSO: 3}


def flagsFor(flags, version):
    """C{flags} without those a last hop speaking circuit C{version} does not know."""
    for flag, since in FLAG_SINCE.items():
        if version < since:
            flags &= ~flag
    return flags

# Optimistic data (FLOW_EARLY): stream bytes the origin may send after BEGIN
# and before CONNECTED.  The exit holds them until its connection is made;
# a peer that sends more has broken the protocol and loses the stream.  An
# application's first request fits many times over.
EARLY_DATA_LIMIT = 64 * 1024


class FlowError(MeshVPNError):
    """A peer broke flow control: a forged or unexpected SENDME, or it overran our window."""


class SendWindow:
    """The packaging side: how many more cells we may send."""

    __slots__ = ("window", "start", "increment", "_sent", "_expected")

    def __init__(self, start=CIRCUIT_WINDOW, increment=CIRCUIT_INCREMENT):
        self.window = self.start = start
        self.increment = increment
        self._sent = 0
        self._expected = deque()  # bounded: at most start // increment tags

    def onSent(self, tag):
        """Account one sent cell whose tag is C{tag}; the caller checked L{window}."""
        if self.window <= 0:
            raise FlowError("sent past the window")
        self.window -= 1
        self._sent += 1
        if self._sent % self.increment == 0:
            self._expected.append(tag)

    @property
    def sent(self):
        return self._sent

    def onSendme(self, tag):
        """
        @raise FlowError: the SENDME was not expected or acknowledges a cell we did not send.
        """
        if not self._expected:
            raise FlowError("SENDME for a window that is not open")
        if not hmac.compare_digest(self._expected.popleft(), tag):
            raise FlowError("SENDME tag does not match the acknowledged cell (forged or unauthenticated)")
        self.window += self.increment


class ReceiveWindow:
    """The delivering side: counts cells and says when to send a SENDME."""

    __slots__ = ("window", "increment", "_received")

    def __init__(self, start=CIRCUIT_WINDOW, increment=CIRCUIT_INCREMENT):
        self.window = start
        self.increment = increment
        self._received = 0

    @property
    def received(self):
        return self._received

    def onReceived(self, tag):
        """
        @return: the tag to acknowledge in a SENDME now, or C{None}.
        @raise FlowError: the peer sent more than the window allowed.
        """
        self.window -= 1
        if self.window < 0:
            raise FlowError("peer overran the flow-control window")
        self._received += 1
        if self._received % self.increment == 0:
            self.window += self.increment
            return tag
        return None


class VegasParams:
    """
    The controller's constants, in cells (one SENDME acknowledges
    C{increment} cells).  Tor's proposal 324 names them; Tor's values are
    for a 31-cell increment, these for our 100.

    - C{initial}: the window before any round trip is known (the old fixed
      window, so no circuit starts slower than before);
    - C{minimum}, C{maximum}: bounds (the maximum bounds what a receiver
      may have to hold for one circuit: 10,000 cells are 4.9 MB; the
      minimum, one SENDME's worth, is what a slow path may be held to:
      300 cells are 50 ms of queue at 24 Mbit/s);
    - C{alpha}, C{beta}: grow below C{alpha} queued cells, shrink above C{beta};
    - C{gamma}: leave slow start when more than this is queued;
    - C{delta}: more than this queued cuts the window to the estimated
      bandwidth-delay product plus C{delta} at once;
    - C{share}: each threshold is at least this fraction of the window
      (alpha 1/10, beta and gamma 1/5, delta 1/2).  Vegas' fixed cell
      counts suit a path whose round trip only grows when a queue does; on
      ours, relays that handle cells in batches and share a CPU add a few
      milliseconds of jitter, which a fixed threshold reads as a queue on
      a long path and caps the window far below the path.  A threshold
      that scales with the window tolerates a round trip up to 11% (grow)
      or 25% (shrink) above its minimum, whatever the path's length;
    - C{minRttWindow}: seconds over which the minimum round trip is kept
      (older minima are forgotten, so a path that became slower is not
      mistaken for a queue for ever);
    - C{queueTime}: C{alpha} and C{beta} are at most what the path drains
      in this many seconds (the window over the round trip), but never
      below their share of the window nor below half and one increment.
      Every stream of a circuit waits behind its queue: 400 cells are
      8 ms at 200 Mbit/s but 66 ms on a circuit that a busy CPU holds to
      24 Mbit/s, where an interactive stream sharing the circuit with a
      download then waited 13-30x its unloaded time to first byte.  On a
      fast path the cap is above the fixed counts and changes nothing;
    - C{slowStartSamples}: slow start sees a queue in the minimum of this
      many latest samples, not in the standing round trip (0: the standing
      round trip, which lags a doubling window by a whole round trip).
    """

    initial = CIRCUIT_WINDOW
    minimum = 100
    maximum = 10_000
    alpha = 200
    beta = 400
    gamma = 500
    delta = 1000
    share = (10, 5, 5, 2)  # alpha, beta, gamma, delta as at least cwnd // n
    minRttWindow = 10.0
    queueTime = 0.01
    slowStartSamples = 3


class VegasWindow:
    """
    The packaging side of a congestion-controlled circuit: how many more
    cells may be sent (C{window}, what the per-cell path reads), the
    congestion window C{cwnd} and the round-trip estimates behind it.

    Per cell, L{onSent} costs what L{SendWindow.onSent} costs; the clock is
    read only for the cells a SENDME will acknowledge (one in C{increment})
    and once per SENDME.

    @param clock: an C{IReactorTime}.
    """

    __slots__ = ("window", "cwnd", "inflight", "increment", "slowStart", "ewmaRtt", "minRtt", "params",
                 "_clock", "_sent", "_expected", "_acks", "_streak", "_minNow", "_minPrev", "_minSince",
                 "rttSamples", "standingRtt", "_recent")

    def __init__(self, clock, params=VegasParams, increment=CIRCUIT_INCREMENT):
        self.params = params
        self.increment = increment
        self.cwnd = params.initial
        self.window = self.cwnd
        self.inflight = 0
        self.slowStart = True
        self.ewmaRtt = None
        self.minRtt = None
        self.standingRtt = None  # the smallest sample of about the last round trip
        self._recent = deque()  # the last samples (at most 32), for standingRtt
        self.rttSamples = 0
        self._clock = clock
        self._sent = 0
        self._expected = deque()  # (tag, sent at); bounded: at most maximum // increment
        self._acks = 0  # SENDMEs since the last once-per-window adjustment
        self._streak = 0  # consecutive windows without a queue (faster regrowth)
        self._minNow = self._minPrev = float("inf")
        self._minSince = clock.seconds()

    @property
    def sent(self):
        return self._sent

    def onSent(self, tag):
        """Account one sent cell whose tag is C{tag}; the caller checked L{window}."""
        if self.window <= 0:
            raise FlowError("sent past the congestion window")
        self.window -= 1
        self.inflight += 1
        self._sent += 1
        if self._sent % self.increment == 0:
            self._expected.append((tag, self._clock.seconds()))

    def onSendme(self, tag):
        """
        An authenticated SENDME: C{increment} cells arrived.  Time their
        round trip and adjust the window.

        @raise FlowError: the SENDME was not expected or acknowledges a cell we did not send.
        """
        if not self._expected:
            raise FlowError("SENDME for a window that is not open")
        expected, sentAt = self._expected.popleft()
        if not hmac.compare_digest(expected, tag):
            raise FlowError("SENDME tag does not match the acknowledged cell (forged or unauthenticated)")
        now = self._clock.seconds()
        appLimited = self.inflight < self.cwnd // 2
        self.inflight -= self.increment
        self._sample(max(now - sentAt, 1e-6), now)
        self._adjust(appLimited)
        self.window = self.cwnd - self.inflight

    def _sample(self, rtt, now):
        self.rttSamples += 1
        # The EWMA spans about one window of acknowledgements (one round trip).
        n = max(2, min(self.cwnd // self.increment, 20))
        ewma = self.ewmaRtt
        self.ewmaRtt = rtt if ewma is None else ewma + (rtt - ewma) * 2 / (n + 1)
        # The minimum over the last one or two minRttWindow periods.
        if now - self._minSince >= self.params.minRttWindow:
            self._minPrev, self._minNow, self._minSince = self._minNow, float("inf"), now
        if rtt < self._minNow:
            self._minNow = rtt
        self.minRtt = min(self._minNow, self._minPrev)
        # The standing round trip: a queue that lasts shows in every sample of
        # a round trip; jitter (a relay's batch, a busy CPU) only in some.
        recent = self._recent
        recent.append(rtt)
        while len(recent) > max(2, min(n, 32)):
            recent.popleft()
        self.standingRtt = min(recent)

    def queued(self):
        """Cells the controller believes wait in queues: C{cwnd - bdp}."""
        return self.cwnd - self.bdp()

    def bdp(self):
        """The bandwidth-delay product estimate: the window scaled by the minimum over the standing round trip."""
        if not self.standingRtt:
            return self.cwnd
        return self.cwnd * self.minRtt / self.standingRtt

    def _adjust(self, appLimited):
        p, inc = self.params, self.increment
        bdp = self.bdp()
        cwnd = self.cwnd
        recent = self._recent
        last = p.slowStartSamples
        if self.slowStart and last and len(recent) >= last:
            # The window doubles each round trip in slow start, so the
            # standing round trip (the minimum of the last round trip's
            # samples) shows a queue a whole window late: on loopback the
            # window overshot from 1,000 to 3,100 cells (100 ms of queue at
            # 30,000 cells/s) before slow start ended.  A queue that lasts
            # shows in a few samples in a row; one jittery sample does not.
            bdp = cwnd * self.minRtt / min(itertools.islice(recent, len(recent) - last, None))
        queue = cwnd - bdp
        sa, sb, sg, sd = p.share
        alpha, beta, gamma, delta = (max(p.alpha, cwnd // sa), max(p.beta, cwnd // sb),
                                     max(p.gamma, cwnd // sg), max(p.delta, cwnd // sd))
        if p.queueTime and self.ewmaRtt:
            # What the path drains in queueTime: on a slow path a fixed cell
            # count is a long wait for every other stream of the circuit.
            drained = cwnd / self.ewmaRtt * p.queueTime
            alpha = max(min(alpha, drained / 2), cwnd // sa, inc // 2)
            beta = max(min(beta, drained), cwnd // sb, inc)
        if queue > delta:
            # A standing queue: drop to what the path holds (plus delta) at once.
            cwnd = min(cwnd, bdp + delta - inc)
            self.slowStart = False
            self._acks = self._streak = 0
        elif self.slowStart:
            if queue > gamma:
                self.slowStart = False
                cwnd = min(cwnd, bdp + gamma)
            elif not appLimited:
                cwnd += inc  # one increment per SENDME: the window doubles each round trip
        else:
            self._acks += 1
            if self._acks * inc >= cwnd:  # once per window, about once per round trip
                self._acks = 0
                if queue > beta:
                    cwnd -= inc
                    self._streak = 0
                elif queue < alpha and not appLimited:
                    # Vegas adds one increment per round trip; after a collapse
                    # (a stalled link) that takes minutes to climb back, so each
                    # further round trip without a queue doubles the step, up to
                    # slow start's pace.  A queue resets it.
                    cwnd += inc << min(self._streak, 6)
                    self._streak += 1
                else:
                    self._streak = 0
        self.cwnd = int(max(p.minimum, min(p.maximum, cwnd)))
