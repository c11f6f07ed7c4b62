"""How a node's log lines look, and which of them are written.

``twistd --logger=meshvpn.logoutput.observer`` (as the systemd units in
``contrib/`` run it) picks the form from where the lines go:

 - under journald (C{$JOURNAL_STREAM} names our stderr), one line per entry
   with its syslog priority as a C{<N>} prefix and no timestamp, since the
   journal stamps each entry itself (and filters by the priority:
   C{journalctl -p warning});
 - anywhere else, twistd's usual timestamped lines on stdout.

Both filter by one process-wide level (L{setLevel}), which the C{log-level}
setting chooses at start and a SIGHUP reload can change.
"""

import os
import sys

from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    textFileLogObserver,
)

LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn, "error": LogLevel.error}

# syslog priorities (RFC 5424) journald reads from a "<N>" line prefix.
PRIORITY = {LogLevel.debug: 7, LogLevel.info: 6, LogLevel.warn: 4, LogLevel.error: 3, LogLevel.critical: 2}

_predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)


def parseLogLevel(raw):
    """A setting's parser: C{"debug"}, C{"info"}, C{"warn"} or C{"error"}."""
    if isinstance(raw, str) and raw.lower() in LEVELS:
        return raw.lower()
    raise ValueError(f"a log level: {', '.join(LEVELS)}")


def setLevel(name):
    """Write events at C{name} (L{LEVELS}) and above from now on."""
    _predicate.defaultLogLevel = LEVELS[name]
    _predicate.clearLogLevels()  # the predicate keeps the default it began with under ""


def currentLevel():
    return next(name for name, level in LEVELS.items() if level is _predicate.defaultLogLevel)


def underJournal(stream, environ=None):
    """
    Whether C{stream} is the journal's stream: C{$JOURNAL_STREAM} is
    C{DEVICE:INODE} of the socket systemd connected (sd_journal_stream_fd
    semantics), which a child whose stderr was redirected no longer matches.
    """
    environ = os.environ if environ is None else environ
    value = environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(x) for x in value.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (device, inode)


def formatJournalLines(event):
    """
    C{"<6>[system or class] text\\n"}, one prefixed line per line of the event (a
    traceback is several journal entries, each with its priority), or
    C{None} for an event with no text.
    """
    text = formatEvent(event)
    if "log_failure" in event:
        try:
            text = f"{text}\n{event['log_failure'].getTraceback()}"
        except Exception:
            pass
    if not text:
        return None
    priority = PRIORITY.get(event.get("log_level"), 6)
    system = event.get("log_system")
    if not system or system == "-":
        # A Logger's namespace is its module and class: the class says enough.
        system = (event.get("log_namespace") or "-").rpartition(".")[2]
    lines = text.rstrip("\n").split("\n")
    return "".join(f"<{priority}>[{system}] {line}\n" for line in lines)


def journalObserver(stream):
    def observe(event):
        text = formatJournalLines(event)
        if text:
            stream.write(text)
            stream.flush()

    return observe


def observer(stream=None, environ=None):
    """The factory ``twistd --logger`` calls: level-filtered, journal-aware."""
    if stream is None:
        stream = sys.stderr if underJournal(sys.stderr, environ) else sys.stdout
        journal = stream is sys.stderr
    else:
        journal = underJournal(stream, environ)
    inner = journalObserver(stream) if journal else textFileLogObserver(stream)
    return FilteringLogObserver(inner, [_predicate])

