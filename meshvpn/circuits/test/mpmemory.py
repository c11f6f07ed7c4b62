"""Circuits in memory for multipath tests: each leg a pair of ends over task.Clock.

Each end implements L{IMultipathLeg}; a cell takes C{delay} seconds to the
other end, sequenced cells count against a window that reopens a round trip
later (as a SENDME would), and killing a leg loses what was in flight.
"""

from zope.interface import implementer

from meshvpn.interfaces import IMultipathLeg
from meshvpn.onion.cells import RelayCommand

_SEQUENCED = (RelayCommand.MP_DATA, RelayCommand.MP_FIN)


@implementer(IMultipathLeg)
class MemoryLegEnd:
    def __init__(self, clock, delay, window, name):
        self.clock = clock
        self.delay = delay
        self.window = window
        self.name = name
        self.inflight = 0
        self.peer = None
        self.mpset = None  # the set at this end (origin), or None
        self.registry = None  # the exit's LinkRegistry, or None
        self.sent = []
        self.isClosed = False
        self.violations = []

    def sendRelay(self, command, streamId, body):
        if self.isClosed:
            return
        self.sent.append((command, streamId, body))
        if command in _SEQUENCED:
            self.inflight += 1
        self.clock.callLater(self.delay, self.peer._arrive, command, streamId, body)

    def room(self):
        return 0 if self.isClosed else self.window - self.inflight

    def rtt(self):
        return 2 * self.delay

    def close(self):
        self.kill()

    def kill(self):
        """The circuit dies at both ends at once; cells in flight are lost."""
        for end in (self, self.peer):
            if not end.isClosed:
                end.isClosed = True
                end._gone()

    def _gone(self):
        if self.registry is not None:
            self.registry.legClosed(self)
        elif self.mpset is not None:
            self.mpset.legClosed(self)

    def _arrive(self, command, streamId, body):
        if self.isClosed:
            return
        if command in _SEQUENCED:
            self.clock.callLater(self.delay, self.peer._windowBack)
        try:
            if command == RelayCommand.MP_LINK and self.registry is not None:
                self.registry.linkReceived(self, streamId, body)
                return
            mpset = self.mpset if self.registry is None else self.registry.setOf(self)
            mpset.relayReceived(self, command, body)
        except Exception as e:
            self.violations.append(e)
            self.kill()

    def _windowBack(self):
        self.inflight -= 1
        mpset = self.mpset if self.registry is None else self.registry.setOf(self)
        if mpset is not None and not self.isClosed:
            mpset.sender.flush()


def memoryLeg(clock, delay, window=200, name="leg"):
    """@return: C{(originEnd, exitEnd)} of one in-memory circuit."""
    a = MemoryLegEnd(clock, delay, window, name + "/origin")
    b = MemoryLegEnd(clock, delay, window, name + "/exit")
    a.peer, b.peer = b, a
    return a, b


class Collector:
    """A set's receiver: the bytes in order, and whether the peer finished."""

    def __init__(self):
        self.chunks = []
        self.fin = False

    def dataReceived(self, data):
        self.chunks.append(data)

    def finished(self):
        self.fin = True

    @property
    def data(self):
        return b"".join(self.chunks)
