"""What the payments plane publishes in the DHT, and how it is read back.

Why the DHT: there is no central directory, and every record there is
signed by its publisher's node key and stored under a key only that node
can write (L{meshvpn.dht.records}).  So an issuer's keys are "published,
signed by the issuer's node key" simply by being owned records of the
issuer's node, and an exit reading them knows they are the issuer's.  One
record per epoch key also means an issuer cannot quietly give each buyer a
key of their own to tag them: there is one record per epoch, everyone reads
the same one, and exits accept nothing else.

Three values, each a small binary layout parsed strictly:

- issuer info, owned by the issuer, salt C{meshvpn-issuer-v1}:
  C{"MVI1" | u32 epoch_length | u8 grace | u64 price | u16 confirmations
  | u8 len | api}: the epoch schedule, the price of one token in atomic
  units, the confirmations it waits for, and the HOST:PORT of its HTTP API;
- an issuer key, owned by the issuer, salt C{meshvpn-issuer-key-v1:} + u64
  epoch: C{"MVK1" | u64 epoch | u16 len | spki} (RFC 9578's key encoding);
- an exit's terms, shared under C{meshvpn-paid-exits-v1:} + issuer id (one
  record per exit, its publisher is the exit): C{"MVE1" | u64 bytes_per_token
  | u64 free_rate | u64 paid_rate}, rates in bytes/s, 0 = none for the free
  rate, 2**64-1 = unlimited.
"""

import struct

import attrs
from twisted.internet import defer

from meshvpn.dht.records import SHARED, makeRecord, ownedKey, sharedKey
from meshvpn.errors import DHTError
from meshvpn.payments import tokens
from meshvpn.payments.epochs import EpochSchedule
from meshvpn.payments.tokens import TokenFormatError

ISSUER_SALT = b"meshvpn-issuer-v1"
KEY_SALT = b"meshvpn-issuer-key-v1:"
EXITS_SALT = b"meshvpn-paid-exits-v1:"
UNLIMITED = 2**64 - 1
MAX_API = 128


class PaymentRecordError(TokenFormatError):
    """A payments record in the DHT is malformed."""


def keySalt(epoch):
    return KEY_SALT + struct.pack("!Q", epoch)


def exitsSalt(issuerId):
    return EXITS_SALT + issuerId


@attrs.frozen
class IssuerInfo:
    schedule: EpochSchedule
    price: int  # atomic units per token
    confirmations: int
    api: str  # HOST:PORT of the issuer's HTTP API

    def encode(self):
        api = self.api.encode("ascii")
        if len(api) > MAX_API:
            raise PaymentRecordError("issuer API address too long")
        return (
            b"MVI1" + struct.pack("!IBQH", self.schedule.length, self.schedule.grace, self.price, self.confirmations)
            + bytes([len(api)]) + api
        )

    @classmethod
    def decode(cls, data):
        data = bytes(data)
        if len(data) < 20 or data[:4] != b"MVI1":
            raise PaymentRecordError("not an issuer info record")
        length, grace, price, confirmations = struct.unpack_from("!IBQH", data, 4)
        n = data[19]
        api = data[20:20 + n]
        if len(api) != n or 20 + n != len(data):
            raise PaymentRecordError("issuer info length does not match")
        try:
            schedule = EpochSchedule(length, grace)
            text = api.decode("ascii")
        except (ValueError, UnicodeDecodeError) as e:
            raise PaymentRecordError(f"issuer info: {e}") from None
        if not text.isprintable() or " " in text:
            raise PaymentRecordError("issuer info: bad API address")
        return cls(schedule, price, confirmations, text)


@attrs.frozen
class IssuerKeyRecord:
    epoch: int
    spki: bytes

    @property
    def tokenKeyId(self):
        return tokens.tokenKeyId(self.spki)

    def encode(self):
        return b"MVK1" + struct.pack("!QH", self.epoch, len(self.spki)) + self.spki

    @classmethod
    def decode(cls, data):
        data = bytes(data)
        if len(data) < 14 or data[:4] != b"MVK1":
            raise PaymentRecordError("not an issuer key record")
        epoch, n = struct.unpack_from("!QH", data, 4)
        spki = data[14:]
        if len(spki) != n:
            raise PaymentRecordError("issuer key record length does not match")
        tokens.decodePublicKey(spki)  # raises TokenFormatError
        return cls(epoch, spki)


