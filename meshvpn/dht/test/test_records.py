"""Signed DHT records (BEP 44 model) and the bounded record store."""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from meshvpn.dht import wire
from meshvpn.dht.records import (
    MAX_TTL,
    SHARED_TTL,
    OWNED,
    SHARED,
    RecordError,
    RecordStore,
    makeRecord,
    ownedKey,
    parseRecord,
    sharedKey,
    verifyRecord,
)
from meshvpn.identity import NodeIdentity

NOW = 1_800_000_000


class RecordTests(unittest.TestCase):
    def setUp(self):
        self.ident = NodeIdentity.generate()

    def test_roundTripAndKey(self):
        r = makeRecord(self.ident, b"salt", b"value", 7, NOW + 60)
        p = parseRecord(r.raw)
        self.assertEqual((p.seq, p.expires, p.value, p.salt), (7, NOW + 60, b"value", b"salt"))
        self.assertEqual(p.key, ownedKey(self.ident.nodeId, b"salt"))
        verifyRecord(p, NOW, key=p.key)
        s = makeRecord(self.ident, b"role", b"v", 1, NOW + 60, kind=SHARED)
        self.assertEqual(s.key, sharedKey(b"role"))

    def test_tamperedRejected(self):
        r = makeRecord(self.ident, b"s", b"value", 1, NOW + 60)
        for i in range(len(r.raw)):
            raw = bytearray(r.raw)
            raw[i] ^= 1
            try:
                verifyRecord(parseRecord(bytes(raw)), NOW, key=r.key)
            except RecordError:
                continue
            self.fail(f"flipping byte {i} went unnoticed")

    def test_otherPublisherCannotWriteOwnedKey(self):
        mine = makeRecord(self.ident, b"s", b"v", 1, NOW + 60)
        theirs = makeRecord(NodeIdentity.generate(), b"s", b"evil", 2, NOW + 60)
        self.assertRaises(RecordError, verifyRecord, theirs, NOW, mine.key)

    def test_expiryWindow(self):
        self.assertRaises(RecordError, verifyRecord, makeRecord(self.ident, b"", b"v", 1, NOW), NOW)
        self.assertRaises(RecordError, verifyRecord, makeRecord(self.ident, b"", b"v", 1, NOW + MAX_TTL + 1), NOW)

    @settings(max_examples=500)
    @given(st.binary(max_size=1400))
    def test_garbage(self, raw):
        try:
            verifyRecord(parseRecord(raw), NOW)
        except RecordError:
            pass

    @given(st.binary(max_size=64), st.binary(max_size=1024), st.integers(0, 2**64 - 1))
    def test_fieldsRoundTrip(self, salt, value, seq):
        r = makeRecord(self.ident, salt, value, seq, NOW + 1)
        p = parseRecord(r.raw)
        self.assertEqual((p.salt, p.value, p.seq, p.kind), (salt, value, seq, OWNED))
        self.assertRaises(RecordError, parseRecord, r.raw + b"x")
        self.assertRaises(RecordError, parseRecord, r.raw[:-1])


