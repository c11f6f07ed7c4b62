"""A measurer's side of a capacity probe: fill a link to the target with random bytes, count what comes back.

One L{ProbeStream} per target and slot.  It keeps at most L{WINDOW} bytes
unanswered on the link (self-clocked: each echo lets the next record go,
like a transport without congestion control), sends a fresh random record
for each one answered, and counts only echoes that match what it sent byte
for byte; anything else (an unknown sequence, changed bytes, an echo after
the end) is dropped and counted.  A record unanswered for L{EXPIRE}
seconds is given up (the target dropped it: out of capacity), freeing the
window.  The reading is the bytes echoed over the probe's length.
"""

import os

from twisted.internet import defer

RECORD = 1000  # random bytes per probe record: the most a PROBE record carries (link/probewire.py MAX_DATA)
WINDOW = 64 * RECORD  # bytes unanswered at once
EXPIRE = 1.0  # seconds before an unanswered record is given up
TICK = 0.05  # seconds between two looks at the window when no echo came


class ProbeStream:
    """
    @param link: an open L{meshvpn.interfaces.ILink} to the target.
    """

    def __init__(self, clock, link, seconds, randomBytes=os.urandom):
        self.clock = clock
        self.link = link
        self.seconds = seconds
        self.randomBytes = randomBytes
        self.echoed = 0  # bytes that came back as sent
        self.sent = 0
        self.mismatched = 0  # echoes of a changed body or of nothing we sent
        self.expired = 0
        self._outstanding = {}  # seq -> (data, sent at)
        self._inFlight = 0
        self._seq = 0
        self._end = None
        self._call = None
        self._done = None

    def start(self):
        """@return: Deferred firing with C{(bytes echoed, milliseconds)} once the probe's time is over."""
        self._done = defer.Deferred()
        self._end = self.clock.seconds() + self.seconds
        self._fill()
        self._call = self.clock.callLater(TICK, self._tick)
        return self._done

    @property
    def running(self):
        return self._done is not None and not self._done.called

    def echoReceived(self, seq, data):
        if not self.running:
            self.mismatched += 1
            return
        sent = self._outstanding.pop(seq, None)
        if sent is None:
            self.mismatched += 1
            return
        self._inFlight -= len(sent[0])
        if sent[0] != data:
            self.mismatched += 1
        else:
            self.echoed += len(data)
        self._fill()

    def _fill(self):
        now = self.clock.seconds()
        while self._inFlight + RECORD <= WINDOW and now < self._end:
            data = self.randomBytes(RECORD)
            seq = self._seq
            if not self.link.sendProbe(seq, data):
                break  # writes blocked (or the link went): the next tick tries again
            self._seq = (seq + 1) % 2**32
            self._outstanding[seq] = (data, now)
            self._inFlight += len(data)
            self.sent += len(data)

    def _tick(self):
        now = self.clock.seconds()
        if now >= self._end:
            self.stop()
            return
        for seq in [s for s, (_, at) in self._outstanding.items() if now - at >= EXPIRE]:
            data, _ = self._outstanding.pop(seq)
            self._inFlight -= len(data)
            self.expired += 1
        self._fill()
        self._call = self.clock.callLater(TICK, self._tick)

    def stop(self):
        """End the probe now (its time is over, or the node stops)."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._outstanding.clear()
        self._inFlight = 0
        if self.running:
            self._done.callback((self.echoed, max(1, int(round(self.seconds * 1000)))))
