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
SIG_DOMAIN = b"meshvpn-dht-record-v1\x00"
_FIXED = struct.Struct("!B32sB")
_SEQ_EXP_LEN = struct.Struct("!QQH")


class RecordError(ValueError):
    """A record is malformed or fails verification; the text says why."""


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


class RecordStore:
    """
    Bounded storage of verified records: C{key -> publisherId -> (record, storedAt)}.

    Caps: C{maxRecords} in total and C{maxPerKey} publishers per shared key
    (when a key is full, the record expiring soonest gives way only to one
    that expires later).
    """

    def __init__(self, maxRecords=20000, maxPerKey=64):
        self.maxRecords = maxRecords
        self.maxPerKey = maxPerKey
        self._byKey = {}
        self.count = 0

    def store(self, record, now):
        """
        Verify and store C{record}.

        @return: a L{wire} result code (L{wire.STORED} on success).
        """
        slot = self._byKey.get(record.key)
        old = slot.get(record.publisherId) if slot else None
        if old is not None:
            oldRecord = old[0]
            if record.raw == oldRecord.raw:
                # The same bytes were verified when first stored; only freshness changes.
                if oldRecord.expires <= now:
                    return wire.EXPIRED
                slot[record.publisherId] = (oldRecord, now)
                return wire.STORED
            if record.seq <= oldRecord.seq:
                return wire.STALE
        try:
            verifyRecord(record, now)
        except RecordError as e:
            return e.args[1]
        if slot is None:
            if self.count >= self.maxRecords:
                return wire.FULL
            slot = self._byKey[record.key] = {}
        if old is None:
            if len(slot) >= self.maxPerKey:
                victimId = min(slot, key=lambda p: slot[p][0].expires)
                if slot[victimId][0].expires >= record.expires:
                    return wire.FULL
                del slot[victimId]
                self.count -= 1
            if self.count >= self.maxRecords:
                return wire.FULL
            self.count += 1
        slot[record.publisherId] = (record, now)
        return wire.STORED

    def get(self, key, now):
        """@return: the unexpired records under C{key} (a list, possibly empty)."""
        slot = self._byKey.get(key)
        if not slot:
            return []
        return [r for r, _ in slot.values() if r.expires > now]

    def expire(self, now):
        """Drop every expired record.  @return: how many were dropped."""
        dropped = 0
        for key in list(self._byKey):
            slot = self._byKey[key]
            for pid in [p for p, (r, _) in slot.items() if r.expires <= now]:
                del slot[pid]
                dropped += 1
            if not slot:
                del self._byKey[key]
        self.count -= dropped
        return dropped

    def items(self):
        """@return: a list of C{(record, storedAt)} for every stored record."""
        return [entry for slot in self._byKey.values() for entry in slot.values()]

    def keys(self):
        return list(self._byKey)