class StoreTests(unittest.TestCase):
    def setUp(self):
        self.ident = NodeIdentity.generate()
        self.store = RecordStore(maxRecords=10, maxPerKey=3)

    def test_higherSeqWinsReplayRejected(self):
        r1 = makeRecord(self.ident, b"s", b"one", 1, NOW + 60)
        r2 = makeRecord(self.ident, b"s", b"two", 2, NOW + 60)
        self.assertEqual(self.store.store(r2, NOW), wire.STORED)
        self.assertEqual(self.store.store(r1, NOW), wire.STALE)  # replay of an older record
        self.assertEqual(self.store.get(r1.key, NOW), [r2])
        r3 = makeRecord(self.ident, b"s", b"three", 3, NOW + 60)
        self.assertEqual(self.store.store(r3, NOW), wire.STORED)
        self.assertEqual(self.store.get(r1.key, NOW), [r3])
        self.assertEqual(self.store.count, 1)
        same = makeRecord(self.ident, b"s", b"other", 3, NOW + 60)
        self.assertEqual(self.store.store(same, NOW), wire.STALE)

    def test_badSignatureNotStored(self):
        r = makeRecord(self.ident, b"s", b"v", 1, NOW + 60)
        forged = parseRecord(r.raw[:-65] + b"w" + r.raw[-64:])  # value changed, old signature
        self.assertEqual(forged.value, b"w")
        self.assertEqual(self.store.store(forged, NOW), wire.BAD_RECORD)
        self.assertEqual(self.store.count, 0)

    def test_expiredDroppedAndRejected(self):
        r = makeRecord(self.ident, b"s", b"v", 1, NOW + 60)
        self.assertEqual(self.store.store(r, NOW), wire.STORED)
        self.assertEqual(self.store.get(r.key, NOW + 60), [])
        self.assertEqual(self.store.expire(NOW + 61), 1)
        self.assertEqual(self.store.count, 0)
        self.assertEqual(self.store.store(r, NOW + 61), wire.EXPIRED)

    def test_caps(self):
        shared = [makeRecord(NodeIdentity.generate(), b"role", b"v", 1, NOW + 60 + i, kind=SHARED) for i in range(5)]
        codes = [self.store.store(r, NOW) for r in shared]
        # a full key keeps its incumbents: a later expiry buys nothing
        self.assertEqual(codes, [wire.STORED] * 3 + [wire.FULL] * 2)
        self.assertEqual(len(self.store.get(sharedKey(b"role"), NOW)), 3)
        for i in range(20):
            self.store.store(makeRecord(self.ident, b"k%d" % i, b"v", 1, NOW + 60), NOW)
        self.assertEqual(self.store.count, 10)

    def test_fairEvictionBySource(self):
        store = RecordStore(maxRecords=10, maxPerKey=4)
        flood = [makeRecord(NodeIdentity.generate(), b"s%d" % i, b"v", 1, NOW + 600) for i in range(12)]
        codes = [store.store(r, NOW, "198.51.100") for r in flood]
        self.assertEqual(codes, [wire.STORED] * 10 + [wire.FULL] * 2)  # one source can fill an empty store...
        newcomer = makeRecord(NodeIdentity.generate(), b"relay", b"d", 1, NOW + 600)
        self.assertEqual(store.store(newcomer, NOW, "203.0.113"), wire.STORED)  # ...but never lock others out
        self.assertEqual(store.get(newcomer.key, NOW), [newcomer])
        self.assertEqual(store.get(flood[9].key, NOW), [])  # its newest record gave way
        self.assertEqual(store.count, 10)
        # shared keys: the same within a key
        store = RecordStore(maxRecords=100, maxPerKey=4)
        key = [makeRecord(NodeIdentity.generate(), b"role", b"v", 1, NOW + 600, kind=SHARED) for i in range(5)]
        self.assertEqual([store.store(r, NOW, "198.51.100") for r in key[:4]], [wire.STORED] * 4)
        self.assertEqual(store.store(key[4], NOW, "192.0.2"), wire.STORED)
        self.assertEqual(len(store.get(sharedKey(b"role"), NOW)), 4)

    def test_sharedExpiryCappedAtDescriptorLifetime(self):
        r = makeRecord(self.ident, b"role", b"v", 1, NOW + MAX_TTL, kind=SHARED)
        self.assertEqual(self.store.store(r, NOW), wire.STORED)
        self.assertEqual(self.store.get(sharedKey(b"role"), NOW + SHARED_TTL - 1), [r])
        self.assertEqual(self.store.get(sharedKey(b"role"), NOW + SHARED_TTL), [])
        self.assertEqual(self.store.store(r, NOW + 100), wire.STORED)  # a STORE refreshes it
        self.assertEqual(self.store.get(sharedKey(b"role"), NOW + SHARED_TTL + 99), [r])
        self.assertEqual(self.store.expire(NOW + SHARED_TTL + 100), 1)
        owned = makeRecord(self.ident, b"mine", b"v", 1, NOW + MAX_TTL)
        self.store.store(owned, NOW)
        self.assertEqual(self.store.get(owned.key, NOW + MAX_TTL - 1), [owned])  # one writer: its own expiry

    def test_perPublisherCap(self):
        store = RecordStore(maxPerPublisher=3)
        codes = [store.store(makeRecord(self.ident, b"k%d" % i, b"v", 1, NOW + 60), NOW) for i in range(5)]
        self.assertEqual(codes, [wire.STORED] * 3 + [wire.FULL] * 2)

    def test_admitPolicyAndSample(self):
        store = RecordStore(admit=lambda r, origin: r.kind == OWNED)
        self.assertEqual(store.store(makeRecord(self.ident, b"x", b"v", 1, NOW + 60, kind=SHARED), NOW), wire.BAD_RECORD)
        mine = [makeRecord(NodeIdentity.generate(), b"role", b"v", 1, NOW + 60) for _ in range(6)]
        for r in mine:
            store.store(r, NOW)
        target = mine[3].key
        got = store.sample(b"role", target, NOW, limit=3)
        self.assertEqual(got[0], mine[3])
        t = int.from_bytes(target, "big")
        self.assertEqual(got, sorted(mine, key=lambda r: int.from_bytes(r.key, "big") ^ t)[:3])
        self.assertEqual(store.sample(b"other", target, NOW), [])
