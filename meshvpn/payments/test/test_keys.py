"""Epochs, the issuer's per-epoch keys, the spent-token store, and the DHT records of payments."""

import os
import stat

from hypothesis import given, settings, strategies as st
from twisted.internet import task
from twisted.trial import unittest

from meshvpn.identity import NodeIdentity
from meshvpn.payments import tokens
from meshvpn.payments.epochs import EpochSchedule
from meshvpn.payments.issuerkeys import IssuerKeyStore
from meshvpn.payments.records import (
    UNLIMITED, ExitTerms, IssuerInfo, IssuerKeyRecord, PaymentRecordError, PaymentRecords,
)
from meshvpn.payments.spentstore import SpentTokenStore
from meshvpn.payments.test.fakes import FakeDHT, KeyPool, rsaKey
from meshvpn.payments.tokens import TokenFormatError


class EpochTests(unittest.TestCase):
    def test_windows(self):
        s = EpochSchedule(3600, grace=1)
        self.assertEqual(s.epochAt(7199), 1)
        self.assertEqual(s.issuingUntil(1), 7200)
        self.assertEqual(s.spendableUntil(1), 10800)
        self.assertTrue(s.spendableAt(1, 10799))
        self.assertFalse(s.spendableAt(1, 10800))
        self.assertFalse(s.spendableAt(2, 7199))  # not before its own epoch
        self.assertEqual(s.liveEpochs(7300), [1, 2])

    def test_badSchedules(self):
        self.assertRaises(ValueError, EpochSchedule, 10)
        self.assertRaises(ValueError, EpochSchedule, 3600, grace=99)


class IssuerKeyStoreTests(unittest.TestCase):
    def setUp(self):
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.schedule = EpochSchedule(3600, grace=1)

    def test_keysSurviveRestart(self):
        store = IssuerKeyStore(self.dir, self.schedule, KeyPool())
        current = store.prepare(5000)
        self.assertEqual(current.epoch, 1)
        self.assertEqual(sorted(store.keys), [1, 2])
        again = IssuerKeyStore(self.dir, self.schedule, generate=lambda: self.fail("no new key after a restart"))
        self.assertEqual(again.current(5000).tokenKeyId, current.tokenKeyId)
        path = os.path.join(self.dir, "issuer-keys", "epoch-1.pem")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)

    def test_expiredKeysDeleted(self):
        store = IssuerKeyStore(self.dir, self.schedule, KeyPool())
        old = store.prepare(100)  # epoch 0
        store.prepare(3 * 3600 + 1)  # epoch 3: epoch 0's tokens expired at 7200
        self.assertNotIn(0, store.keys)
        self.assertIsNone(store.byKeyId(old.tokenKeyId))
        self.assertFalse(os.path.exists(os.path.join(self.dir, "issuer-keys", "epoch-0.pem")))

    def test_signingKeyByTruncatedId(self):
        store = IssuerKeyStore(self.dir, self.schedule, KeyPool())
        store.prepare(100)
        cur = store.current(3700)  # epoch 1
        prev = store.keys[0]
        self.assertIs(store.signingKey(cur.truncatedId, 3700), cur)
        self.assertIs(store.signingKey(prev.truncatedId, 3700), prev)
        self.assertIsNone(store.signingKey(prev.truncatedId, 3 * 3600))

    def test_truncatedIdsNeverCollide(self):
        """A new key whose last key-id byte is taken is made again."""
        keys = [rsaKey(0), rsaKey(0), rsaKey(1)]
        store = IssuerKeyStore(self.dir, self.schedule, generate=lambda: keys.pop(0))
        a = store.keyFor(0)
        b = store.keyFor(1)
        self.assertNotEqual(a.truncatedId, b.truncatedId)
        self.assertEqual(keys, [])


class SpentStoreTests(unittest.TestCase):
    def setUp(self):
        self.dir = self.mktemp()

    def test_spendOnce(self):
        store = SpentTokenStore(self.dir)
        key, n = b"k" * 32, b"n" * 32
        self.assertTrue(store.spend(key, n))
        self.assertFalse(store.spend(key, n))
        self.assertTrue(store.spend(b"j" * 32, n))  # per key
        self.assertTrue(store.isSpent(key, n))

    def test_survivesRestartAndTornRecord(self):
        store = SpentTokenStore(self.dir)
        key = b"k" * 32
        store.spend(key, b"a" * 32)
        store.spend(key, b"b" * 32)
        store.close()
        path = os.path.join(self.dir, f"spent-{key.hex()}.log")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path, "ab") as f:
            f.write(b"c" * 10)  # a crash mid-append
        again = SpentTokenStore(self.dir)
        self.assertFalse(again.spend(key, b"a" * 32))
        self.assertFalse(again.spend(key, b"b" * 32))
        self.assertTrue(again.spend(key, b"c" * 32))
        again.close()
        self.assertEqual(os.path.getsize(path), 96)

    def test_forgetKey(self):
        store = SpentTokenStore(self.dir)
        store.spend(b"k" * 32, b"a" * 32)
        store.forgetKey(b"k" * 32)
        self.assertEqual(os.listdir(self.dir), [])
        self.assertTrue(store.spend(b"k" * 32, b"a" * 32))

    def test_badSizes(self):
        self.assertRaises(ValueError, SpentTokenStore(self.dir).spend, b"k", b"a" * 32)


