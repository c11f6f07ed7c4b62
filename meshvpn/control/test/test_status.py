"""The status file is written off the reactor's thread, one write at a time, and gone after stop."""

import os
import threading

from twisted.internet import defer, reactor
from twisted.trial import unittest

from meshvpn.control import status as statusmodule
from meshvpn.control.status import STATUS_FILE, StatusWriter, readStatus


class ThreadedWriteTests(unittest.TestCase):
    def setUp(self):
        self.dataDir = self.mktemp()
        os.makedirs(self.dataDir)
        self.writer = StatusWriter(reactor, self.dataDir, lambda: {"role": "relay"})
        self.threads = []
        self.release = threading.Event()
        realWrite = statusmodule.writeSecretFile

        def recordingWrite(path, data):
            self.threads.append(threading.get_ident())
            self.release.wait(10)
            realWrite(path, data)

        self.patch(statusmodule, "writeSecretFile", recordingWrite)
        self.addCleanup(self.release.set)

    @defer.inlineCallbacks
    def test_theFileIsWrittenOutsideTheReactorThread(self):
        self.release.set()
        yield self.writer.write()
        self.assertEqual(readStatus(self.dataDir)["node"], {"role": "relay"})
        self.assertNotIn(threading.get_ident(), self.threads)

    @defer.inlineCallbacks
    def test_aTickDuringAWriteIsSkipped(self):
        first = self.writer.write()
        second = self.writer.write()
        self.assertIs(first, second)
        self.release.set()
        yield first
        self.assertEqual(len(self.threads), 1)
        yield self.writer.write()  # the next tick after it writes again
        self.assertEqual(len(self.threads), 2)

    @defer.inlineCallbacks
    def test_stopWaitsForTheWriteThenRemovesTheFile(self):
        self.writer.startService()
        self.writer.write()
        stopped = self.writer.stopService()
        self.assertNoResult(stopped)
        self.release.set()
        yield stopped
        self.assertFalse(os.path.exists(os.path.join(self.dataDir, STATUS_FILE)))
