"""The DHT protocol engine: one node's Kademlia RPCs on the node's single UDP socket.

L{DHTNode} parses every datagram routed to it, answers requests from its
routing table and record store, and matches responses to its own requests by
transaction id (random 64 bits) and source address.  Requests time out on
C{IReactorTime} and are retried; each source IP has a token bucket; anything
malformed, oversized, rate-limited or unsolicited is dropped and counted in
C{counters}, never raised.  A node in client mode (behind NAT, not reachable)
marks its messages so others never put it in their tables, and serves nothing.

The same class runs inside real nodes (L{meshvpn.dht.service}) and, by the
thousand, inside the simulator (L{meshvpn.tools.dhtsim}).
"""

import hashlib
import os
import random
from collections import Counter

import attrs
from twisted.internet import defer, task
from twisted.logger import Logger
from zope.interface import implementer

from meshvpn.dht import ALPHA, K, wire
from meshvpn.dht.lookup import IterativeLookup
from meshvpn.dht.records import RecordError, parseRecord
from meshvpn.dht.routing import RoutingTable
from meshvpn.errors import DHTError
from meshvpn.interfaces import IDHT, IDatagramHandler


@attrs.define
class DHTConfig:
    """Tunables; the defaults are for the real internet."""

    k: int = K
    alpha: int = ALPHA
    rpcTimeout: float = 2.0  # per attempt, for PING and STORE
    rpcAttempts: int = 2
    lookupTimeout: float = 2.0  # per lookup query (one attempt: the lookup asks others instead)
    stallTimeout: float = 0.5  # a lookup query slower than this stops holding an alpha slot
    rateLimit: float = 50.0  # requests per second per source IP
    rateBurst: float = 200.0
    maxPending: int = 4096  # outstanding requests of ours
    maxSources: int = 4096  # source IPs tracked by the rate limiter
    refreshIdle: float = 3600.0  # refresh buckets idle longer than this
    refreshCheck: float = 300.0
    expireInterval: float = 60.0
    replicateInterval: float = 3600.0
    republishInterval: float = 1800.0
    valueQuorum: int = 2
    perBucketSubnet: int = 2
    perTableSubnet: int = 4
    maxRecords: int = 20000
    maxPerKey: int = 64


class _Pending:
    __slots__ = ("d", "data", "addr", "expectedId", "kind", "attemptsLeft", "timeout", "call")


def _defaultTxid():
    return os.urandom(8)


