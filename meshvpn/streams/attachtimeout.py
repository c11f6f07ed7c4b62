"""How long a stream waits for the exit's answer before it is tried on another circuit (Tor's CircuitStreamTimeout).

Without it, a stream sent into a circuit through a hung relay waited for
the SOCKS request timeout (120 s).  Tor waits 10 s on the first circuit and
15 s on later ones.  Here the first limit is L{FACTOR} times the 90th
percentile of this client's last L{SAMPLES} answered attaches (BEGIN to
CONNECTED or RESOLVE to RESOLVED: a circuit round trip plus the exit's own
connect), never below Tor's 10 s nor above L{CAP_S}; later attempts get
L{LATER} times that.

Why not lower, though attaches measured on the chaos bench's loopback
network take 20-150 ms at the 90th percentile (2 cores at load 7-9)?
A 3 s floor was tried: on the load bench (300 users, load 18-23) attaches
grew past it as the machine filled, every timeout retired a circuit and
built another, and the extra builds slowed everything further (build p50
6.3 s instead of 1.0 s, a third fewer streams).  A hung relay is found
sooner by its link's PING (about 5 s, L{meshvpn.link.protocol}), which
destroys its circuits and moves their streams at once; this timeout is
the backstop for what PING cannot see (an exit that takes BEGINs and
never answers), so it may be slow.
"""

import collections

FLOOR_S = 10.0
CAP_S = 20.0
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
            first = FLOOR_S
        else:
            ordered = sorted(self._times)
            p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
            first = min(CAP_S, max(FLOOR_S, FACTOR * p90))
        return first if attempt <= 1 else first * LATER
