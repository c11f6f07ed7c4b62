"""One event that fires once, and any number of Deferreds waiting for it.

Links, circuits and streams each close exactly once and each has callers
asking "tell me when it is closed", before or after the fact.  This is that
list of waiters, written once: C{whenFired()} before the event gives a
Deferred that fires with the result; after it, one that has already fired.
"""

from twisted.internet import defer


class OneShotObserver:
    def __init__(self):
        self._waiters = []
        self._fired = False
        self._result = None

    @property
    def fired(self):
        return self._fired

    @property
    def result(self):
        """The value the event fired with (C{None} before it fires)."""
        return self._result

    def whenFired(self):
        """@return: a Deferred that fires with the event's result."""
        if self._fired:
            return defer.succeed(self._result)
        d = defer.Deferred()
        self._waiters.append(d)
        return d

    def fire(self, result=None):
        """Fire the event once; later calls are ignored (the first result stands)."""
        if self._fired:
            return
        self._fired, self._result = True, result
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(result)