@implementer(IDatagramHandler, IDHT)
class DHTNode:
    """
    @param identity: an L{meshvpn.interfaces.INodeIdentity} (only its public
        key and node id are used here; records are signed by their publisher).
    @param send: C{callable(data, addr)} that sends one datagram, normally
        C{node.udp.sendDatagram}.
    @param store: a L{meshvpn.dht.records.RecordStore}.
    """

    log = Logger()

    def __init__(self, clock, identity, send, store, config=None, clientMode=False, txid=_defaultTxid, rng=random):
        self.clock = clock
        self.identity = identity
        self.nodeId = identity.nodeId
        self.publicKey = identity.identityPublicKey
        self.send = send
        self.store = store
        self.config = config or DHTConfig()
        self.clientMode = clientMode
        self.flags = wire.FLAG_CLIENT if clientMode else 0
        self._txid = txid
        self.rng = rng
        self.table = RoutingTable(
            self.nodeId,
            clock,
            self._pingContact,
            k=self.config.k,
            perBucketSubnet=self.config.perBucketSubnet,
            perTableSubnet=self.config.perTableSubnet,
            rng=rng,
        )
        self.pending = {}
        self.counters = Counter()
        # callables given each finished lookup's LookupResult (metrics: its duration)
        self.lookupObservers = []
        self._buckets = {}  # source IP -> [tokens, last time]
        self._published = {}  # key -> Record we republish
        self._bootAddresses = []
        self.stopped = False
        self._loops = []

    # ---- lifecycle

    def start(self):
        """Start maintenance: bucket refresh, expiry, replication, republishing."""
        c = self.config
        jitter = self.rng.random()
        for interval, f in (
            (c.refreshCheck, self.refreshBuckets),
            (c.expireInterval, self._expire),
            (c.replicateInterval, self.replicate),
            (c.republishInterval, self.republish),
        ):
            loop = task.LoopingCall(f)
            loop.clock = self.clock
            # desynchronised first run, so a network started at once does not pulse
            call = self.clock.callLater(interval * (0.5 + jitter / 2), self._startLoop, loop, interval)
            self._loops.append((loop, call))

    def _startLoop(self, loop, interval):
        loop.start(interval, now=True).addErrback(lambda f: self.log.failure("DHT maintenance failed", f))

    def stop(self):
        self.stopped = True
        for loop, call in self._loops:
            if call.active():
                call.cancel()
            if loop.running:
                loop.stop()
        self._loops = []
        pending, self.pending = self.pending, {}
        for p in pending.values():
            if p.call.active():
                p.call.cancel()
            p.d.errback(DHTError("DHT stopped"))

    # ---- receiving

    def datagramReceived(self, data, addr):
        try:
            msg = wire.decode(data)
        except wire.WireError:
            self.counters["dropped_malformed"] += 1
            return
        if msg.kind in wire.RESPONSES:
            self._response(msg, addr)
        else:
            self._request(msg, addr)

    def _response(self, msg, addr):
        p = self.pending.get(msg.txid)
        if p is None or p.addr != addr or wire.REQUESTS[p.kind] != msg.kind:
            self.counters["dropped_unsolicited"] += 1
            return
        senderId = hashlib.sha256(msg.senderKey).digest()
        if p.expectedId is not None and senderId != p.expectedId:
            # Someone else answers at that address: the contact was a lie or is gone.
            self.counters["dropped_wrong_id"] += 1
            return
        del self.pending[msg.txid]
        p.call.cancel()
        self.counters["responses"] += 1
        if not msg.clientMode:
            self.table.seen(senderId, addr, verified=True)
        p.d.callback(msg)

    def _request(self, msg, addr):
        if self.clientMode:
            self.counters["dropped_client_mode"] += 1
            return
        if not self._allow(addr[0]):
            self.counters["dropped_rate_limited"] += 1
            return
        self.counters["requests_in"] += 1
        senderId = hashlib.sha256(msg.senderKey).digest()
        kind = msg.kind
        if kind == wire.PING:
            reply = (wire.PONG, addr)
        elif kind == wire.FIND_NODE:
            reply = (wire.NODES, self._closestContacts(msg.payload, senderId))
        elif kind == wire.FIND_VALUE:
            records = self.store.get(msg.payload, self.clock.seconds())
            if len(records) > 1:
                self.rng.shuffle(records)
            reply = (wire.VALUE, ([r.raw for r in records], self._closestContacts(msg.payload, senderId)))
        else:  # STORE
            reply = (wire.STORE_RESULT, self._storeRecord(msg.payload))
        self.send(wire.encode(reply[0], msg.txid, self.publicKey, reply[1], self.flags), addr)
        if not msg.clientMode:
            # Unverified (the source address could be spoofed): it may fill a
            # free slot but never evicts anyone.
            self.table.seen(senderId, addr, verified=False)

    def _closestContacts(self, target, exclude):
        return [(c.nodeId, c.address) for c in self.table.closest(target, self.config.k, exclude=exclude)]

    def _storeRecord(self, raw):
        try:
            record = parseRecord(raw)
        except RecordError:
            self.counters["store_rejected"] += 1
            return wire.BAD_RECORD
        code = self.store.store(record, self.clock.seconds())
        self.counters["stored" if code == wire.STORED else "store_rejected"] += 1
        return code

    def _allow(self, ip):
        now = self.clock.seconds()
        b = self._buckets.get(ip)
        if b is None:
            if len(self._buckets) >= self.config.maxSources:
                self._pruneSources(now)
            b = self._buckets[ip] = [self.config.rateBurst, now]
        tokens = min(self.config.rateBurst, b[0] + (now - b[1]) * self.config.rateLimit)
        b[1] = now
        if tokens < 1:
            b[0] = tokens
            return False
        b[0] = tokens - 1
        return True

    def _pruneSources(self, now):
        # Forget sources whose bucket has refilled: they lose nothing by it.
        full = self.config.rateBurst / self.config.rateLimit
        for ip in [ip for ip, (_, t) in self._buckets.items() if now - t >= full]:
            del self._buckets[ip]
        if len(self._buckets) >= self.config.maxSources:
            self._buckets.clear()

    # ---- sending

    def request(self, addr, kind, payload=None, expectedId=None, timeout=None, attempts=None):
        """
        Send one request and wait for its response.

        @return: a Deferred firing with the response L{wire.Message}; fails
            with L{DHTError} on timeout after all attempts.
        """
        if self.stopped:
            return defer.fail(DHTError("DHT stopped"))
        if len(self.pending) >= self.config.maxPending:
            self.counters["requests_refused"] += 1
            return defer.fail(DHTError("too many outstanding DHT requests"))
        txid = self._txid()
        while txid in self.pending:
            txid = self._txid()
        p = _Pending()
        p.d = defer.Deferred()
        p.data = wire.encode(kind, txid, self.publicKey, payload, self.flags)
        p.addr = addr
        p.expectedId = expectedId
        p.kind = kind
        p.attemptsLeft = (attempts or self.config.rpcAttempts) - 1
        p.timeout = timeout or self.config.rpcTimeout
        p.call = self.clock.callLater(p.timeout, self._timedOut, txid)
        self.pending[txid] = p
        self.counters["requests_out"] += 1
        self.send(p.data, addr)
        return p.d

    def _timedOut(self, txid):
        p = self.pending[txid]
        if p.attemptsLeft > 0:
            p.attemptsLeft -= 1
            p.call = self.clock.callLater(p.timeout, self._timedOut, txid)
            self.counters["retries"] += 1
            self.send(p.data, p.addr)
            return
        del self.pending[txid]
        self.counters["timeouts"] += 1
        if p.expectedId is not None:
            self.table.failed(p.expectedId)
        p.d.errback(DHTError(f"no answer from {p.addr[0]}:{p.addr[1]}"))

    def _pingContact(self, contact):
        return self.request(contact.address, wire.PING, expectedId=contact.nodeId)

    def ping(self, addr, expectedId=None):
        """@return: a Deferred firing with C{(nodeId, observedAddress)} of the answering node."""
        d = self.request(addr, wire.PING, expectedId=expectedId)
        return d.addCallback(lambda msg: (hashlib.sha256(msg.senderKey).digest(), msg.payload))

    # ---- IDHT

    @defer.inlineCallbacks
    def bootstrap(self, addresses):
        """
        Ping C{addresses} and every saved contact, then look up our own id
        and refresh the buckets farther than our nearest neighbour (the
        Kademlia join).  @return: Deferred firing with the table size.
        """
        self._bootAddresses = list(addresses)
        saved = [(c.address, c.nodeId) for c in self.table.contacts()]
        pings = [self.ping(a) for a in addresses] + [self.ping(a, i) for a, i in saved]
        results = yield defer.DeferredList(pings, consumeErrors=True)
        if not any(ok for ok, _ in results) and not len(self.table):
            raise DHTError("no bootstrap node answered and the routing table is empty")
        first = yield self.lookup(self.nodeId)
        if len(self.table) < self.config.k:
            # a lossy first round can leave us with a handful of contacts: ask again through them
            again = yield self.lookup(self.nodeId)
            if not first.responses and not again.responses:
                # A bootstrap node that answered a ping and then left would
                # leave us alone, and every node joining through us with us:
                # an island.  Fail, so the caller tries other addresses.
                raise DHTError("no node answered the join lookup")
        targets = self.table.bucketsFartherThanClosest()
        yield defer.DeferredList([self.lookup(t) for t in targets], consumeErrors=True)
        return len(self.table)

    def lookup(self, target, findValue=False, quorum=None, wantPublishers=None):
        """Run one iterative lookup.  @return: Deferred firing with a L{LookupResult}."""
        self.table.touch(target)
        q = self.config.valueQuorum if quorum is None else quorum
        return IterativeLookup(self, target, findValue, q, wantPublishers).run().addCallback(self._lookupFinished)

    def _lookupFinished(self, result):
        for observe in self.lookupObservers:
            observe(result)
        return result

    def findNode(self, nodeId):
        return self.lookup(nodeId).addCallback(lambda r: r.contacts)

    def get(self, key):
        """@return: Deferred firing with the verified L{Record} of highest seq, or C{None}."""
        local = self.store.get(key, self.clock.seconds())
        d = self.lookup(key, findValue=True)

        def best(result):
            return max(result.records + local, key=lambda r: r.seq, default=None)

        return d.addCallback(best)

    def getAll(self, key, want):
        """Records of up to C{want} publishers under a shared key.  @return: Deferred list."""
        return self.lookup(key, findValue=True, quorum=0, wantPublishers=want).addCallback(lambda r: r.records)

    @defer.inlineCallbacks
    def put(self, record, republish=False):
        """
        Store C{record} on the k nodes closest to its key (and here, if this
        node is one of them).  @return: Deferred firing with how many stored it.
        """
        if republish:
            self._published[record.key] = record
        result = yield self.lookup(record.key)
        stored = yield self._storeAt(record, result.contacts)
        if not stored:
            raise DHTError("no node stored the record")
        return stored

    @defer.inlineCallbacks
    def _storeAt(self, record, contacts):
        stored = 0
        if not self.clientMode:
            key = int.from_bytes(record.key, "big")
            mine = self.table.ownInt ^ key
            if len(contacts) < self.config.k or mine < int.from_bytes(contacts[-1][0], "big") ^ key:
                if self.store.store(record, self.clock.seconds()) == wire.STORED:
                    stored += 1
        ds = [self.request(addr, wire.STORE, record.raw, expectedId=nodeId) for nodeId, addr in contacts]
        results = yield defer.DeferredList(ds, consumeErrors=True)
        stored += sum(1 for ok, msg in results if ok and msg.payload == wire.STORED)
        return stored

    # ---- maintenance

    def refreshBuckets(self):
        targets = self.table.staleBuckets(self.config.refreshIdle)
        ds = [self.lookup(t) for t in targets]
        if len(self.table) < self.config.k and self._bootAddresses:
            # A thin table may mean we joined through a node that was itself
            # alone (an island): go back through the bootstrap nodes.
            ds += [self.ping(a) for a in self._bootAddresses]
            ds.append(task.deferLater(self.clock, self.config.rpcTimeout, self.lookup, self.nodeId))
        return defer.DeferredList(ds, consumeErrors=True)

    def _expire(self):
        self.counters["expired"] += self.store.expire(self.clock.seconds())

    @defer.inlineCallbacks
    def replicate(self):
        """Push each record not refreshed by a STORE this interval to the k closest nodes."""
        if self.clientMode:
            return
        now = self.clock.seconds()
        for record, storedAt in self.store.items():
            if now - storedAt < self.config.replicateInterval or record.expires <= now:
                continue
            result = yield self.lookup(record.key)
            yield self._storeAt(record, result.contacts)
            self.counters["replicated"] += 1

    @defer.inlineCallbacks
    def republish(self):
        now = self.clock.seconds()
        for key, record in list(self._published.items()):
            if record.expires <= now:
                del self._published[key]
                continue
            try:
                yield self.put(record)
            except DHTError:
                self.counters["republish_failed"] += 1

    def forget(self, key):
        """Stop republishing the record under C{key}."""
        self._published.pop(key, None)
