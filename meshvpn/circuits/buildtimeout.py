"""How long a circuit build may take before the client gives up on it: Tor's adaptive build timeout, in small.

A fixed 10 s is wrong on a starved machine (two cores at load 50): honest
builds take longer than that, time out, are retried, and add load.  Tor
fits its recent build times and times out at a percentile of them; this
keeps the last L{SAMPLES} successful builds and allows L{FACTOR} times
their 90th percentile, never less than the configured floor nor more than
L{CAP_S}.  Builds that time out in a row stretch it by L{STRETCH} each
(until one succeeds), so a machine slower than every sample still gets
circuits.  A timeout is never charged to a relay (the manager retries
elsewhere, and a guard that really hangs is found by its link's PING), so
a generous timeout costs only time.
"""

import collections

SAMPLES = 50
MIN_SAMPLES = 5
FACTOR = 3.0
CAP_S = 60.0
STRETCH = 1.5


class BuildTimeout:
    def __init__(self, floor=10.0):
        self.floor = floor
        self._times = collections.deque(maxlen=SAMPLES)
        self._stretch = 1.0

    def built(self, seconds):
        self._times.append(seconds)
        self._stretch = 1.0

    def timedOut(self):
        self._stretch = min(self._stretch * STRETCH, CAP_S / max(self.floor, 0.001))

    def current(self):
        """@return: seconds the next build may take."""
        base = self.floor
        if len(self._times) >= MIN_SAMPLES:
            ordered = sorted(self._times)
            p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
            base = max(base, FACTOR * p90)
        return min(CAP_S, base * self._stretch)
