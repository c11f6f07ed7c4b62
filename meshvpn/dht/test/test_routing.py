"""The k-bucket routing table: splitting, ping-before-evict, replacements, refresh, Sybil limits."""

from twisted.internet import defer, task
from twisted.trial import unittest

from meshvpn.dht.routing import RoutingTable, subnetOf


def nid(prefixBits, value, rest=0):
    """An id whose top bits are C{value} (C{prefixBits} long)."""
    return ((value << (256 - prefixBits)) | rest).to_bytes(32, "big")


class Pinger:
    def __init__(self):
        self.calls = []

    def __call__(self, contact):
        d = defer.Deferred()
        self.calls.append((contact, d))
        return d


class TableTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.ping = Pinger()
        self.own = b"\x00" * 32
        self.table = RoutingTable(self.own, self.clock, self.ping, k=4, perBucketSubnet=2, perTableSubnet=3)
        self.n = 0

    def addr(self):
        self.n += 1
        return (f"198.18.{self.n}.1", 4000)

    def test_splitsOnlyAlongOwnId(self):
        # 4 far ids fill the root bucket; a 5th splits it (root covers our id)
        for i in range(4):
            self.assertTrue(self.table.seen(nid(1, 1, i), self.addr()))
        self.assertTrue(self.table.seen(nid(2, 1, 0), self.addr()))
        self.assertEqual(len(self.table.buckets), 2)
        far = self.table.bucketFor(int.from_bytes(nid(1, 1), "big"))
        self.assertEqual(len(far.contacts), 4)
        # the far half does not cover our id: a 5th far id waits, it does not split
        self.assertFalse(self.table.seen(nid(1, 1, 99), self.addr()))
        self.assertEqual(len(self.table.buckets), 2)
        self.assertEqual(len(far.replacements), 1)
        self.assertFalse(self.table.seen(self.own, self.addr()))

    def fillFar(self):
        ids = [nid(1, 1, i) for i in range(4)]
        for i in ids:
            self.table.seen(i, self.addr())
        self.table.seen(nid(2, 1, 0), self.addr())  # split
        return ids

    def test_pingBeforeEvictKeepsLiveOldest(self):
        ids = self.fillFar()
        self.table.seen(nid(1, 1, 50), self.addr())
        self.assertEqual(len(self.ping.calls), 1)
        contact, d = self.ping.calls[0]
        self.assertEqual(contact.nodeId, ids[0])  # least recently seen
        # another newcomer while the ping is out does not ping twice
        self.table.seen(nid(1, 1, 51), self.addr())
        self.assertEqual(len(self.ping.calls), 1)
        self.table.seen(ids[0], contact.address)  # the answer refreshes it
        d.callback(None)
        self.assertIn(ids[0], self.table)
        self.assertNotIn(nid(1, 1, 50), self.table)

    def test_pingBeforeEvictReplacesDeadOldest(self):
        ids = self.fillFar()
        self.table.seen(nid(1, 1, 50), self.addr())
        self.table.seen(nid(1, 1, 51), self.addr())
        self.ping.calls[0][1].errback(Exception("timeout"))
        self.assertNotIn(ids[0], self.table)
        self.assertIn(nid(1, 1, 51), self.table)  # most recent replacement promoted first
        self.assertEqual(len(self.table), 5)

    def test_unverifiedNeverEvicts(self):
        self.fillFar()
        self.table.seen(nid(1, 1, 50), self.addr(), verified=False)
        self.assertEqual(self.ping.calls, [])

    def test_replacementCacheBounded(self):
        self.fillFar()
        for i in range(50):
            self.table.seen(nid(1, 1, 100 + i), self.addr())
        far = self.table.bucketFor(int.from_bytes(nid(1, 1), "big"))
        self.assertEqual(len(far.replacements), 4)

    def test_failuresEvictWhenReplacementWaits(self):
        ids = self.fillFar()
        self.table.seen(nid(1, 1, 50), self.addr())
        self.table.failed(ids[2])
        self.assertIn(ids[2], self.table)
        self.table.failed(ids[2])
        self.assertNotIn(ids[2], self.table)
        self.assertIn(nid(1, 1, 50), self.table)

    def test_subnetLimits(self):
        same = ("198.18.7.1", 1), ("198.18.7.2", 1), ("198.18.7.3", 1), ("198.18.7.4", 1)
        results = [self.table.seen(nid(8, 0x80 + i), a) for i, a in enumerate(same)]
        self.assertEqual(results, [True, True, False, False])  # 2 per /24 per bucket
        # the table-wide limit (3) holds across buckets too
        self.table.seen(nid(1, 0, 5), ("198.18.100.1", 1))
        for i in range(6):
            self.table.seen(nid(3, 0, i + 1), self.addr())
        self.table.seen(nid(3, 1, 1), ("198.18.7.9", 1))
        self.assertLessEqual(sum(1 for c in self.table.contacts() if subnetOf(c.address) == "198.18.7"), 3)
        v6 = [("2001:db8:1:1::1", 1), ("2001:db8:1:2::1", 1), ("2001:db8:1:3::1", 1)]
        table = RoutingTable(self.own, self.clock, self.ping, k=4)
        self.assertEqual([table.seen(nid(8, 0x80 + i), a) for i, a in enumerate(v6)], [True, True, False])

    def test_loopbackExemptOnlyByOption(self):
        # by default 127/8 is one more network under the same limits
        results = [self.table.seen(nid(8, 0x80 + i), ("127.0.0.1", 1000 + i)) for i in range(4)]
        self.assertEqual(results, [True, True, False, False])
        # a local test network says so explicitly
        table = RoutingTable(self.own, self.clock, self.ping, k=4, perBucketSubnet=2, perTableSubnet=3,
                             exemptLoopback=True)
        for i in range(4):
            self.assertTrue(table.seen(nid(8, 0x80 + i), ("127.0.0.1", 1000 + i)))
        self.assertIsNone(subnetOf(("::1", 1), exemptLoopback=True))
        self.assertEqual(subnetOf(("127.3.0.1", 1)), "127.3.0")

    def test_unprovenNeverAdds(self):
        self.assertFalse(self.table.seen(nid(8, 0x80), self.addr(), verified=False))
        self.assertEqual(len(self.table), 0)

    def test_moveOnlyWhenTheOldAddressIsSilent(self):
        x = nid(8, 0x81)
        self.table.seen(x, ("198.18.50.1", 1))
        self.assertFalse(self.table.seen(x, ("198.18.51.1", 1)))  # proven elsewhere: the old one is asked
        contact, d = self.ping.calls[-1]
        self.assertEqual(contact.address, ("198.18.50.1", 1))
        d.callback(None)  # still there: it stays
        self.assertEqual(self.table.get(x).address, ("198.18.50.1", 1))
        self.table.seen(x, ("198.18.51.1", 1))
        self.ping.calls[-1][1].errback(Exception("timeout"))  # gone: now it moves
        self.assertEqual(self.table.get(x).address, ("198.18.51.1", 1))
        self.assertEqual(self.table.moves, 1)

    def test_closest(self):
        ids = [nid(8, i) for i in range(1, 40)]
        table = RoutingTable(self.own, self.clock, self.ping, k=20, perTableSubnet=100, perBucketSubnet=100)
        for i in ids:
            table.seen(i, ("127.0.0.1", 1))
        target = nid(8, 17)
        got = [c.nodeId for c in table.closest(target, 5)]
        self.assertEqual(got, sorted(got, key=lambda x: int.from_bytes(x, "big") ^ int.from_bytes(target, "big")))
        self.assertEqual(got[0], target)
        self.assertNotIn(target, [c.nodeId for c in table.closest(target, 5, exclude=target)])

    def test_closestMatchesBruteForce(self):
        from hypothesis import given, settings
        from hypothesis import strategies as st

        @settings(max_examples=100, deadline=None)
        @given(st.lists(st.binary(min_size=32, max_size=32), max_size=120, unique=True),
               st.binary(min_size=32, max_size=32), st.integers(1, 25), st.booleans())
        def check(ids, target, count, excludeOne):
            table = RoutingTable(self.own, self.clock, self.ping, k=20, perTableSubnet=999, perBucketSubnet=999)
            for i in ids:
                table.seen(i, ("198.18.0.1", 1))
            exclude = table.contacts()[0].nodeId if excludeOne and len(table) else None
            t = int.from_bytes(target, "big")
            expected = sorted((c for c in table.contacts() if c.nodeId != exclude), key=lambda c: c.idInt ^ t)[:count]
            self.assertEqual(table.closest(target, count, exclude), expected)

        check()

    def test_staleBuckets(self):
        self.fillFar()
        self.assertEqual(self.table.staleBuckets(3600), [])
        self.clock.advance(3601)
        stale = self.table.staleBuckets(3600)
        self.assertEqual(len(stale), 2)
        self.table.touch(stale[0])
        self.assertEqual(len(self.table.staleBuckets(3600)), 1)
        for target in stale:
            b = self.table.bucketFor(int.from_bytes(target, "big"))
            self.assertTrue(b.covers(int.from_bytes(target, "big")))
