"""Log lines for the journal (priority prefix, no timestamp) and the level filter."""

import io
import os

from twisted.logger import Logger, LogLevel, LogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest

from meshvpn import logoutput


class JournalFormatTests(unittest.TestCase):
    def event(self, level, text, **extra):
        return {"log_level": level, "log_format": text, "log_system": "-", "log_namespace": "meshvpn.x.LinkManager",
                "log_time": 1700000000.0, **extra}

    def test_priorityPrefixNoTimestamp(self):
        line = logoutput.formatJournalLines(self.event(LogLevel.warn, "link refused"))
        self.assertEqual(line, "<4>[LinkManager] link refused\n")
        self.assertNotIn("2023", line)

    def test_everyLineOfATracebackHasItsPriority(self):
        try:
            1 / 0
        except ZeroDivisionError:
            failure = Failure()
        text = logoutput.formatJournalLines(self.event(LogLevel.critical, "boom", log_failure=failure))
        lines = text.splitlines()
        self.assertGreater(len(lines), 2)
        self.assertTrue(all(line.startswith("<2>") for line in lines), lines)
        self.assertIn("ZeroDivisionError", text)

    def test_underJournalMatchesTheStream(self):
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        stream = os.fdopen(w, "w")
        self.addCleanup(stream.close)
        st = os.fstat(w)
        self.assertTrue(logoutput.underJournal(stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}))
        self.assertFalse(logoutput.underJournal(stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}))
        self.assertFalse(logoutput.underJournal(stream, {}))
        self.assertFalse(logoutput.underJournal(stream, {"JOURNAL_STREAM": "garbage"}))

    def test_observerFiltersByLevel(self):
        self.addCleanup(logoutput.setLevel, logoutput.currentLevel())
        out = io.StringIO()
        publisher = LogPublisher(logoutput.observer(out, environ={}))
        log = Logger(namespace="meshvpn.test", observer=publisher)
        logoutput.setLevel("warn")
        log.info("quiet {n}", n=1)
        log.warn("loud {n}", n=2)
        logoutput.setLevel("debug")
        log.debug("chatty {n}", n=3)
        text = out.getvalue()
        self.assertNotIn("quiet", text)
        self.assertIn("loud 2", text)
        self.assertIn("chatty 3", text)

    def test_parseLogLevel(self):
        self.assertEqual(logoutput.parseLogLevel("WARN"), "warn")
        for bad in ("loud", 3, None):
            self.assertRaises(ValueError, logoutput.parseLogLevel, bad)