class RecordCodecTests(unittest.TestCase):
    def test_roundTrips(self):
        info = IssuerInfo(EpochSchedule(86400, 2), 10**9, 10, "127.0.0.1:8080")
        self.assertEqual(IssuerInfo.decode(info.encode()), info)
        spki = tokens.encodePublicKey(rsaKey(0).public_key())
        key = IssuerKeyRecord(42, spki)
        self.assertEqual(IssuerKeyRecord.decode(key.encode()), key)
        terms = ExitTerms(10 << 20, 0, UNLIMITED)
        self.assertEqual(ExitTerms.decode(terms.encode()), terms)

    @settings(max_examples=400, deadline=None)
    @given(st.binary(max_size=60), st.sampled_from([b"MVI1", b"MVK1", b"MVE1", b""]))
    def test_decodersRefuseJunk(self, junk, magic):
        for cls in (IssuerInfo, IssuerKeyRecord, ExitTerms):
            try:
                value = cls.decode(magic + junk)
            except (PaymentRecordError, TokenFormatError):
                continue
            self.assertEqual(value.encode(), magic + junk)


class PublishTests(unittest.TestCase):
    def test_issuerRecordsReadBackOnlyFromTheIssuer(self):
        clock = task.Clock()
        clock.advance(10_000)
        dht = FakeDHT(clock)
        issuer = NodeIdentity.loadOrCreate(self.mktemp())
        other = NodeIdentity.loadOrCreate(self.mktemp())
        info = IssuerInfo(EpochSchedule(3600), 5, 2, "127.0.0.1:1")
        spki = tokens.encodePublicKey(rsaKey(0).public_key())
        self.successResultOf(PaymentRecords(dht, issuer).publishIssuer(info, [IssuerKeyRecord(2, spki)], 3600))
        reader = PaymentRecords(dht)
        self.assertEqual(self.successResultOf(reader.fetchIssuer(issuer.nodeId)), info)
        self.assertEqual(self.successResultOf(reader.fetchKey(issuer.nodeId, 2)).spki, spki)
        self.assertIsNone(self.successResultOf(reader.fetchKey(issuer.nodeId, 3)))
        self.assertIsNone(self.successResultOf(reader.fetchIssuer(other.nodeId)))
        # An exit publishing terms for the issuer is found under the issuer's id.
        exit = NodeIdentity.loadOrCreate(self.mktemp())
        terms = ExitTerms(1 << 20, 0, UNLIMITED)
        self.successResultOf(PaymentRecords(dht, exit).publishExitTerms(issuer.nodeId, terms, 3600))
        self.assertEqual(self.successResultOf(reader.fetchExits(issuer.nodeId)), {exit.nodeId: terms})
        clock.advance(3601)
        self.assertEqual(self.successResultOf(reader.fetchExits(issuer.nodeId)), {})


class IssuerKeyCacheTests(unittest.TestCase):
    def setUp(self):
        from meshvpn.payments.verifier import IssuerKeyCache

        self.clock = task.Clock()
        self.clock.advance(10 * 3600 + 5)
        self.dht = FakeDHT(self.clock)
        self.issuer = NodeIdentity.loadOrCreate(self.mktemp())
        self.spki = tokens.encodePublicKey(rsaKey(0).public_key())
        self.cache = IssuerKeyCache(self.clock, PaymentRecords(self.dht), [self.issuer.nodeId])

    def publish(self, epochs):
        info = IssuerInfo(EpochSchedule(3600, 1), 5, 2, "127.0.0.1:1")
        keys = [IssuerKeyRecord(e, self.spki if e == 10 else tokens.encodePublicKey(rsaKey(e % 5 + 1).public_key()))
                for e in epochs]
        self.successResultOf(PaymentRecords(self.dht, self.issuer).publishIssuer(info, keys, 3600))

    def test_readsLiveAndNextEpochs(self):
        self.assertFalse(self.cache.complete())
        self.successResultOf(self.cache.refresh())  # nothing published yet: no keys, not complete
        self.assertEqual(self.cache.keys, {})
        self.publish([9, 10, 11])
        self.successResultOf(self.cache.refresh())
        self.assertTrue(self.cache.complete())
        known = self.cache.lookup(tokens.tokenKeyId(self.spki))
        self.assertEqual((known.issuerId, known.epoch), (self.issuer.nodeId, 10))
        self.assertTrue(known.spendableAt(self.clock.seconds()))
        self.assertEqual(len(self.cache.keys), 3)  # epochs 9 and 10 (spendable) and 11 (next)
        self.assertEqual(self.cache.apiOf(self.issuer.nodeId), "127.0.0.1:1")

    def test_keysKeptWhileTheIssuerCannotBeRead(self):
        self.publish([10])
        self.successResultOf(self.cache.refresh())
        self.dht.records.clear()  # the DHT forgets (or cannot be reached)
        self.successResultOf(self.cache.refresh())
        self.assertIsNotNone(self.cache.lookup(tokens.tokenKeyId(self.spki)))
        self.clock.advance(2 * 3600)  # past the epoch's window: dropped
        self.successResultOf(self.cache.refresh())
        self.assertIsNone(self.cache.lookup(tokens.tokenKeyId(self.spki)))

    def test_unknownKeyRefreshAtMostEveryMinGap(self):
        self.successResultOf(self.cache.refresh())
        puts = self.dht.puts
        self.publish([10])
        self.cache.unknownKeySeen()  # too soon after the last refresh
        self.assertIsNone(self.cache.lookup(tokens.tokenKeyId(self.spki)))
        self.clock.advance(31)
        self.cache.unknownKeySeen()
        self.assertIsNotNone(self.cache.lookup(tokens.tokenKeyId(self.spki)))
        self.assertGreater(self.dht.puts, puts)
