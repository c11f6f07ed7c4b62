"""Relays an extension to just failed: avoided for a while, within bounds a hostile hop cannot stretch.

When a hop answers an EXTEND2 with TRUNCATED (CONNECTFAILED: it could not
reach the next relay), the relay it was asked to reach is most likely dead
or restarting, and a client that keeps choosing it pays a failed build each
time (five in 25 s were seen after a middle was killed).  But the report
comes from the hop before it, and a hostile guard that "cannot reach"
honest middles would steer its clients' paths toward its friends if the
client believed it without limit.  So, as the attacker sees it:

- a relay is avoided for L{AVOID_S} seconds, then chosen again as usual;
- at most L{MAX_AVOIDED} relays are avoided at once (a new report
  replaces nothing while the list is full), so a liar removes at most that
  many relays from the client's choice, out of every middle and exit;
- one reporting hop causes at most L{PER_REPORTER} avoidances per
  L{REPORTER_WINDOW_S}; its further reports are ignored (and still count
  against it in the manager's failed-past-guard tally).  A client uses one
  guard, so this bounds what its guard alone can do;
- the guard position is never affected (guards are the guard set's
  business), and an avoided relay stays usable when nothing else fits.

The client's own sightings (a relay whose link to us answered no PING)
go in the same list under their own reporter, so the same bounds hold.
"""

import collections

AVOID_S = 60.0
MAX_AVOIDED = 3
PER_REPORTER = 3
REPORTER_WINDOW_S = 600.0
MAX_REPORTERS = 64  # reporters remembered (a client talks through a few hops, not many)


class ExtendAvoidance:
    def __init__(self, clock):
        self.clock = clock
        self._until = {}  # node id -> when its avoidance ends
        self._reports = collections.OrderedDict()  # reporter node id -> deque of times it caused one
        self.ignored = 0

    def failed(self, reporter, target):
        """
        C{reporter} could not extend to C{target}.

        @return: C{True} if C{target} is now avoided.
        """
        now = self.clock.seconds()
        self._expire(now)
        if target in self._until:
            return True
        times = self._reports.get(reporter)
        if times is None:
            if len(self._reports) >= MAX_REPORTERS:
                self._reports.popitem(last=False)
            times = self._reports[reporter] = collections.deque(maxlen=PER_REPORTER)
        while times and now - times[0] >= REPORTER_WINDOW_S:
            times.popleft()
        if len(times) >= PER_REPORTER or len(self._until) >= MAX_AVOIDED:
            self.ignored += 1
            return False
        times.append(now)
        self._until[target] = now + AVOID_S
        return True

    def avoided(self):
        """@return: the node ids to avoid now."""
        self._expire(self.clock.seconds())
        return list(self._until)

    def _expire(self, now):
        for nodeId, until in list(self._until.items()):
            if until <= now:
                del self._until[nodeId]

    def status(self):
        return {"avoided": len(self.avoided()), "reports_ignored": self.ignored}
