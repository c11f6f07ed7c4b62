"""The Kademlia routing table: k-buckets over the 256-bit XOR keyspace.

As in the Kademlia paper: a full bucket splits only when it covers our own id;
otherwise the newcomer waits in the bucket's bounded replacement cache while
the least-recently-seen contact is pinged, and is promoted only if that ping
fails (old, proven-stable contacts are kept: a flood of new ids cannot push
them out).  Buckets idle for an hour are refreshed by a lookup of a random id
in their range (the caller runs it: see L{RoutingTable.staleBuckets}).

Only proven contacts get in: C{seen(..., verified=True)} is called by the RPC
layer for an answer signed by the key whose hash is the id, at the address it
came from, with valid proof of work (L{meshvpn.dht.pow}).  Anything else only
refreshes an entry already at that address.  A proven answer from a new
address does not move an entry either: the old address is asked first
(signed ping), and the entry moves only if the old one has stopped answering.

Sybil limits, on every path that adds or moves an entry: at most
C{perBucketSubnet} contacts of one /24 (IPv4) or /48 (IPv6) per bucket and
C{perTableSubnet} in the whole table, so one host or one small network cannot
fill the table.  Loopback addresses are no exception unless the table is made
with C{exemptLoopback} (an explicit option for local test networks, where every
node is a process on one host).
"""

import bisect
import ipaddress
import random
from collections import OrderedDict

from meshvpn.dht import K

ID_BITS = 256
MAX_FAILURES = 2  # replace after this many unanswered RPCs in a row (if a replacement waits)
DROP_FAILURES = 5  # drop even without a replacement


class Contact:
    """A node we know: its id (bytes and int), UDP address, key and proof of work."""

    __slots__ = ("nodeId", "idInt", "_address", "subnet", "lastSeen", "failures", "key", "work", "provenAt", "moveTo",
                 "_peer")

    def __init__(self, nodeId, address, lastSeen=0.0, key=None, work=None):
        self.nodeId = nodeId
        self.idInt = int.from_bytes(nodeId, "big")
        self.address = address
        self.lastSeen = lastSeen
        self.failures = 0
        self.key = key
        self.work = work
        self.provenAt = lastSeen
        self.moveTo = None  # a proven new address, waiting for the old one to fail

    @property
    def address(self):
        return self._address

    @address.setter
    def address(self, address):
        self._address = address
        self.subnet = {}  # per exemptLoopback setting, filled by RoutingTable._net
        self._peer = None

    def peer(self):
        """This contact as it travels in NODES (a L{meshvpn.dht.wire.Peer}), made once."""
        if self._peer is None:
            from meshvpn.dht.wire import Peer

            self._peer = Peer(self.nodeId, self._address, self.key, self.work)
        return self._peer

    def __repr__(self):
        return f"<Contact {self.nodeId.hex()[:12]} {self.address[0]}:{self.address[1]}>"


def subnetOf(address, exemptLoopback=False):
    """
    @param exemptLoopback: loopback addresses belong to no group (a local
        test network: every node is a process on one host).
    @return: the Sybil-limit group of an address: its /24 (IPv4) or /48
        (IPv6) as a string, or C{None} for exempt addresses.
    """
    host = address[0]
    if ":" in host:
        ip = ipaddress.IPv6Address(host)
        if ip.is_loopback:
            return None if exemptLoopback else "6:loopback"
        if ip.ipv4_mapped:
            return subnetOf((str(ip.ipv4_mapped), 0), exemptLoopback)
        return "6:" + ip.exploded[:14]
    if exemptLoopback and host.startswith("127."):
        return None
    return host.rsplit(".", 1)[0]


def hostOf(address, exemptLoopback=False):
    """
    @return: the one-per-host group of an address (its IP), or C{None} for
        an exempt loopback address (each such node counts as its own host).
    """
    host = address[0]
    if exemptLoopback and (host.startswith("127.") or host == "::1"):
        return None
    return host


class Bucket:
    __slots__ = ("lo", "hi", "contacts", "replacements", "lastChanged", "pinging")

    def __init__(self, lo, hi, now):
        self.lo = lo
        self.hi = hi  # exclusive
        self.contacts = OrderedDict()  # nodeId -> Contact, least recently seen first
        self.replacements = OrderedDict()  # newest last
        self.lastChanged = now
        self.pinging = False

    def covers(self, idInt):
        return self.lo <= idInt < self.hi


