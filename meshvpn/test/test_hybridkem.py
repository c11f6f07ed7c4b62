"""
ML-KEM-768 against published vectors, and the hybrid combiner against the
vectors doc/protocol.md ("Hybrid combiner") lists.

The ML-KEM vectors are in meshvpn/test/vectors/mlkem768_published.txt,
each group with its source (Wycheproof mlkem_768_test.json and
mlkem_768_keygen_seed_test.json; C2SP CCTV modulus vectors).  The combiner
vectors were generated once by this code and checked in: they pin the
construction, so a change to it cannot pass unnoticed.
"""

import os

from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial import unittest

from meshvpn import hybridkem

HERE = os.path.dirname(__file__)


def published():
    vectors = {}
    with open(os.path.join(HERE, "vectors", "mlkem768_published.txt")) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            name, _, value = line.strip().partition(" = ")
            vectors.setdefault(name, []).append(bytes.fromhex(value))
    return vectors


class MLKEMVectorTests(unittest.TestCase):
    def setUp(self):
        if not hybridkem.available():
            raise unittest.SkipTest("ML-KEM-768 is not available in this cryptography/OpenSSL")
        self.v = published()

    def test_wycheproofDecaps(self):
        """The seed gives the published key, which decapsulates the published ciphertext to K."""
        key = hybridkem.DecapsulationKey(self.v["seed"][0])
        self.assertEqual(key.ek, self.v["ek"][0])
        self.assertEqual(key.decapsulate(self.v["c"][0]), self.v["K"][0])

    def test_wycheproofKeygen(self):
        for seed, ek in zip(self.v["keygen_seed"], self.v["keygen_ek"]):
            self.assertEqual(hybridkem.DecapsulationKey(seed).ek, ek)
        self.assertEqual(len(self.v["keygen_seed"]), 2)

    def test_cctvModulus(self):
        """Encapsulation keys with a coefficient >= q are refused (FIPS 203's modulus check)."""
        self.assertEqual(len(self.v["invalid_ek"]), 3)
        for ek in self.v["invalid_ek"]:
            self.assertRaises(hybridkem.KEMError, hybridkem.encapsulate, ek)

    def test_roundTrip(self):
        key = hybridkem.DecapsulationKey()
        ss, ct = hybridkem.encapsulate(key.ek)
        self.assertEqual((len(ss), len(ct), len(key.ek)), (32, hybridkem.CT_LEN, hybridkem.EK_LEN))
        self.assertEqual(key.decapsulate(ct), ss)

    def test_lengths(self):
        self.assertRaises(hybridkem.KEMError, hybridkem.encapsulate, b"\0" * 1183)
        self.assertRaises(hybridkem.KEMError, hybridkem.DecapsulationKey().decapsulate, b"\0" * 1087)


# Generated once (see the module docstring); listed in doc/protocol.md.
COMBINE_INPUTS = dict(label=b"meshvpn-circuit-x25519-mlkem768-v1", classic=bytes(range(32)),
                      ss=bytes(range(32, 64)), ek=b"\xee" * 1184, ct=b"\xcc" * 1088)
COMBINED = bytes.fromhex("0f4e22e8365d6283dcd1b2e47b1e2156984ac29a9062b89532e616f967f85560")
EXPANDED = bytes.fromhex(
    "bf49199245212cb3ed1165f79803289c696741c4f85fe426cb785e470e2370a0"
    "b5e10eec925083c3b2d6fc1f1663214223e3b95a75b35084cb5425b9fcb8a31b"
)


class CombinerTests(unittest.TestCase):
    def test_vector(self):
        seed = hybridkem.combine(**COMBINE_INPUTS)
        self.assertEqual(seed, COMBINED)
        self.assertEqual(hybridkem.expand(seed, b"meshvpn-circuit-keys-v1", 64), EXPANDED)

    def test_everyInputCounts(self):
        """Changing any one input (or moving bytes between two) changes the seed."""
        seeds = {hybridkem.combine(**COMBINE_INPUTS)}
        for name, value in COMBINE_INPUTS.items():
            changed = dict(COMBINE_INPUTS, **{name: value[:-1] + bytes([value[-1] ^ 1])})
            seeds.add(hybridkem.combine(**changed))
        moved = dict(COMBINE_INPUTS, classic=COMBINE_INPUTS["classic"] + b"\0", ss=COMBINE_INPUTS["ss"][1:])
        seeds.add(hybridkem.combine(**moved))
        self.assertEqual(len(seeds), 1 + len(COMBINE_INPUTS) + 1)


class AvailabilityTests(unittest.TestCase):
    def tearDown(self):
        hybridkem.setAvailableForTests(None)

    def test_missingIsLoggedOnce(self):
        """Without ML-KEM, one clear warning says why and what falls back."""
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.patch(hybridkem, "_probe", lambda: (False, "the OpenSSL backend does not provide ML-KEM-768 (test)"))
        hybridkem.setAvailableForTests(None)
        self.assertFalse(hybridkem.available())
        self.assertFalse(hybridkem.available())
        warned = [e for e in events if e.get("log_level") == LogLevel.warn and "post-quantum" in e.get("log_format", "")]
        self.assertEqual(len(warned), 1)
        self.assertIn("fall back to classic", warned[0]["log_format"])
