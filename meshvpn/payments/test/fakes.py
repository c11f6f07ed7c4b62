"""Small fakes shared by the payments tests: an in-memory DHT and a shared RSA key.

The fake DHT keeps verified records by key (highest sequence number wins,
shared keys keep one record per publisher), as the real one answers.
"""

from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet import defer

from meshvpn.dht.records import SHARED, verifyRecord
from meshvpn.errors import DHTError

_KEYS = []


def rsaKey(i=0):
    """The i-th of a few 2048-bit keys made once per test run (generation is slow)."""
    while len(_KEYS) <= i:
        _KEYS.append(rsa.generate_private_key(65537, 2048))
    return _KEYS[i]


class KeyPool:
    """A C{generate} for IssuerKeyStore handing out the shared keys in turn."""

    def __init__(self, start=0):
        self.next = start

    def __call__(self):
        key = rsaKey(self.next % 6)
        self.next += 1
        return key


class FakeDHT:
    def __init__(self, clock, fail=False):
        self.clock = clock
        self.fail = fail
        self.records = {}  # key -> {publisherId: record}
        self.puts = 0

    def put(self, record, republish=False):
        if self.fail:
            return defer.fail(DHTError("no node stored the record"))
        verifyRecord(record, self.clock.seconds())
        self.puts += 1
        byPublisher = self.records.setdefault(record.key, {})
        old = byPublisher.get(record.publisherId)
        if old is None or old.seq < record.seq:
            byPublisher[record.publisherId] = record
        return defer.succeed(1)

    def _live(self, key):
        now = self.clock.seconds()
        return [r for r in self.records.get(key, {}).values() if r.expires > now]

    def get(self, key):
        return defer.succeed(max(self._live(key), key=lambda r: r.seq, default=None))

    def getAll(self, key, want):
        return defer.succeed([r for r in self._live(key) if r.kind == SHARED][:want])
