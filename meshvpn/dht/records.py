"""Signed, expiring DHT values (BEP 44 is the model) and the bounded store that keeps them.

A record names its publisher's Ed25519 key, a salt, a sequence number and an
expiry, and is signed by the publisher.  Its storage key is derived from
those fields, so nobody can put a value under a key they do not own:

  owned  (kind 0): key = SHA-256(0x00 || SHA-256(publisher key) || salt)
  shared (kind 1): key = SHA-256(0x01 || salt); many publishers, one record each

Storing nodes verify before storing and readers verify on read; a higher
sequence number replaces a lower one; expired records are dropped.  The byte
layout is in doc/protocol.md ("DHT records").
"""

import hashlib
import struct

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from meshvpn.dht import wire

OWNED, SHARED = 0, 1
MAX_SALT = 64
MAX_VALUE = 1024
MAX_TTL = 24 * 3600  # a record may not claim to live longer than this
SHARED_TTL = 3 * 3600  # the default descriptor lifetime: a shared record counts this long after its last STORE
MAX_SAMPLE = 16
SIG_DOMAIN = b"meshvpn-dht-record-v1\x00"
_FIXED = struct.Struct("!B32sB")
_SEQ_EXP_LEN = struct.Struct("!QQH")


class RecordError(ValueError):
    """A record is malformed or fails verification; the text says why."""


def sampleClass(salt):
    """The part of a salt a SAMPLE asks for: up to its last C{@}, or all of it."""
    cls, at, _ = salt.rpartition(b"@")
    return cls if at else salt


def ownedKey(publisherId, salt):
    return hashlib.sha256(b"\x00" + publisherId + salt).digest()


def sharedKey(salt):
    return hashlib.sha256(b"\x01" + salt).digest()


class Record:
    """One parsed record.  C{raw} is its exact encoding (what travels and is stored)."""

    __slots__ = ("kind", "publisherKey", "salt", "seq", "expires", "value", "signature", "raw", "key", "publisherId")

    def __init__(self, kind, publisherKey, salt, seq, expires, value, signature, raw):
        self.kind = kind
        self.publisherKey = publisherKey
        self.salt = salt
        self.seq = seq
        self.expires = expires
        self.value = value
        self.signature = signature
        self.raw = raw
        self.publisherId = hashlib.sha256(publisherKey).digest()
        self.key = ownedKey(self.publisherId, salt) if kind == OWNED else sharedKey(salt)

    def signedPart(self):
        return self.raw[:-64]

    def __repr__(self):
        return f"<Record key={self.key.hex()[:12]} seq={self.seq}>"


def _encodeUnsigned(kind, publisherKey, salt, seq, expires, value):
    if kind not in (OWNED, SHARED):
        raise RecordError(f"unknown record kind {kind}")
    if len(publisherKey) != 32:
        raise RecordError("publisher key must be 32 bytes")
    if len(salt) > MAX_SALT:
        raise RecordError(f"salt longer than {MAX_SALT} bytes")
    if len(value) > MAX_VALUE:
        raise RecordError(f"value longer than {MAX_VALUE} bytes")
    if not (0 <= seq < 2**64 and 0 <= expires < 2**64):
        raise RecordError("seq and expires must fit in 64 bits")
    return _FIXED.pack(kind, publisherKey, len(salt)) + salt + _SEQ_EXP_LEN.pack(seq, expires, len(value)) + value


def makeRecord(identity, salt, value, seq, expires, kind=OWNED):
    """
    Sign a record with C{identity} (an L{meshvpn.interfaces.INodeIdentity}).

    @param expires: absolute expiry, integer Unix seconds.
    @return: a L{Record}.
    """
    body = _encodeUnsigned(kind, identity.identityPublicKey, salt, seq, int(expires), value)
    sig = identity.sign(SIG_DOMAIN + body)
    return parseRecord(body + sig)


def parseRecord(raw):
    """
    Parse the structure of a record (not its signature: see L{verifyRecord}).

    @raise RecordError: malformed or trailing bytes.
    """
    n = len(raw)
    if n < _FIXED.size + _SEQ_EXP_LEN.size + 64:
        raise RecordError("record too short")
    kind, publisherKey, saltLen = _FIXED.unpack_from(raw)
    if kind not in (OWNED, SHARED):
        raise RecordError(f"unknown record kind {kind}")
    if saltLen > MAX_SALT:
        raise RecordError(f"salt longer than {MAX_SALT} bytes")
    off = _FIXED.size
    salt = raw[off : off + saltLen]
    off += saltLen
    if off + _SEQ_EXP_LEN.size > n:
        raise RecordError("record truncated")
    seq, expires, valueLen = _SEQ_EXP_LEN.unpack_from(raw, off)
    off += _SEQ_EXP_LEN.size
    if valueLen > MAX_VALUE:
        raise RecordError(f"value longer than {MAX_VALUE} bytes")
    value = raw[off : off + valueLen]
    off += valueLen
    if off + 64 != n:
        raise RecordError("record length does not match its fields")
    return Record(kind, publisherKey, salt, seq, expires, value, raw[off:], bytes(raw))