@attrs.frozen
class ExitTerms:
    bytesPerToken: int
    freeRate: int  # bytes/s without tokens; 0: none
    paidRate: int  # bytes/s with credit; UNLIMITED: no limit

    def encode(self):
        return b"MVE1" + struct.pack("!QQQ", self.bytesPerToken, self.freeRate, self.paidRate)

    @classmethod
    def decode(cls, data):
        data = bytes(data)
        if len(data) != 28 or data[:4] != b"MVE1":
            raise PaymentRecordError("not an exit terms record")
        terms = cls(*struct.unpack_from("!QQQ", data, 4))
        if terms.bytesPerToken < 1024:
            raise PaymentRecordError("exit terms: a token buys less than 1 KiB")
        return terms


@attrs.frozen
class KnownKey:
    """An issuer key as a verifier knows it (from the issuer's records)."""

    issuerId: bytes
    epoch: int
    publicKey: object
    spendableFrom: int
    spendableUntil: int

    def spendableAt(self, t):
        return self.spendableFrom <= t < self.spendableUntil


class PaymentRecords:
    """
    Publishing and reading the records above through a DHT node.

    @param dht: an L{meshvpn.interfaces.IDHT} with C{clock} (a DHTNode), or
        a callable returning it (a node's DHT exists once its service runs).
    @param identity: this node's identity, for what it publishes.
    """

    def __init__(self, dht, identity=None):
        self._dht = dht if callable(dht) else (lambda: dht)
        self.identity = identity
        self._lastSeq = 0

    @property
    def dht(self):
        return self._dht()

    def _seq(self):
        self._lastSeq = max(self._lastSeq + 1, int(self.dht.clock.seconds() * 1000))
        return self._lastSeq

    def _put(self, salt, value, expires, kind=0):
        record = makeRecord(self.identity, salt, value, self._seq(), int(expires), kind=kind)
        d = self.dht.put(record, republish=True)

        def stored(count):
            if not count:
                raise DHTError("no node stored the record")
            return count

        return d.addCallback(stored)

    def publishIssuer(self, info, keys, lifetime):
        """
        Publish C{info} and each L{IssuerKeyRecord} in C{keys}, each living
        C{lifetime} seconds (at most the DHT's limit); republish before then.

        @return: a Deferred firing when all were stored somewhere.
        """
        expires = self.dht.clock.seconds() + lifetime
        puts = [self._put(ISSUER_SALT, info.encode(), expires)]
        puts += [self._put(keySalt(k.epoch), k.encode(), expires) for k in keys]
        return defer.gatherResults(puts, consumeErrors=True)

    def publishExitTerms(self, issuerId, terms, lifetime):
        expires = self.dht.clock.seconds() + lifetime
        return self._put(exitsSalt(issuerId), terms.encode(), expires, kind=SHARED)

    @defer.inlineCallbacks
    def fetchIssuer(self, issuerId):
        """@return: (Deferred) the L{IssuerInfo} of C{issuerId}, or C{None}."""
        record = yield self.dht.get(ownedKey(issuerId, ISSUER_SALT))
        if record is None or record.publisherId != issuerId:
            return None
        try:
            return IssuerInfo.decode(record.value)
        except PaymentRecordError:
            return None

    @defer.inlineCallbacks
    def fetchKey(self, issuerId, epoch):
        """@return: (Deferred) the L{IssuerKeyRecord} of C{epoch}, or C{None}."""
        record = yield self.dht.get(ownedKey(issuerId, keySalt(epoch)))
        if record is None or record.publisherId != issuerId:
            return None
        try:
            key = IssuerKeyRecord.decode(record.value)
        except TokenFormatError:
            return None
        return key if key.epoch == epoch else None

    @defer.inlineCallbacks
    def fetchExits(self, issuerId, want=64):
        """@return: (Deferred) C{{exit node id: ExitTerms}} of exits accepting C{issuerId}."""
        records = yield self.dht.getAll(sharedKey(exitsSalt(issuerId)), want)
        found = {}
        for record in records:
            try:
                found[record.publisherId] = ExitTerms.decode(record.value)
            except PaymentRecordError:
                continue
        return found