class RoutingTable:
    """
    @param ping: C{callable(contact) -> Deferred} firing on an answer and
        failing on timeout; used for ping-before-evict.
    """

    def __init__(self, ownId, clock, ping, k=K, perBucketSubnet=2, perTableSubnet=4, rng=random, exemptLoopback=False):
        self.rng = rng
        self.exemptLoopback = exemptLoopback
        self.moves = 0
        self.ownId = ownId
        self.ownInt = int.from_bytes(ownId, "big")
        self.clock = clock
        self.ping = ping
        self.k = k
        self.perBucketSubnet = perBucketSubnet
        self.perTableSubnet = perTableSubnet
        self.buckets = [Bucket(0, 2**ID_BITS, clock.seconds())]
        self._subnets = {}
        self._index = {}  # nodeId -> Contact, for contacts in buckets
        self._ints = []  # sorted id ints of the contacts, for closest()
        self._byInt = {}

    def __len__(self):
        return len(self._index)

    def __contains__(self, nodeId):
        return nodeId in self._index

    def get(self, nodeId):
        return self._index.get(nodeId)

    def bucketFor(self, idInt):
        # buckets are few (about log2(n/k)) and the deepest hold most lookups
        for b in reversed(self.buckets):
            if b.lo <= idInt < b.hi:
                return b
        raise AssertionError("buckets do not cover the keyspace")

    def contacts(self):
        return list(self._index.values())

    # ---- learning about nodes

    def seen(self, nodeId, address, verified=True, key=None, work=None):
        """
        A node answered us.  C{verified}: the answer proved the key at this
        address (signature, work); then it may be added, queued as a
        replacement, or (after its old address stopped answering) moved.
        Otherwise only an entry already at C{address} is refreshed.

        @return: C{True} if it is in the table at C{address} afterwards.
        """
        if nodeId == self.ownId:
            return False
        now = self.clock.seconds()
        idInt = int.from_bytes(nodeId, "big")
        bucket = self.bucketFor(idInt)
        c = bucket.contacts.get(nodeId)
        if c is not None:
            if c.address != address:
                if verified:
                    self._checkMove(c, address)
                return False
            c.lastSeen = now
            c.failures = 0
            if verified:
                c.provenAt = now
                if (key and key != c.key) or (work and work != c.work):
                    c.key, c.work, c._peer = key or c.key, work or c.work, None
            bucket.contacts.move_to_end(nodeId)
            bucket.lastChanged = now
            return True
        if not verified:
            return False
        while True:
            if len(bucket.contacts) < self.k:
                if not self._subnetAllows(bucket, address):
                    return False
                c = Contact(nodeId, address, now, key, work)
                bucket.contacts[nodeId] = c
                bucket.replacements.pop(nodeId, None)
                self._indexAdd(c)
                self._count(address)
                bucket.lastChanged = now
                return True
            if bucket.covers(self.ownInt) and bucket.hi - bucket.lo > 1:
                self._split(bucket)
                bucket = self.bucketFor(idInt)
                continue
            break
        # Full and not splittable: remember it, and check the oldest is still there.
        if self._subnetAllows(bucket, address, replacing=True):
            bucket.replacements.pop(nodeId, None)
            bucket.replacements[nodeId] = Contact(nodeId, address, now, key, work)
            while len(bucket.replacements) > self.k:
                bucket.replacements.popitem(last=False)
            self._pingOldest(bucket)
        return False

    def _checkMove(self, c, address):
        """A proven answer from a new address: ask the old one; move only if it is silent."""
        if c.moveTo is not None:
            c.moveTo = address  # the latest proven address waits
            return
        c.moveTo = address

        def answered(_):
            c.moveTo = None  # the long-lived address still answers: keep it

        def silent(_):
            target, c.moveTo = c.moveTo, None
            if self._index.get(c.nodeId) is not c or target is None:
                return
            bucket = self.bucketFor(c.idInt)
            self._uncount(c.address)
            if self._subnetAllows(bucket, target, ignore=c):
                c.address = target
                c.failures = 0
                c.provenAt = c.lastSeen = self.clock.seconds()
                self.moves += 1
            self._count(c.address)

        self.ping(c).addCallbacks(answered, silent)

    def hasRoomFor(self, nodeId):
        """@return: C{True} if C{nodeId} would be added (not merely queued) were it to prove itself."""
        if nodeId == self.ownId or nodeId in self._index:
            return False
        bucket = self.bucketFor(int.from_bytes(nodeId, "big"))
        return len(bucket.contacts) < self.k or (bucket.covers(self.ownInt) and bucket.hi - bucket.lo > 1)

    def failed(self, nodeId):
        """A contact did not answer an RPC: evict it when it is stale and a replacement waits."""
        c = self._index.get(nodeId)
        if c is None:
            return
        c.failures += 1
        bucket = self.bucketFor(c.idInt)
        if (c.failures >= MAX_FAILURES and bucket.replacements) or c.failures >= DROP_FAILURES:
            self._evict(bucket, c)

    def remove(self, nodeId):
        c = self._index.get(nodeId)
        if c is not None:
            self._evict(self.bucketFor(c.idInt), c)

    def _evict(self, bucket, c):
        del bucket.contacts[c.nodeId]
        self._indexRemove(c)
        self._uncount(c.address)
        while bucket.replacements:
            _, r = bucket.replacements.popitem(last=True)
            if self._subnetAllows(bucket, r.address):
                bucket.contacts[r.nodeId] = r
                self._indexAdd(r)
                self._count(r.address)
                break
        bucket.lastChanged = self.clock.seconds()

    def _pingOldest(self, bucket):
        if bucket.pinging or not bucket.contacts:
            return
        oldest = next(iter(bucket.contacts.values()))
        bucket.pinging = True

        def answered(_):
            bucket.pinging = False
            # seen() was called by the RPC layer on the answer; nothing to evict.

        def silent(_):
            bucket.pinging = False
            current = self._index.get(oldest.nodeId)
            if current is oldest:
                self._evict(self.bucketFor(oldest.idInt), oldest)

        self.ping(oldest).addCallbacks(answered, silent)

    def _split(self, bucket):
        mid = (bucket.lo + bucket.hi) // 2
        now = self.clock.seconds()
        low, high = Bucket(bucket.lo, mid, bucket.lastChanged), Bucket(mid, bucket.hi, bucket.lastChanged)
        for nodeId, c in bucket.contacts.items():
            (low if c.idInt < mid else high).contacts[nodeId] = c
        for nodeId, c in bucket.replacements.items():
            (low if c.idInt < mid else high).replacements[nodeId] = c
        i = self.buckets.index(bucket)
        self.buckets[i : i + 1] = [low, high]
        # A replacement may now fit in a bucket with room.
        for b in (low, high):
            while len(b.contacts) < self.k and b.replacements:
                _, r = b.replacements.popitem(last=True)
                if self._subnetAllows(b, r.address):
                    b.contacts[r.nodeId] = r
                    self._indexAdd(r)
                    self._count(r.address)
            b.lastChanged = now

    # ---- Sybil limits

    def _subnetAllows(self, bucket, address, replacing=False, ignore=None):
        net = subnetOf(address, self.exemptLoopback)
        if net is None:
            return True
        if self._subnets.get(net, 0) >= self.perTableSubnet + (1 if replacing else 0):
            return False
        inBucket = sum(1 for c in bucket.contacts.values() if c is not ignore and self._net(c) == net)
        return inBucket < self.perBucketSubnet + (1 if replacing else 0)

    def _net(self, c):
        net = c.subnet.get(self.exemptLoopback, False)
        if net is False:
            net = c.subnet[self.exemptLoopback] = subnetOf(c.address, self.exemptLoopback)
        return net

    def _count(self, address):
        net = subnetOf(address, self.exemptLoopback)
        if net is not None:
            self._subnets[net] = self._subnets.get(net, 0) + 1

    def _uncount(self, address):
        net = subnetOf(address, self.exemptLoopback)
        if net is not None:
            left = self._subnets[net] - 1
            if left:
                self._subnets[net] = left
            else:
                del self._subnets[net]

    def _indexAdd(self, c):
        self._index[c.nodeId] = c
        bisect.insort(self._ints, c.idInt)
        self._byInt[c.idInt] = c

    def _indexRemove(self, c):
        del self._index[c.nodeId]
        del self._ints[bisect.bisect_left(self._ints, c.idInt)]
        del self._byInt[c.idInt]

    # ---- queries

    def closest(self, target, count=None, exclude=None):
        """@return: up to C{count} (default k) contacts closest to C{target}, closest first."""
        count = count or self.k
        t = int.from_bytes(target, "big")
        ints = self._ints
        need = count + (exclude is not None)
        # The ids sharing the longest prefix with the target are one run of the
        # sorted list, and every id outside it is farther than every id in it:
        # find the smallest such run holding enough ids, and sort only that.
        lo, hi = 0, len(ints)
        if hi > 2 * need:
            small, big = 0, ID_BITS
            while small < big:
                shift = (small + big) // 2
                base = (t >> shift) << shift
                a, b = bisect.bisect_left(ints, base), bisect.bisect_left(ints, base + (1 << shift))
                if b - a >= need:
                    big = shift
                else:
                    small = shift + 1
            base = (t >> small) << small
            lo, hi = bisect.bisect_left(ints, base), bisect.bisect_left(ints, base + (1 << small))
        byInt = self._byInt
        out = []
        for i in sorted(ints[lo:hi], key=t.__xor__):
            c = byInt[i]
            if c.nodeId != exclude:
                out.append(c)
                if len(out) >= count:
                    break
        return out

    def touch(self, target):
        """A lookup for C{target} ran: its bucket counts as fresh."""
        self.bucketFor(int.from_bytes(target, "big")).lastChanged = self.clock.seconds()

    def staleBuckets(self, idle=3600.0):
        """@return: a random id in the range of each bucket idle longer than C{idle} seconds."""
        now = self.clock.seconds()
        return [randomIdIn(b, self.rng) for b in self.buckets if now - b.lastChanged > idle]

    def bucketsFartherThanClosest(self):
        """Random ids in each bucket other than the one holding our nearest neighbour (the join refresh)."""
        near = self.closest(self.ownId, 1)
        skip = self.bucketFor(near[0].idInt) if near else None
        return [randomIdIn(b, self.rng) for b in self.buckets if b is not skip and not b.covers(self.ownInt)]


def randomIdIn(bucket, rng=random):
    return (bucket.lo + rng.randrange(bucket.hi - bucket.lo)).to_bytes(32, "big")
