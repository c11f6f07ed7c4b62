"""The decentralized relay directory: signed relay descriptors stored in the DHT.

A relay publishes its descriptor as an owned record under
C{ownedKey(nodeId, b"relay-descriptor")} (so anyone who knows a node id can
fetch it, and only that node can write it), and announces the same
descriptor once per role, as an owned record under
C{ownedKey(nodeId, b"meshvpn-role:" + role)}.  Every key has exactly one
writer, so no one can crowd others out of a role; and the announcements of
a role lie spread over the whole keyspace, at places fixed by the relays'
own ids, so there is no spot an attacker can surround to own a role.

A client samples a role by region (L{RelayDirectory.sample}): it picks a
random point, finds the k nodes closest to it over disjoint lookup paths,
asks each for the role's announcements near that point, and keeps only the
verified ones inside the radius those nodes cover.  A hostile storer can
withhold (another storer there still answers) but not add from elsewhere; a
random point cannot be prepared for.  Before a client trusts the list it
cross-checks every relay: the descriptor's own signature, id, role and
expiry; at most one relay per host (address); and a signed answer from the
relay's key at the address its descriptor gives.  No central list exists.
"""

import random

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from meshvpn.descriptor import FLAGS, DescriptorError, encodeDescriptor, parseDescriptor
from meshvpn.dht.records import OWNED, makeRecord, ownedKey
from meshvpn.dht.routing import hostOf
from meshvpn.errors import DHTError
from meshvpn.interfaces import IRelayDirectory

DESCRIPTOR_SALT = b"relay-descriptor"
ROLE_PREFIX = b"meshvpn-role:"
_ROLE_SALTS = {ROLE_PREFIX + r.encode("ascii") for r in FLAGS}


def descriptorKey(nodeId):
    return ownedKey(nodeId, DESCRIPTOR_SALT)


def roleSalt(role):
    return ROLE_PREFIX + role.encode("ascii")


def roleKey(nodeId, role):
    """Where relay C{nodeId} announces C{role}: a key only it can write."""
    return ownedKey(nodeId, roleSalt(role))


def admitRecord(record):
    """
    The record store's policy for the directory's salts: a descriptor or
    role announcement must be an owned record (one writer per key), for a
    known role.  Other salts are the DHT's general business.
    """
    salt = record.salt
    if salt == DESCRIPTOR_SALT:
        return record.kind == OWNED
    if salt.startswith(ROLE_PREFIX):
        return record.kind == OWNED and salt in _ROLE_SALTS
    return True


def _hostPort(text):
    host, _, port = text.rpartition(":")
    return host.strip("[]"), port


@implementer(IRelayDirectory)
class RelayDirectory:
    """
    @param dht: a L{meshvpn.dht.rpc.DHTNode}.
    @param identity: this node's identity, used to sign what it publishes.
    @param maxRounds: region samples per call of L{sample} at most.
    @param checkLive: cross-check each sampled relay with a signed ping at
        its descriptor's UDP address.
    """

    log = Logger()

    def __init__(self, dht, identity, rng=random, maxRounds=8, checkLive=True):
        self.dht = dht
        self.identity = identity
        self.rng = rng
        self.maxRounds = maxRounds
        self.checkLive = checkLive
        self._lastSeq = 0
        self.rejected = 0
        self.lastSample = {}

    def _nextSeq(self):
        # Milliseconds since the epoch: grows across restarts without saved state.
        self._lastSeq = max(self._lastSeq + 1, int(self.dht.clock.seconds() * 1000))
        return self._lastSeq

    def records(self, descriptor):
        """The signed records that publish C{descriptor}: its own, then one per role."""
        raw = encodeDescriptor(descriptor)
        seq = self._nextSeq()
        records = [makeRecord(self.identity, DESCRIPTOR_SALT, raw, seq, descriptor.expires)]
        for role in sorted(descriptor.flags):
            records.append(makeRecord(self.identity, roleSalt(role), raw, seq, descriptor.expires))
        return records

    @defer.inlineCallbacks
    def publish(self, descriptor):
        records = self.records(descriptor)
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
        salt = roleSalt(role)
        found = {}
        rounds = idle = 0
        while len(found) < count and rounds < self.maxRounds and idle < 2:
            rounds += 1
            result = yield self.dht.sampleRegion(salt, self.rng.randbytes(32))
            new = 0
            for record in result.records:
                d = self._verify(record, role)
                if d is not None and (d.nodeId not in found or found[d.nodeId].published < d.published):
                    new += d.nodeId not in found
                    found[d.nodeId] = d
            idle = 0 if new else idle + 1
        candidates = self._onePerHost(found.values())
        if self.checkLive:
            candidates = yield self._live(candidates, count)
        self.lastSample = {"role": role, "rounds": rounds, "found": len(found), "kept": len(candidates)}
        return candidates[:count]

    def _onePerHost(self, descriptors):
        """Shuffled, at most one relay per host: a host minting identities is still one relay."""
        chosen = list(descriptors)
        self.rng.shuffle(chosen)
        exempt = self.dht.config.exemptLoopback
        hosts, out = set(), []
        for d in chosen:
            udp = d.address("udp")
            host = hostOf(_hostPort(udp), exempt) if udp else None
            if host is not None:
                if host in hosts:
                    continue
                hosts.add(host)
            out.append(d)
        return out

    @defer.inlineCallbacks
    def _live(self, descriptors, count):
        """Keep relays whose key answers, signed, at their descriptor's UDP address."""
        alive = []
        pending = list(descriptors)
        while pending and len(alive) < count:
            batch, pending = pending[: count - len(alive)], pending[count - len(alive) :]
            ds = []
            for d in batch:
                host, port = _hostPort(d.address("udp") or ":")
                try:
                    addr = (host, int(port))
                except ValueError:
                    ds.append(defer.fail(DHTError("no UDP address")))
                    continue
                ds.append(self.dht.ping(addr, expectedId=d.nodeId))
            results = yield defer.DeferredList(ds, consumeErrors=True)
            for (ok, _), d in zip(results, batch):
                if ok:
                    alive.append(d)
                else:
                    self.rejected += 1
        return alive
