"""How busy the client's own reactor thread was over the last second: the "is the client the bottleneck" half of the multipath rule.

A second leg pays when the path is what holds a transfer back (a slow or
distant relay): the client then spends most of its time waiting in the
poller for cells.  It costs when the client is what holds it back: every
byte then pays for a reorder buffer and acknowledgements on top of the
crypto the client already cannot keep up with (on loopback, 109 against
184 Mbit/s).  The thread's busy share tells the two apart: the time it was
running *or waiting for a CPU* (runnable, preempted by other processes on
a crowded host) over wall time.  Linux keeps both per thread in
``/proc/thread-self/schedstat`` (run ns, run-queue wait ns, slices); where
that file is missing, the thread's CPU time alone (``time.thread_time``)
is the figure, blind only to time spent waiting for a CPU.

Sampled on demand like L{meshvpn.circuits.busy}: no timer of its own, a
sample younger than L{MIN_SPAN_S} returns the last share, so any number of
bulk streams asking every second read the thread's state once.
"""

import time

MIN_SPAN_S = 0.5  # a shorter interval keeps the last share: one reading per tick, however many streams ask
SCHEDSTAT = "/proc/thread-self/schedstat"


def schedstatBusySeconds(path=SCHEDSTAT):
    """Seconds this thread has run or waited runnable for a CPU, or C{None} without schedstat."""
    try:
        with open(path, "rb") as f:
            fields = f.read().split()
        return (int(fields[0]) + int(fields[1])) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def threadBusySeconds():
    """The calling thread's busy seconds: schedstat's run + wait, else its CPU time."""
    busy = schedstatBusySeconds()
    return time.thread_time() if busy is None else busy


class ThreadBusy:
    """
    The share of wall time the reactor thread was busy, over the span since the previous sample.

    @param clock: an C{IReactorTime} (wall time).
    @param busySeconds: C{callable()} returning the thread's cumulative busy
        seconds (L{threadBusySeconds}; tests pass their own).
    """

    def __init__(self, clock, busySeconds=threadBusySeconds):
        self.clock = clock
        self.busySeconds = busySeconds
        self._last = None  # (wall, busy seconds)
        self._share = None

    def share(self):
        """
        Busy share in [0, 1] since the last sample at least L{MIN_SPAN_S}
        old; C{None} until two samples span that long (unknown: the rule
        reads it as busy, so nothing links on a guess).
        """
        now = self.clock.seconds()
        busy = self.busySeconds()
        if self._last is None:
            self._last = (now, busy)
            return self._share
        then, before = self._last
        if now - then >= MIN_SPAN_S:
            self._share = min(1.0, max(0.0, (busy - before) / (now - then)))
            self._last = (now, busy)
        return self._share
