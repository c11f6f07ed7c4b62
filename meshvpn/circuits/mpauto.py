"""When a client stream gets a second leg, and when it gives it back: the automatic multipath rule.

A second leg pays only when the *path* holds a bulk transfer back (a
throttled or distant relay: the client waits for cells) and costs when the
*client* does (CPU-bound, or starved of CPU on a crowded host: a second leg
only adds reorder and acknowledgement work; on loopback 109 against 184
Mbit/s).  So, ticked once a second per stream that has moved at least
L{START_BYTES}:

  - SINGLE: the stream moved more than L{BULK_BYTES_PER_S} (the circuit
    manager's own bulk mark, L{meshvpn.circuits.busy}) in each of the last
    L{BULK_TICKS} seconds AND the reactor thread was busy (running or
    waiting for a CPU, L{meshvpn.circuits.mpload}) less than
    L{BUSY_SHARE} of each of them: LINK, remembering the single-path rate
    of those seconds (their mean).
  - LINKING: the caller builds and links the leg (L{linked}, or
    L{failed}: the stream stays single for good).
  - TRIAL: the first L{SETTLE_TICKS} seconds are the new leg's ramp; the
    next L{TRIAL_TICKS} must average L{MIN_GAIN} times the single-path
    rate, or the leg is slower than it is worth: UNLINK, and the stream
    stays single for good (the path showed it does not pay).
  - MULTIPATH: kept while it pays.  UNLINK, back to SINGLE (which may
    link again, at most L{MAX_LINKS} times per stream: no flapping), when
    the last L{TRIAL_TICKS} seconds averaged less than the single path
    did alone (the second leg holds the first back, or the path changed),
    or when the thread was busy L{SATURATED_SHARE} of each of the last
    L{UNLINK_BUSY_TICKS} seconds (the client is now the bottleneck).

A stream that goes quiet keeps its legs: a pause between bursts costs the
relays one idle circuit, and the next burst starts on both.  Nothing here
reads a clock or a counter: the caller hands each tick its rate and the
busy share, so every transition is a plain call in a test.
"""

import enum

from meshvpn.circuits.busy import BULK_BYTES_PER_S

TICK_S = 1.0  # seconds between evaluations of one stream
START_BYTES = BULK_BYTES_PER_S  # a stream that never moved this much never gets a timer
BULK_TICKS = 2  # seconds of bulk with an idle client before a second leg is linked
# A second leg can at best double the rate, so the client must have room for twice its work: its
# reactor thread running or waiting for a CPU less than half of each second.  Measured (load 15-22 on
# 2 cores): 52-83% on loopback at 8-18 MB/s (the client's CPU, and its wait for one, hold the stream),
# 11-21% behind relays throttled to 2 MB/s when the host is quieter, up to ~50% when it is not.
BUSY_SHARE = 0.5
SETTLE_TICKS = 1  # seconds after linking not judged: the new leg's window is still growing
TRIAL_TICKS = 3  # seconds whose mean rate decides whether the leg pays (and, later, still pays)
MIN_GAIN = 1.15  # the set must beat the single path by this factor, or the leg goes
# Once linked, the busy share alone is a poor judge (building the leg's circuit, and on a crowded host
# every wake-up's wait for a CPU, raise it while the set still gains): the rate is.  Only a thread
# busy nearly all the time gives the leg back on that alone.
SATURATED_SHARE = 0.9
UNLINK_BUSY_TICKS = 3  # saturated seconds in a row that give the second leg back
MAX_LINKS = 3  # second legs one stream may be given over its life


class Phase(enum.Enum):
    SINGLE = "single"
    LINKING = "linking"
    TRIAL = "trial"
    MULTIPATH = "multipath"
    DONE = "done"  # single for good: no second leg fits, it did not pay, or MAX_LINKS reached


class Action(enum.Enum):
    NONE = "none"
    LINK = "link"
    UNLINK = "unlink"
    STAY = "stay"  # nothing to do, said once per stream: it is bulk but the client is the bottleneck


class RuleViolation(Exception):
    """An event the transition table does not list: a bug in the caller."""


