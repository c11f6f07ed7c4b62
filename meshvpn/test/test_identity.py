"""Identity keys: created once 0600, reloaded identically, refused when corrupt or too open."""

import os
import stat

from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from meshvpn.errors import KeyFileError
from meshvpn.identity import IDENTITY_FILE, ONION_FILE, NodeIdentity, nodeIdFromPublicKey, verifySignature


class IdentityTests(unittest.TestCase):
    def setUp(self):
        self.dataDir = os.path.join(self.mktemp(), "node")

    def test_createThenReload(self):
        first = NodeIdentity.loadOrCreate(self.dataDir)
        again = NodeIdentity.loadOrCreate(self.dataDir)
        self.assertEqual(first.nodeId, again.nodeId)
        self.assertEqual(first.onionPublicKey, again.onionPublicKey)
        self.assertEqual(len(first.nodeId), 32)
        self.assertEqual(first.nodeId, nodeIdFromPublicKey(first.identityPublicKey))

    def test_filesAre0600AndDir0700(self):
        NodeIdentity.loadOrCreate(self.dataDir)
        self.assertEqual(stat.S_IMODE(os.stat(self.dataDir).st_mode), 0o700)
        for name in (IDENTITY_FILE, ONION_FILE):
            self.assertEqual(stat.S_IMODE(os.stat(os.path.join(self.dataDir, name)).st_mode), 0o600)
        self.assertEqual(sorted(os.listdir(self.dataDir)), sorted([IDENTITY_FILE, ONION_FILE]))  # no temp files left

    def test_looseExistingDirTightened(self):
        """A data dir made 0755 by hand (or an old version) is tightened to 0700, and the log says so."""
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        os.makedirs(self.dataDir, mode=0o755)
        os.chmod(self.dataDir, 0o755)
        NodeIdentity.loadOrCreate(self.dataDir)
        self.assertEqual(stat.S_IMODE(os.stat(self.dataDir).st_mode), 0o700)
        said = [formatEvent(e) for e in events]
        self.assertTrue(any("0755" in line and "0700" in line and self.dataDir in line for line in said), said)

    def test_signatureVerifies(self):
        ident = NodeIdentity.generate()
        sig = ident.sign(b"hello")
        self.assertTrue(verifySignature(ident.identityPublicKey, b"hello", sig))
        self.assertFalse(verifySignature(ident.identityPublicKey, b"hellO", sig))
        self.assertFalse(verifySignature(b"short", b"hello", sig))

    def test_groupReadableRefused(self):
        NodeIdentity.loadOrCreate(self.dataDir)
        path = os.path.join(self.dataDir, IDENTITY_FILE)
        os.chmod(path, 0o640)
        before = open(path, "rb").read()
        e = self.assertRaises(KeyFileError, NodeIdentity.loadOrCreate, self.dataDir)
        self.assertIn(path, str(e))
        self.assertIn("0640", str(e))
        self.assertEqual(open(path, "rb").read(), before)

    def _corrupt(self, name, mutate):
        NodeIdentity.loadOrCreate(self.dataDir)
        path = os.path.join(self.dataDir, name)
        data = mutate(open(path, "rb").read())
        with open(path, "wb") as f:
            f.write(data)
        e = self.assertRaises(KeyFileError, NodeIdentity.loadOrCreate, self.dataDir)
        self.assertIn(path, str(e))
        self.assertIn("corrupt", str(e))
        self.assertEqual(open(path, "rb").read(), data, "a corrupt key file must never be overwritten")

    def test_truncatedIdentityRefused(self):
        self._corrupt(IDENTITY_FILE, lambda d: d[:40])

    def test_flippedSecretRefused(self):
        # Change one base64 character of the secret: it no longer derives to the public key.
        def flip(d):
            lines = d.split(b"\n")
            secret = bytearray(lines[1])
            secret[10] = ord("A") if secret[10] != ord("A") else ord("B")
            lines[1] = bytes(secret)
            return b"\n".join(lines)

        self._corrupt(IDENTITY_FILE, flip)

    def test_garbageOnionKeyRefused(self):
        self._corrupt(ONION_FILE, lambda d: b"\xff\x00garbage")

    def test_emptyFileRefused(self):
        self._corrupt(IDENTITY_FILE, lambda d: b"")
