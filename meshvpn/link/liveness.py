"""How long a link waits before it asks, suspects and gives up on a silent peer: bounds from measured PONG round trips.

A link's peer can hang (SIGSTOP, a wedged process) or its path can be cut
silently (a blackhole: no RST).  The link finds out by PING/PONG (link
version 3, L{meshvpn.link.protocol}); this module holds the three bounds it
uses, all derived from the PONG round trips the link measured itself:

- I{probe}: cells went out and nothing at all came back for
  C{max(PROBE_FLOOR_S, PROBE_RTT_FACTOR x SRTT)} (at most the link's
  C{probeAfter} setting): a PING goes.  A PING is one small record, so
  this is cheap even when the far end (an exit connecting somewhere) is
  merely slow;
- I{suspicion}: that PING went unanswered, and nothing else came either,
  for TCP's retransmission timeout computed over PONGs (RFC 6298: SRTT +
  4 RTTVAR), at least L{SUSPECT_FLOOR_S} and at most the verdict.  A
  suspected link stays open; the circuit manager stops handing its
  circuits to new streams and moves the streams still waiting for an
  answer (L{meshvpn.circuits.manager}), which is what a user notices;
- I{verdict}: no answer for the verdict timeout (the link's
  C{probeTimeout}, or C{VERDICT_RTT_FACTOR} times the second slowest of the
  last L{SAMPLES} PONGs if longer, at most C{probeTimeoutMax}): the link is
  closed as silent and every circuit on it is destroyed.

Suspicion is cheap to be wrong about (new streams take another circuit for
a moment), the verdict is not (open streams die, the guard is marked down),
so the first is tight and the second keeps its wide margin: on a starved
machine a live peer answers late, and one stall is not a trend.

A relay's link to an I{anonymous} peer (a client) waits far longer for its
verdict, L{CLIENT_VERDICT_S}: the relay routes nothing through a client, so
finding a hung one early buys it nothing, while closing the link ends
every circuit of every user behind that client at once.  That was the
1000-user soak's one event: a client process starved for 4-7 s (load
average 15-20) had its guard links closed as silent, and hundreds of
streams failed together (C{closed-header}, C{short-body}), their guards
then counted down.  What a hung client holds meanwhile is bounded by the
link's queues, as for a client that merely reads slowly.

And a bound is judged only after a read: a reactor runs its due timers
before it reads its sockets, so a process that was itself starved for
seconds woke, found its PING unanswered past the verdict and closed a live
peer's link whose PONG sat unread (a client at load 17 counted its guards
down that way).  When a bound is crossed the link takes one more turn
(C{callLater(0)}: the reads come first) and then judges.
"""

PROBE_FLOOR_S = 0.3
PROBE_RTT_FACTOR = 4
SUSPECT_FLOOR_S = 0.5
VERDICT_RTT_FACTOR = 3
SAMPLES = 8  # PONG round trips remembered for the verdict
CLIENT_VERDICT_S = 30.0  # the least a relay waits on a silent anonymous peer (a client) before closing
# RFC 6298's gains
_ALPHA = 1 / 8
_BETA = 1 / 4


class RoundTrips:
    """The PONG round trips of one link, and the bounds derived from them."""

    def __init__(self):
        self.samples = []
        self.srtt = None
        self.rttvar = None

    def add(self, rtt):
        self.samples.append(rtt)
        if len(self.samples) > SAMPLES:
            del self.samples[0]
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = (1 - _BETA) * self.rttvar + _BETA * abs(self.srtt - rtt)
            self.srtt = (1 - _ALPHA) * self.srtt + _ALPHA * rtt

    def probeAfter(self, ceiling):
        """Seconds of silence after cells went out before a PING goes."""
        if self.srtt is None:
            return ceiling
        return min(ceiling, max(PROBE_FLOOR_S, PROBE_RTT_FACTOR * self.srtt))

    def verdict(self, floor, ceiling, anonymous=False):
        """
        Seconds a PING waits for any answer before the peer counts as hung;
        C{anonymous}: the peer is a client (at least L{CLIENT_VERDICT_S}).
        """
        ordered = sorted(self.samples)
        slow = ordered[-2] if len(ordered) >= 2 else (ordered[0] if ordered else 0.0)
        bound = min(ceiling, max(floor, VERDICT_RTT_FACTOR * slow))
        return max(bound, CLIENT_VERDICT_S) if anonymous else bound

    def suspectAfter(self, verdict):
        """Seconds a PING waits for any answer before the link is suspected."""
        if self.srtt is None:
            return min(verdict, max(SUSPECT_FLOOR_S, 1.0))
        return min(verdict, max(SUSPECT_FLOOR_S, self.srtt + 4 * self.rttvar))
