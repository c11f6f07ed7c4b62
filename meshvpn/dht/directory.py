"""The decentralized relay directory: signed relay descriptors stored in the DHT.

A relay publishes its descriptor as an owned record under
C{ownedKey(nodeId, b"relay-descriptor")} (so anyone who knows a node id can
fetch it, and only that node can write it), and announces the same
descriptor once per role as a shared record filed under its host:

    salt = b"meshvpn-role:" + role + b"@" + host        key = SHA-256(0x01 || salt)

where C{host} is the IP of the descriptor's UDP address.  A storing node
accepts such a record only if it names a known role, the descriptor inside
lists that host, was published by the record's publisher, has the role, and
the STORE itself came from that host (its address proved by a token):
nobody can announce at a host they do not speak from.  So every host has
one place per role in the keyspace, however many identities it mints, and
those places are spread by a hash nobody chooses.  (A local test network
with C{exemptLoopback} counts each loopback IP:port as a host.)

A client samples a role by region (L{RelayDirectory.sample}): it picks a
random point, finds the k nodes closest to it over disjoint lookup paths,
asks each for the role's announcements near that point (a SAMPLE: one
record per key, nearest first) and keeps those of the few keys nearest the
point, whoever returned them.  A hostile storer can withhold (another
storer there still answers) or add its friends from farther away (not the
nearest), but cannot bias which hosts are drawn.  Before a client trusts the
list it cross-checks every relay: the descriptor's own signature, id, role,
host and expiry; at most one relay per host; and a signed answer from the
relay's key at the address its descriptor gives.  No central list exists.
"""

import ipaddress
import random

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from meshvpn.dht.descriptor import FLAGS, DescriptorError, encodeDescriptor, parseDescriptor
from meshvpn.dht.records import OWNED, SHARED, makeRecord, ownedKey
from meshvpn.errors import DHTError
from meshvpn.interfaces import IRelayDirectory

DESCRIPTOR_SALT = b"relay-descriptor"
ROLE_PREFIX = b"meshvpn-role:"
_ROLES = {r.encode("ascii") for r in FLAGS}


def descriptorKey(nodeId):
    return ownedKey(nodeId, DESCRIPTOR_SALT)


def roleClass(role):
    """What a SAMPLE for C{role} asks: the salts of its announcements up to the C{@}."""
    return ROLE_PREFIX + role.encode("ascii")


def roleSalt(role, host):
    return roleClass(role) + b"@" + host.encode("ascii")


def parseAddress(text):
    """C{"ip:port"} or C{"[v6]:port"} -> C{(ip, port)}; C{None} if it is not one."""
    host, _, port = (text or "").rpartition(":")
    host = host.strip("[]")
    try:
        return str(ipaddress.ip_address(host)), int(port)
    except ValueError:
        return None


def udpAddress(descriptor, family=None):
    """
    The descriptor's UDP address in the IPv4 (C{family} 4) or IPv6 (6) DHT,
    as C{(ip, port)}; C{None} if it lists none.  A dual-stack relay lists
    one of each and is announced in each overlay under that family's host;
    C{family=None} takes the first listed (what a node that predates
    dual-stack reads, and, the list being sorted, the IPv4 one).
    """
    for transport, address in descriptor.addresses:
        if transport != "udp":
            continue
        parsed = parseAddress(address)
        if parsed is not None and (family is None or (6 if ":" in parsed[0] else 4) == family):
            return parsed
        if family is None:
            return None
    return None


def hostKey(address, exemptLoopback=False):
    """The host an address belongs to, as announcements are filed: its IP (IP:port on a local test network)."""
    host, port = address
    if exemptLoopback and ipaddress.ip_address(host).is_loopback:
        return f"{host}:{port}"
    return host


class DirectoryPolicy:
    """
    What a storing node checks before it files a record under one of the
    directory's salts (a L{meshvpn.dht.records.RecordStore} C{admit}).
    The descriptor's signature is left to readers; the record's signature
    (checked by the store) already binds it to the publisher.
    """

    def __init__(self, exemptLoopback=False, family=None):
        self.exemptLoopback = exemptLoopback
        self.family = family  # the overlay's address family (None: the descriptor's first UDP address)

    def __call__(self, record, origin):
        salt = record.salt
        if salt == DESCRIPTOR_SALT:
            return record.kind == OWNED
        if not salt.startswith(ROLE_PREFIX):
            return True
        role, at, host = salt[len(ROLE_PREFIX) :].partition(b"@")
        if record.kind != SHARED or not at or role not in _ROLES:
            return False
        try:
            d = parseDescriptor(record.value, verify=False)
        except DescriptorError:
            return False
        udp = udpAddress(d, self.family)
        if d.nodeId != record.publisherId or role.decode() not in d.flags or udp is None:
            return False
        if hostKey(udp, self.exemptLoopback).encode("ascii") != host:
            return False
        # only the host itself files its announcement (origin None: our own record)
        return origin is None or hostKey(origin, self.exemptLoopback).encode("ascii") == host

    @staticmethod
    def replicable(record):
        """Role announcements come only from their host: no one else can pass them on."""
        return not record.salt.startswith(ROLE_PREFIX)


