"""How long a stream waits for the exit's answer before it is tried on another circuit (Tor's CircuitStreamTimeout).

Without it, a stream sent into a circuit through a hung relay waited for
the SOCKS request timeout (120 s).  Tor waits 10 s on the first circuit and
15 s on later ones, for internet round trips and builds of a few seconds.
Here the limit comes from what this client measured: L{FACTOR} times the
90th percentile of its last L{SAMPLES} answered attaches (BEGIN to
CONNECTED or RESOLVE to RESOLVED: a circuit round trip plus the exit's own
connect), never below L{FLOOR_S} (a relay that stalls for a moment, a
target that is slow to accept, must not cost a circuit) nor above Tor's
10 s; later attempts get L{LATER} times that.  Until L{MIN_SAMPLES}
attaches are known it is Tor's 10 s.

Measured on the chaos bench's loopback network (2 cores at load 7-9):
attaches take 20-150 ms at the 90th percentile and builds 0.4-0.8 s, so
the floor decides: 3 s, then 4.5 s.  A starved machine (attaches of 1-2 s)
gets up to 10 s, then 15 s.
"""

import collections

FLOOR_S = 3.0
CAP_S = 10.0
LATER = 1.5
FACTOR = 4.0
SAMPLES = 50
MIN_SAMPLES = 5


class AttachTimeout:
    def __init__(self):
        self._times = collections.deque(maxlen=SAMPLES)

    def attached(self, seconds):
        """A stream or lookup was answered after C{seconds}."""
        self._times.append(seconds)

    def limit(self, attempt):
        """@return: seconds attempt C{attempt} (1 = the first circuit) waits for an answer."""
        if len(self._times) < MIN_SAMPLES:
            first = CAP_S
        else:
            ordered = sorted(self._times)
            p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
            first = min(CAP_S, max(FLOOR_S, FACTOR * p90))
        return first if attempt <= 1 else first * LATER