class MultipathRule:
    """
    One stream's automatic multipath choice.

    @ivar phase: a L{Phase}.
    @ivar why: why the last transition happened, for the log and status.
    @ivar singleRate: bytes/s of the single path when the last link was asked for.
    @ivar gain: the last trial's mean rate over C{singleRate}, or C{None}.
    """

    def __init__(self, threshold=BULK_BYTES_PER_S, busyShare=BUSY_SHARE, minGain=MIN_GAIN):
        self.threshold = threshold
        self.busyShare = busyShare
        self.minGain = minGain
        self.phase = Phase.SINGLE
        self.why = "not bulk yet"
        self.links = 0
        self.singleRate = None
        self.gain = None
        self._streak = []  # rates of the bulk, client-idle seconds in a row (SINGLE)
        self._busyBulk = 0  # bulk seconds in a row with a busy client (SINGLE)
        self.stayed = False  # STAY was returned
        self._busyRun = 0  # saturated seconds in a row (MULTIPATH)
        self._ticks = 0  # seconds since the leg was linked (TRIAL)
        self._rates = []  # the trial's rates, then the last TRIAL_TICKS seconds' (MULTIPATH)

    def _busy(self, share):
        return share is None or share >= self.busyShare

    def tick(self, rate, share):
        """
        One second passed: the stream moved C{rate} bytes/s and the reactor
        thread was busy C{share} of it (C{None}: not known yet).

        @return: an L{Action} for the caller to carry out.
        """
        return _TICK[self.phase](self, rate, share)

    def _tickSingle(self, rate, share):
        if rate <= self.threshold or self._busy(share):
            self._streak = []
            self._busyBulk = self._busyBulk + 1 if rate > self.threshold else 0
            if self._busyBulk >= BULK_TICKS and not self.stayed:
                self.stayed = True
                self.why = "bulk, but the client is the bottleneck" + ("" if share is None else f": busy {share:.0%}")
                return Action.STAY
            return Action.NONE
        self._busyBulk = 0
        self._streak.append(rate)
        if len(self._streak) < BULK_TICKS:
            return Action.NONE
        self.singleRate = sum(self._streak) / len(self._streak)
        self._streak = []
        self.links += 1
        self._enter(Phase.LINKING, f"bulk for {BULK_TICKS} s at {self.singleRate / 1e6:.2f} MB/s, client thread busy {share:.0%}")
        return Action.LINK

    def _tickIgnored(self, rate, share):
        return Action.NONE

    def _tickTrial(self, rate, share):
        self._ticks += 1
        if self._ticks <= SETTLE_TICKS:
            return Action.NONE
        self._rates.append(rate)
        if len(self._rates) < TRIAL_TICKS:
            return Action.NONE
        self.gain = self._mean() / self.singleRate
        if self.gain >= self.minGain:
            self._enter(Phase.MULTIPATH, f"two legs move {self.gain:.2f}x the single path")
            return Action.NONE
        self._enter(Phase.DONE, f"the second leg does not pay: {self.gain:.2f}x the single path")
        return Action.UNLINK

    def _tickMultipath(self, rate, share):
        self._rates = (self._rates + [rate])[-TRIAL_TICKS:]
        self._busyRun = self._busyRun + 1 if share is not None and share >= SATURATED_SHARE else 0
        again = Phase.SINGLE if self.links < MAX_LINKS else Phase.DONE
        if self._busyRun >= UNLINK_BUSY_TICKS:
            self._enter(again, f"client busy {share:.0%} for {UNLINK_BUSY_TICKS} s")
            return Action.UNLINK
        if len(self._rates) == TRIAL_TICKS and self._mean() < self.singleRate:
            self._enter(again, f"two legs now move {self._mean() / self.singleRate:.2f}x the single path")
            return Action.UNLINK
        return Action.NONE

    def _mean(self):
        return sum(self._rates) / len(self._rates)

    def linked(self):
        """The second leg finished its link handshake."""
        self._expect(Phase.LINKING)
        self._enter(Phase.TRIAL, "second leg linked")

    def failed(self, why):
        """No second leg could be built or linked: the stream stays on its circuit."""
        self._expect(Phase.LINKING)
        self._enter(Phase.DONE, f"no second leg: {why}")

    def legLost(self):
        """The second leg's circuit died on its own: single again, and it may be linked anew."""
        if self.phase in (Phase.TRIAL, Phase.MULTIPATH):
            self._enter(Phase.SINGLE if self.links < MAX_LINKS else Phase.DONE, "second leg lost")

    def _expect(self, phase):
        if self.phase is not phase:
            raise RuleViolation(f"{phase.value} event in phase {self.phase.value}")

    def _enter(self, phase, why):
        self.phase = phase
        self.why = why
        self._streak = []
        self._busyRun = 0
        self._ticks = 0
        self._rates = []


_TICK = {
    Phase.SINGLE: MultipathRule._tickSingle,
    Phase.LINKING: MultipathRule._tickIgnored,
    Phase.TRIAL: MultipathRule._tickTrial,
    Phase.MULTIPATH: MultipathRule._tickMultipath,
    Phase.DONE: MultipathRule._tickIgnored,
}