@implementer(IRelayDirectory)
class RelayDirectory:
    """
    @param dht: a L{meshvpn.dht.rpc.DHTNode}.
    @param identity: this node's identity, used to sign what it publishes.
    @param maxRounds: region samples per call of L{sample} at most.
    @param checkLive: cross-check each sampled relay with a signed ping at
        its descriptor's UDP address.
    @param patience: stop after this many rounds in a row found no new host.
    """

    log = Logger()

    def __init__(self, dht, identity, rng=random, maxRounds=8, checkLive=True, patience=2, family=None):
        self.dht = dht
        self.family = family  # which of a dual-stack descriptor's UDP addresses counts in this overlay
        self.identity = identity
        self.rng = rng
        self.maxRounds = maxRounds
        self.patience = patience
        self.checkLive = checkLive
        self._lastSeq = 0
        self.rejected = 0
        self.lastSample = {}

    def _nextSeq(self):
        # Milliseconds since the epoch: grows across restarts without saved state.
        self._lastSeq = max(self._lastSeq + 1, int(self.dht.clock.seconds() * 1000))
        return self._lastSeq

    def records(self, descriptor):
        """The signed records that publish C{descriptor}: its own, then one per role, filed under its host."""
        raw = encodeDescriptor(descriptor)
        seq = self._nextSeq()
        records = [makeRecord(self.identity, DESCRIPTOR_SALT, raw, seq, descriptor.expires)]
        udp = udpAddress(descriptor, self.family)
        if udp is not None:
            host = hostKey(udp, self.dht.config.exemptLoopback)
            for role in sorted(descriptor.flags):
                records.append(makeRecord(self.identity, roleSalt(role, host), raw, seq, descriptor.expires,
                                          kind=SHARED))
        return records

    @defer.inlineCallbacks
    def publish(self, descriptor):
        records = self.records(descriptor)
        results = yield defer.DeferredList([self.dht.put(r, republish=True) for r in records], consumeErrors=True)
        if not results[0][0]:
            raise DHTError("no node stored our descriptor")
        # Samples find relays by their role records: a relay whose role
        # records went nowhere is as invisible as one with no descriptor.
        missing = [r.salt.partition(b"@")[0].decode("ascii", "replace") for (ok, _), r in zip(results[1:], records[1:])
                   if not ok]
        if missing:
            raise DHTError(f"no node stored our role records ({', '.join(missing)})")
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
        if role is not None:
            udp = udpAddress(d, self.family)
            if udp is None or record.salt != roleSalt(role, hostKey(udp, self.dht.config.exemptLoopback)):
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
        found = {}  # host -> descriptors announced there
        rounds = idle = 0
        while len(found) < count and rounds < self.maxRounds and idle < self.patience:
            rounds += 1
            result = yield self.dht.sampleRegion(roleClass(role), self.rng.randbytes(32))
            new = 0
            for record in result.records:
                d = self._verify(record, role)
                if d is None:
                    continue
                host = record.salt.rpartition(b"@")[2]
                byId = found.setdefault(host, {})
                new += not byId
                old = byId.get(d.nodeId)
                if old is None or old.published < d.published:
                    byId[d.nodeId] = d
            idle = 0 if new else idle + 1
        # one relay per host, drawn at random among the identities there
        hosts = []
        for byId in found.values():
            ids = sorted(byId.values(), key=lambda d: d.nodeId)
            self.rng.shuffle(ids)
            hosts.append(ids)
        self.rng.shuffle(hosts)
        if self.checkLive:
            candidates = yield self._live(hosts, count)
        else:
            candidates = [ids[0] for ids in hosts]
        self.lastSample = {"role": role, "rounds": rounds, "hosts": len(found), "kept": len(candidates)}
        return candidates[:count]

    @defer.inlineCallbacks
    def _live(self, hosts, count, tries=3):
        """
        One relay per host whose key answers, signed, at its descriptor's UDP
        address: C{hosts} is a list of candidate lists (one per host); a host
        whose candidate fails offers its next, C{tries} in all.
        """
        alive = []
        queue = [(ids, 0) for ids in hosts]
        while queue and len(alive) < count:
            batch, queue = queue[: count - len(alive)], queue[count - len(alive) :]
            ds = []
            for ids, i in batch:
                addr = udpAddress(ids[i], self.family)
                if addr is None:
                    ds.append(defer.fail(DHTError("no UDP address")))
                else:
                    ds.append(self.dht.ping(addr, expectedId=ids[i].nodeId))
            results = yield defer.DeferredList(ds, consumeErrors=True)
            for (ok, _), (ids, i) in zip(results, batch):
                if ok:
                    alive.append(ids[i])
                else:
                    self.rejected += 1
                    if i + 1 < min(len(ids), tries):
                        queue.append((ids, i + 1))
        return alive
