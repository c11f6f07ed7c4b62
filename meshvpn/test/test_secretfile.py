"""Secret files: atomic 0600 writes that survive a crash and a reused pid."""

import os
import stat

from twisted.trial import unittest

from meshvpn.errors import KeyFileError
from meshvpn.secretfile import readSecretFile, writeSecretFile


class WriteTests(unittest.TestCase):
    def setUp(self):
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "state.json")

    def test_writeIs0600AndLeavesNoTemp(self):
        writeSecretFile(self.path, b"one")
        writeSecretFile(self.path, b"two")
        self.assertEqual(readSecretFile(self.path), b"two")
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        self.assertEqual(os.listdir(self.dir), ["state.json"])

    def test_leftoverTempOfThisPid(self):
        """A crash left C{.state.json.<pid>.tmp}; the pid is ours again (pid 1 in a container): writes still work."""
        stale = os.path.join(self.dir, f".state.json.{os.getpid()}.tmp")
        with open(stale, "wb") as f:
            f.write(b"half")
        os.utime(stale, (1, 1))  # from before the crash
        writeSecretFile(self.path, b"whole")
        self.assertEqual(readSecretFile(self.path), b"whole")
        self.assertEqual(os.listdir(self.dir), ["state.json"], "the crash's leftover is cleaned up")

    def test_recentLeftoverHarmless(self):
        """A temp file too recent to call stale is left alone, and never in the way."""
        recent = os.path.join(self.dir, f".state.json.{os.getpid()}.tmp")
        open(recent, "w").close()
        for n in range(3):
            writeSecretFile(self.path, b"%d" % n)
        self.assertEqual(readSecretFile(self.path), b"2")
        self.assertEqual(sorted(os.listdir(self.dir)), sorted(["state.json", os.path.basename(recent)]))

    def test_otherFilesUntouched(self):
        other = os.path.join(self.dir, ".other.json.1.tmp")
        open(other, "w").close()
        os.utime(other, (1, 1))
        writeSecretFile(self.path, b"x")
        self.assertTrue(os.path.exists(other))

    def test_failedWriteLeavesOldContent(self):
        writeSecretFile(self.path, b"old")
        self.assertRaises(TypeError, writeSecretFile, self.path, "not bytes")
        self.assertEqual(readSecretFile(self.path), b"old")
        self.assertEqual(os.listdir(self.dir), ["state.json"])

    def test_tooOpenRefused(self):
        writeSecretFile(self.path, b"x")
        os.chmod(self.path, 0o644)
        self.assertRaises(KeyFileError, readSecretFile, self.path)
