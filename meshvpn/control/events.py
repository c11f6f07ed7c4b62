"""The node's live events and log tail, for the control API's event stream and the dashboard.

Clients of the control API should never poll: everything that changes is
published here once and handed to every subscriber (the API's
Server-Sent Events stream, `meshvpn events`).  The bus keeps a bounded
history, each event numbered, so a client that reconnects with
C{Last-Event-ID} misses nothing that is still held; a subscriber is a plain
callable, so a slow one is the API's problem to bound, never the bus's.

The log tail is a twisted.logger observer holding the last lines the node
logged, also published as C{log} events.  It holds what the node's log file
already holds, nothing more.
"""

import collections
import time

from twisted.logger import formatEvent
from zope.interface import implementer

from meshvpn.interfaces import IControlEvents

HISTORY = 1000  # events held for clients that reconnect
LOG_LINES = 500  # log lines held for the log tail
LEVELS = ("debug", "info", "warn", "error", "critical")


@implementer(IControlEvents)
class EventBus:
    """
    @param clock: an C{IReactorTime}; event times are its C{seconds()}.
    """

    def __init__(self, clock, history=HISTORY):
        self.clock = clock
        self.held = collections.deque(maxlen=history)
        self.lastId = 0
        self._subscribers = []

    def publish(self, kind, data):
        self.lastId += 1
        event = {"id": self.lastId, "type": kind, "time": self.clock.seconds(), "data": data}
        self.held.append(event)
        for callback in list(self._subscribers):
            callback(event)
        return event

    def subscribe(self, callback, since=None):
        if since is not None:
            for event in list(self.held):
                if event["id"] > since:
                    callback(event)
        self._subscribers.append(callback)

        def unsubscribe():
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def recent(self, kinds=None, limit=100):
        """The last C{limit} events held, of C{kinds} (a set of type prefixes) or all."""
        events = [e for e in self.held if kinds is None or _matches(e["type"], kinds)]
        return events[-limit:]


def _matches(kind, prefixes):
    return any(kind == p or kind.startswith(p + ".") for p in prefixes)


class LogTail:
    """
    A twisted.logger observer keeping the last L{LOG_LINES} lines, each
    C{{"time", "level", "system", "text"}}, and publishing each as a C{log}
    event.  Add it to the log publisher while the node runs.
    """

    def __init__(self, bus=None, lines=LOG_LINES):
        self.bus = bus
        self.lines = collections.deque(maxlen=lines)

    def __call__(self, event):
        level = event.get("log_level")
        name = level.name if level is not None else "info"
        try:
            text = formatEvent(event)
        except Exception:
            text = "(unformattable log event)"
        if event.get("log_failure") is not None:
            # the exception's one line, not its traceback: the tail is for reading
            text = f"{text}: {event['log_failure'].getErrorMessage()}"
        line = {
            "time": event.get("log_time") or time.time(),
            "level": name if name in LEVELS else "info",
            "system": event.get("log_namespace", "-"),
            "text": text[:1000],
        }
        self.lines.append(line)
        if self.bus is not None:
            self.bus.publish("log", line)

    def tail(self, level="debug", limit=200):
        """
        @param level: the lowest level to include (one of L{LEVELS}).
        @raise ValueError: an unknown level.
        """
        if level not in LEVELS:
            raise ValueError(f"level must be one of {', '.join(LEVELS)}")
        floor = LEVELS.index(level)
        lines = [line for line in self.lines if LEVELS.index(line["level"]) >= floor]
        return lines[-limit:] if limit > 0 else []
