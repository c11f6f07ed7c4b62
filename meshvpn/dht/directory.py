"""The decentralized relay directory: signed relay descriptors stored in the DHT.

A relay publishes its descriptor as an owned record under
C{ownedKey(nodeId, b"relay-descriptor")} (so anyone who knows a node id can
fetch it, and only that node can write it), and announces the same
descriptor under the shared key of each of its roles.  A role's announcements
are spread over L{ROLE_SHARDS} keys (by the relay's id), so no single set of
storing nodes carries a whole role and a client samples relays of a role by
asking every shard.  No central list exists.

Every descriptor read is checked twice: the record signature (by the DHT) and
the descriptor's own signature, id and expiry (here); the descriptor's node
id must be the record publisher's.
"""

import random

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from meshvpn.dht.descriptor import FLAGS, DescriptorError, encodeDescriptor, parseDescriptor
from meshvpn.dht.records import SHARED, makeRecord, ownedKey, sharedKey
from meshvpn.errors import DHTError
from meshvpn.interfaces import IRelayDirectory

DESCRIPTOR_SALT = b"relay-descriptor"
ROLE_SHARDS = 8


def descriptorKey(nodeId):
    return ownedKey(nodeId, DESCRIPTOR_SALT)


def roleSalt(role, shard):
    return b"meshvpn-role:" + role.encode("ascii") + b":" + bytes([shard])


def roleKey(role, shard):
    return sharedKey(roleSalt(role, shard))


def shardOf(nodeId):
    return nodeId[0] % ROLE_SHARDS


@implementer(IRelayDirectory)
class RelayDirectory:
    """
    @param dht: a L{meshvpn.dht.rpc.DHTNode}.
    @param identity: this node's identity, used to sign what it publishes.
    """

    log = Logger()

    def __init__(self, dht, identity, rng=random):
        self.dht = dht
        self.identity = identity
        self.rng = rng
        self._lastSeq = 0
        self.rejected = 0

    def _nextSeq(self):
        # Milliseconds since the epoch: grows across restarts without saved state.
        self._lastSeq = max(self._lastSeq + 1, int(self.dht.clock.seconds() * 1000))
        return self._lastSeq

    @defer.inlineCallbacks
    def publish(self, descriptor):
        raw = encodeDescriptor(descriptor)
        seq = self._nextSeq()
        records = [makeRecord(self.identity, DESCRIPTOR_SALT, raw, seq, descriptor.expires)]
        for role in sorted(descriptor.flags):
            salt = roleSalt(role, shardOf(descriptor.nodeId))
            records.append(makeRecord(self.identity, salt, raw, seq, descriptor.expires, kind=SHARED))
        results = yield defer.DeferredList([self.dht.put(r, republish=True) for r in records], consumeErrors=True)
        if not results[0][0]:
            raise DHTError("no node stored our descriptor")
        return None

    def _verify(self, record, role=None):
        try:
            d = parseDescriptor(record.value, now=self.dht.clock.seconds())
        except DescriptorError:
            self.rejected += 1
            return None
        if d.nodeId != record.publisherId or (role is not None and role not in d.flags):
            self.rejected += 1
            return None
        return d

    def lookup(self, nodeId):
        d = self.dht.get(descriptorKey(nodeId))
        return d.addCallback(lambda record: None if record is None else self._verify(record))

    @defer.inlineCallbacks
    def sample(self, role, count):
        if role not in FLAGS:
            raise ValueError(f"unknown role {role!r}")
        shards = list(range(ROLE_SHARDS))
        results = yield defer.DeferredList(
            [self.dht.getAll(roleKey(role, s), count) for s in shards], consumeErrors=True
        )
        found = {}
        for ok, records in results:
            if not ok:
                continue
            for record in records:
                d = self._verify(record, role)
                if d is not None and (d.nodeId not in found or found[d.nodeId].published < d.published):
                    found[d.nodeId] = d
        chosen = list(found.values())
        self.rng.shuffle(chosen)
        return chosen[:count]