def verifyRecord(record, now, key=None):
    """
    Check the signature, the expiry window and (if given) the key the record
    was asked for or stored under.

    @raise RecordError: with L{wire} result code in C{.args[1]}.
    """
    if key is not None and record.key != key:
        raise RecordError("record does not belong to the requested key", wire.BAD_RECORD)
    if record.expires <= now:
        raise RecordError("record expired", wire.EXPIRED)
    if record.expires > now + MAX_TTL:
        raise RecordError("record expiry too far in the future", wire.EXPIRED)
    try:
        VerifyKey(record.publisherKey).verify(SIG_DOMAIN + record.signedPart(), record.signature)
    except (BadSignatureError, ValueError, TypeError):
        raise RecordError("bad record signature", wire.BAD_RECORD) from None


class _Entry:
    __slots__ = ("record", "storedAt", "source", "until")

    def __init__(self, record, storedAt, source, sharedTTL):
        self.record = record
        self.source = source
        self.refresh(storedAt, sharedTTL)

    def refresh(self, now, sharedTTL):
        self.storedAt = now
        r = self.record
        # A shared record counts only as long as an honest descriptor lives
        # after its last STORE: claiming a longer expiry buys nothing.
        self.until = r.expires if r.kind == OWNED else min(r.expires, now + sharedTTL)


