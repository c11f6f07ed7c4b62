"""Signed bootstrap files: only a trusted, unexpired, untouched file gives addresses; garbage is refused cleanly."""

import base64
import json
import os

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings, strategies as st
from twisted.trial import unittest

from meshvpn.client import bootstrapfile
from meshvpn.client.bootstrapfile import BootstrapFileError, parse, sign

NOW = 1_800_000_000


class BootstrapFileTests(unittest.TestCase):
    def setUp(self):
        self.key = Ed25519PrivateKey.generate()
        self.trusted = {self.key.public_key().public_bytes_raw()}
        self.data = sign(self.key, ["198.18.0.10:9000", "[2001:db8::1]:9000"], "test", published=NOW, lifetime=86400)

    def test_roundTrip(self):
        network, nodes, expires = parse(self.data, self.trusted, now=NOW + 10)
        self.assertEqual(network, "test")
        self.assertEqual(nodes, [("198.18.0.10", 9000), ("2001:db8::1", 9000)])
        self.assertEqual(expires, NOW + 86400)

    def test_untrustedSigner(self):
        other = {Ed25519PrivateKey.generate().public_key().public_bytes_raw()}
        e = self.assertRaises(BootstrapFileError, parse, self.data, other, NOW)
        self.assertIn("not a trusted bootstrap signer", str(e))

    def test_attackerSwapsAnAddress(self):
        """The attack: a node address in a genuine file replaced by the attacker's."""
        doc = json.loads(self.data)
        doc["nodes"][0] = "198.18.66.66:9000"
        e = self.assertRaises(BootstrapFileError, parse, json.dumps(doc).encode(), self.trusted, NOW)
        self.assertIn("bad signature", str(e))

    def test_attackerSignsWithOwnKeyAndClaimsToBeTrusted(self):
        """The attack: a file signed by the attacker's key with the trusted key in 'signer'."""
        mine = Ed25519PrivateKey.generate()
        doc = json.loads(sign(mine, ["198.18.66.66:9000"], "test", published=NOW))
        doc["signer"] = base64.b64encode(self.key.public_key().public_bytes_raw()).decode()
        e = self.assertRaises(BootstrapFileError, parse, json.dumps(doc).encode(), self.trusted, NOW)
        self.assertIn("bad signature", str(e))

    def test_replayOfAnExpiredFile(self):
        """The attack: a genuine old list replayed after its relays have gone."""
        e = self.assertRaises(BootstrapFileError, parse, self.data, self.trusted, NOW + 86401)
        self.assertIn("expired", str(e))

    def test_fromTheFuture(self):
        self.assertRaises(BootstrapFileError, parse, self.data, self.trusted, NOW - 7200)

    def test_lifetimeBounded(self):
        self.assertRaises(BootstrapFileError, sign, self.key, ["198.18.0.10:9000"], lifetime=10 * 365 * 86400)

    def test_oversized(self):
        self.assertRaises(BootstrapFileError, parse, b" " * (bootstrapfile.MAX_FILE + 1), self.trusted, NOW)

    def test_namesOnlyLiteralAddresses(self):
        self.assertRaises(BootstrapFileError, sign, self.key, ["relay.example:9000"])
        self.assertRaises(BootstrapFileError, sign, self.key, ["198.18.0.10:0"])

    def test_signersFile(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("# comment\n" + base64.b64encode(self.key.public_key().public_bytes_raw()).decode() + "  # ours\n")
        self.assertEqual(bootstrapfile.loadSigners(path, self.mktemp()), self.trusted)
        with open(path, "w") as f:
            f.write("not a key\n")
        self.assertRaises(BootstrapFileError, bootstrapfile.loadSigners, path)

    def test_keygenAndLoad(self):
        path = self.mktemp()
        public = bootstrapfile.newSigningKey(path)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        key = bootstrapfile.loadSigningKey(path)
        self.assertEqual(base64.b64encode(key.public_key().public_bytes_raw()).decode(), public)
        self.assertRaises(BootstrapFileError, bootstrapfile.newSigningKey, path)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=600))
    def test_garbageBytes(self, data):
        try:
            parse(data, self.trusted, NOW)
        except BootstrapFileError:
            pass

    @settings(max_examples=300, deadline=None)
    @given(st.dictionaries(st.sampled_from(sorted(bootstrapfile.FIELDS) + ["x"]),
                           st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=30),
                                        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                                        max_leaves=8)))
    def test_garbageDocuments(self, doc):
        try:
            parse(json.dumps(doc).encode(), self.trusted, NOW)
        except BootstrapFileError:
            pass