class RecordStore:
    """
    Bounded storage of verified records: C{key -> publisherId -> entry}.

    Incumbents are favoured and nobody can lock others out:
      - a shared record counts as live for at most C{sharedTTL} (the default
        descriptor lifetime) after its last STORE, whatever expiry it claims;
      - a full shared key, or a full store, admits a newcomer only by
        evicting the newest record of the *source* (the /24 or /48 a STORE
        came from, as proved by its address token) holding the most, and
        only if that source holds more than the newcomer's does: free keys
        from a few networks fill at most their fair share, and a new relay
        from anywhere else always gets in;
      - at most C{maxPerPublisher} records of one publisher key;
      - C{admit(record, origin)} may refuse records by what their salt
        means to the caller (the relay directory: a role announcement must
        be STOREd from the host it announces); C{origin} is the address the
        STORE came from (C{None}: our own).
    Records are also indexed by I{sample class} (the salt up to its last
    C{@}, or the whole salt) for SAMPLE: the records of a class nearest to a
    point, one per key.
    """

    def __init__(self, maxRecords=20000, maxPerKey=64, maxPerPublisher=512, admit=None, sharedTTL=SHARED_TTL):
        self.maxRecords = maxRecords
        self.maxPerKey = maxPerKey
        self.maxPerPublisher = maxPerPublisher
        self.admit = admit
        self.sharedTTL = sharedTTL
        self._byKey = {}
        self._bySource = {}  # source -> {(key, publisherId): None}, oldest first
        self._byPublisher = {}  # publisherId -> count
        self._byClass = {}  # sample class -> {key: None} (for SAMPLE)
        self.count = 0
        self.evicted = 0

    def store(self, record, now, source=None, origin=None):
        """
        Verify and store C{record}, which arrived from C{source} (a subnet
        label, C{None} when unknown: all unknown sources count as one) at
        address C{origin}.

        @return: a L{wire} result code (L{wire.STORED} on success).
        """
        slot = self._byKey.get(record.key)
        old = slot.get(record.publisherId) if slot else None
        if old is not None:
            if record.raw == old.record.raw:
                # The same bytes were verified when first stored; only freshness changes.
                if old.record.expires <= now:
                    return wire.EXPIRED
                old.refresh(now, self.sharedTTL)
                return wire.STORED
            if record.seq <= old.record.seq:
                return wire.STALE
        if self.admit is not None and not self.admit(record, origin):
            return wire.BAD_RECORD
        try:
            verifyRecord(record, now)
        except RecordError as e:
            return e.args[1]
        if old is not None:
            # a newer version from the same publisher takes the same place
            self._remove(record.key, record.publisherId)
            self._insert(record, now, source)
            return wire.STORED
        if self._byPublisher.get(record.publisherId, 0) >= self.maxPerPublisher:
            return wire.FULL
        if slot and len(slot) >= self.maxPerKey:
            if not self._evictFairly({(record.key, p): e.source for p, e in slot.items()}, source):
                return wire.FULL
        if self.count >= self.maxRecords:
            if not self._evictFairly(None, source):
                return wire.FULL
        self._insert(record, now, source)
        return wire.STORED

    def _evictFairly(self, among, source):
        """
        Evict the newest record of the source holding the most (of C{among},
        C{{(key, pid): source}}, or of the whole store), if it holds more
        than C{source} plus one.  @return: C{True} if a record was evicted.
        """
        if among is None:
            counts = {s: len(entries) for s, entries in self._bySource.items()}
        else:
            counts = {}
            for s in among.values():
                counts[s] = counts.get(s, 0) + 1
        if not counts:
            return False
        biggest = max(counts, key=counts.get)
        if counts[biggest] <= counts.get(source, 0) + 1:
            return False
        for entry in reversed(self._bySource[biggest]):
            if among is None or entry in among:
                self._remove(*entry)
                self.evicted += 1
                return True
        return False

    def _insert(self, record, now, source):
        slot = self._byKey.setdefault(record.key, {})
        slot[record.publisherId] = _Entry(record, now, source, self.sharedTTL)
        self._bySource.setdefault(source, {})[(record.key, record.publisherId)] = None
        self._byPublisher[record.publisherId] = self._byPublisher.get(record.publisherId, 0) + 1
        keys = self._byClass.setdefault(sampleClass(record.salt), {})
        keys[record.key] = keys.get(record.key, 0) + 1
        self.count += 1

    def _remove(self, key, publisherId):
        slot = self._byKey[key]
        entry = slot.pop(publisherId)
        if not slot:
            del self._byKey[key]
        entries = self._bySource[entry.source]
        del entries[(key, publisherId)]
        if not entries:
            del self._bySource[entry.source]
        left = self._byPublisher[publisherId] - 1
        if left:
            self._byPublisher[publisherId] = left
        else:
            del self._byPublisher[publisherId]
        cls = sampleClass(entry.record.salt)
        keys = self._byClass[cls]
        if keys[key] > 1:
            keys[key] -= 1
        else:
            del keys[key]
            if not keys:
                del self._byClass[cls]
        self.count -= 1

    def get(self, key, now):
        """@return: the live records under C{key} (a list, possibly empty)."""
        slot = self._byKey.get(key)
        if not slot:
            return []
        return [e.record for e in slot.values() if e.until > now]

    def sample(self, cls, target, now, limit=MAX_SAMPLE):
        """
        @return: up to C{limit} live records of sample class C{cls} under
            the keys closest to C{target} (XOR), closest first, one per key
            (of several publishers under a key, the one a hash of C{target}
            picks: another point, maybe another one): what a SAMPLE asks.
        """
        keys = self._byClass.get(cls)
        if not keys:
            return []
        t = int.from_bytes(target, "big")
        out = []
        for key in sorted(keys, key=lambda k: int.from_bytes(k, "big") ^ t):
            live = [e.record for e in self._byKey[key].values() if e.until > now]
            if live:
                out.append(min(live, key=lambda r: hashlib.blake2b(target + r.publisherId, digest_size=8).digest()))
                if len(out) >= limit:
                    break
        return out

    def expire(self, now):
        """Drop every expired record.  @return: how many were dropped."""
        dead = [(key, pid) for key, slot in self._byKey.items() for pid, e in slot.items() if e.until <= now]
        for key, pid in dead:
            self._remove(key, pid)
        return len(dead)

    def replicable(self, record):
        """@return: C{False} if the admission policy lets only the publisher's host store C{record}."""
        check = getattr(self.admit, "replicable", None)
        return check is None or check(record)

    def dueForReplication(self, now, interval, budget):
        """
        Pick what to push to the k closest nodes this round: the keys with
        live records nobody refreshed by a STORE for C{interval}, at most
        C{budget} keys, taken in turn from each source that stored them.

        Replication is work a stranger's one STORE makes us (and k others)
        repeat every interval: a source flooding free keys gets its turn
        like any other source, never the whole budget.

        @return: C{[(key, [record, ...]), ...]}, and how many due keys were
            left for a later round.
        """
        perSource = {}
        for key, slot in self._byKey.items():
            for entry in slot.values():
                if now - entry.storedAt < interval or entry.until <= now:
                    continue
                if not self.replicable(entry.record):
                    continue
                perSource.setdefault(entry.source, {}).setdefault(key, []).append(entry.record)
        queues = [iter(keys.items()) for _, keys in sorted(perSource.items(), key=lambda item: str(item[0]))]
        chosen, seen = {}, set()
        while queues and len(chosen) < budget:
            left = []
            for queue in queues:
                item = next(queue, None)
                if item is None:
                    continue
                left.append(queue)
                key, records = item
                chosen.setdefault(key, []).extend(records)
                seen.add(key)
                if len(chosen) >= budget:
                    break
            queues = left
        due = {key for keys in perSource.values() for key in keys}
        return list(chosen.items()), len(due - seen)

    def items(self):
        """@return: a list of C{(record, storedAt)} for every stored record."""
        return [(e.record, e.storedAt) for slot in self._byKey.values() for e in slot.values()]

    def keys(self):
        return list(self._byKey)
