"""The DHT protocol engine: one node's Kademlia RPCs on the node's single UDP socket.

L{DHTNode} parses every datagram routed to it, answers requests from its
routing table and record store, and matches responses to its own requests by
transaction id (random 64 bits) and source address.  Requests time out on
C{IReactorTime} and are retried; anything malformed, oversized, over budget,
unproven or unsolicited is dropped and counted in C{counters}, never raised.
A node in client mode (behind NAT, not reachable) marks its messages so
others never put it in their tables, and serves nothing.

What it believes and what it spends (doc/security.md, "DHT"):
  - A node enters the routing table, or moves in it, only on an answer
    signed by its key (over our fresh transaction id and our key) at that
    address, with valid proof of work (L{meshvpn.dht.pow}).  We ask for a
    signature (PROVE) whenever the (id, address) pair has not proved itself
    within C{proofMaxAge}; an unsigned answer to such a request is dropped.
    A requester is never added for asking: if its bucket has room we ping
    it for a proof (only if it proved its address with a token or sent at
    least as many bytes as our ping: probing is no amplifier), at most
    C{maxProbes} at a time and once per 5 minutes per id.
  - Answers bigger than their request go only to addresses that echo our
    token (L{meshvpn.dht.tokens}); our own first requests to a node are
    padded so its answer fits.  STOREs need a token too (no spoofed STORE
    ever costs a signature check).
  - Per-source and global budgets for answers and for Ed25519 work done for
    others (L{meshvpn.dht.budget}).

The same class runs inside real nodes (L{meshvpn.dht.service}) and, by the
thousand, inside the simulator (L{meshvpn.tools.dhtsim}).
"""

import hashlib
import os
import random
from collections import Counter, OrderedDict

import attrs
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey
from twisted.internet import defer, task
from twisted.logger import Logger
from zope.interface import implementer

from meshvpn.dht import ALPHA, K, wire
from meshvpn.dht.budget import Bucket, SourceLimiter
from meshvpn.dht.lookup import IterativeLookup
from meshvpn.dht.pow import DEFAULT_BITS, NO_WORK, checkWork
from meshvpn.dht.proofs import ProofBook
from meshvpn.dht.records import RecordError, parseRecord
from meshvpn.dht.routing import RoutingTable, subnetOf
from meshvpn.dht.sampling import sampleRegion
from meshvpn.dht.tokens import NO_TOKEN, TokenCache, TokenIssuer
from meshvpn.errors import DHTError
from meshvpn.interfaces import IDHT, IDatagramHandler
from meshvpn.ratelimit import sourceKey

# A first request to a node (no token yet) is padded so the whole answer fits.
# How long an address that let a request time out is passed over once its
# lookup query stalls, and how many such addresses are remembered.
SILENT_FOR = 60.0
MAX_SILENT = 1024

_NODES_FULL = wire.HEADER_LEN + 1 + wire.MAX_CONTACTS * wire.CONTACT_V4_LEN + wire.SIG_LEN
_PAD = {wire.FIND_NODE: _NODES_FULL, wire.FIND_VALUE: wire.MAX_DATAGRAM, wire.SAMPLE: wire.MAX_DATAGRAM}


@attrs.define
class DHTConfig:
    """Tunables; the defaults are for the real internet."""

    k: int = K
    alpha: int = ALPHA  # parallel queries per lookup path
    paths: int = 2  # disjoint lookup paths (S/Kademlia's d) for values and sampling
    storePaths: int = 2  # ... and for finding where to store
    perAnswer: int = 4  # new contacts one answer may add to a lookup path (its closest): no liar fills a path
    sampleStorers: int = 8  # a region sample asks the nodes this close to its point (one honest one is enough)
    rpcTimeout: float = 2.0  # per attempt, for PING and STORE
    rpcAttempts: int = 2
    lookupTimeout: float = 2.0  # per lookup query (one attempt: the lookup asks others instead)
    stallTimeout: float = 0.5  # a lookup query slower than this stops holding an alpha slot
    rateLimit: float = 50.0  # requests per second per source IP
    rateBurst: float = 200.0
    maxSources: int = 4096  # source IPs tracked by the rate limiter (the rest share one bucket)
    answerRate: float = 1000.0  # answers per second to everyone together
    answerBurst: float = 1000.0
    cryptoRate: float = 400.0  # Ed25519 signs and verifies per second for others (proofs, STOREs)
    cryptoBurst: float = 400.0
    maxPending: int = 4096  # outstanding requests of ours
    maxProbes: int = 32  # requesters being pinged for a proof at once
    proofMaxAge: float = 3600.0  # a proven (id, address) is asked to prove itself again after this
    powBits: int = DEFAULT_BITS  # proof of work a node id must carry to be listed
    refreshIdle: float = 3600.0  # refresh buckets idle longer than this
    refreshCheck: float = 300.0
    expireInterval: float = 60.0
    replicateInterval: float = 3600.0
    replicateBudget: int = 32  # keys pushed per replication round (a STORE must not buy unbounded repeat work)
    republishInterval: float = 1800.0
    valueQuorum: int = 2
    perBucketSubnet: int = 2
    perTableSubnet: int = 4
    exemptLoopback: bool = False  # local test networks only: loopback addresses escape subnet limits
    maxRecords: int = 20000
    maxPerKey: int = 64
    # One relay's own records must fit at every storing node of a small network, where each holds them
    # all: its measurement slots (14 epochs x up to 32 report parts, a probe report and a read-back),
    # its descriptor, role announcements and payout address.  At 16, a probing relay's own reports were
    # refused from its 7th epoch.  One key still holds at most 2.6% of a full store.
    maxPerPublisher: int = 512


class _Pending:
    __slots__ = ("d", "data", "addr", "expectedId", "kind", "attemptsLeft", "timeout", "call", "prove")


def _defaultTxid():
    return os.urandom(8)


def verifyProof(msg, requesterKey):
    """@return: C{True} if C{msg} carries a valid signature by its sender over our request's answer."""
    try:
        VerifyKey(msg.senderKey).verify(wire.proofInput(requesterKey, msg.signedPart), msg.signature)
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True


@implementer(IDatagramHandler, IDHT)
class DHTNode:
    """
    @param identity: an L{meshvpn.interfaces.INodeIdentity}: its key signs
        our answers' proofs; records are signed by their publisher.
    @param send: C{callable(data, addr)} that sends one datagram, normally
        C{node.udp.sendDatagram}.
    @param store: a L{meshvpn.dht.records.RecordStore}.
    @param work: our proof-of-work nonce (L{meshvpn.dht.pow.loadOrSolve});
        a serving node without enough work is listed by nobody.
    @param family: 4 or 6: the overlay this node is in (IPv4 and IPv6 are
        separate overlays); a request to the other family fails at once, so
        a contact of the wrong family costs no timeout.  C{None}: either.
    """

    log = Logger()

    def __init__(self, clock, identity, send, store, config=None, clientMode=False, txid=_defaultTxid, rng=random,
                 work=NO_WORK, family=None):
        self.clock = clock
        self.family = family
        self.identity = identity
        self.nodeId = identity.nodeId
        self.publicKey = identity.identityPublicKey
        self.send = send
        self.store = store
        self.config = c = config or DHTConfig()
        self.clientMode = clientMode
        self.flags = wire.FLAG_CLIENT if clientMode else 0
        self.work = work
        self._txid = txid
        self.rng = rng
        self.table = RoutingTable(
            self.nodeId,
            clock,
            self._pingContact,
            k=c.k,
            perBucketSubnet=c.perBucketSubnet,
            perTableSubnet=c.perTableSubnet,
            rng=rng,
            exemptLoopback=c.exemptLoopback,
        )
        now = clock.seconds()
        secret = rng.randbytes(32) if isinstance(rng, random.Random) else None
        self.tokens = TokenIssuer(clock, secret)
        self.peerTokens = TokenCache(clock)
        self.limiter = SourceLimiter(c.rateLimit, c.rateBurst, c.maxSources)
        self.answerBudget = Bucket(c.answerRate, c.answerBurst, now)
        self.cryptoBudget = Bucket(c.cryptoRate, c.cryptoBurst, now)
        self.pending = {}
        # address -> when a request to it last went unanswered after every
        # attempt: a lookup stops waiting for such an address once its query
        # stalls (see L{recentlySilent}).  Bounded; an answer clears it.
        self._silent = OrderedDict()
        self.counters = Counter()
        # callables given each finished lookup's LookupResult (metrics: its duration)
        self.lookupObservers = []
        self.proofs = ProofBook(clock, self.table, c.proofMaxAge, maxProbes=c.maxProbes)
        self._published = {}  # key -> Record we republish
        self._bootAddresses = []
        self.savedContacts = []  # (nodeId, address) from a saved table: pinged at bootstrap
        # callable(addr) -> bool, or None: whether the transport can carry a request there now (a
        # client's circuits: meshvpn.client.dhtcircuits); one it cannot fails at once, costing no timeout
        self.reachable = None
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
        if msg.clientMode or not checkWork(msg.senderKey, msg.work, self.config.powBits):
            self.counters["dropped_no_work"] += 1
            return
        proven = False
        if msg.signature is not None:
            if not verifyProof(msg, self.publicKey):
                self.counters["dropped_bad_proof"] += 1
                return
            proven = True
        elif p.prove:
            # We asked for a proof and got none: maybe an impersonator, maybe a
            # node out of budget.  Either way the answer is not believed.
            self.counters["dropped_unproven"] += 1
            return
        del self.pending[msg.txid]
        p.call.cancel()
        self._silent.pop(addr, None)
        self.counters["responses"] += 1
        self.peerTokens.remember(addr, msg.token)
        if proven:
            self.proofs.mark(senderId, addr)
            self.table.seen(senderId, addr, verified=True, key=msg.senderKey, work=msg.work)
        else:
            self.table.seen(senderId, addr, verified=False)
        p.d.callback(msg)

    def _request(self, msg, addr):
        if self.clientMode:
            self.counters["dropped_client_mode"] += 1
            return
        now = self.clock.seconds()
        host = addr[0]
        if not self.limiter.allow(sourceKey(host), now):  # an IPv6 source counts as its /64
            self.counters["dropped_rate_limited"] += 1
            return
        if not self.answerBudget.take(now):
            self.counters["dropped_over_budget"] += 1
            return
        self.counters["requests_in"] += 1
        senderId = hashlib.sha256(msg.senderKey).digest()
        tokenOk = self.tokens.valid(host, msg.token)
        kind = msg.kind
        if kind == wire.PING:
            reply = addr
        elif kind == wire.FIND_NODE:
            reply = self.answerFindNode(msg.payload, senderId)
        elif kind == wire.FIND_VALUE:
            reply = self.answerFindValue(msg.payload, senderId)
        elif kind == wire.SAMPLE:
            reply = self.answerSample(*msg.payload)
        elif not tokenOk:  # STORE from an address that has not proved itself
            self.counters["store_need_token"] += 1
            reply = wire.NEED_TOKEN
        elif not self.cryptoBudget.take(now):
            self.counters["dropped_crypto_budget"] += 1
            return
        else:
            reply = self.answerStore(msg.payload, addr)
        sign = None
        if msg.flags & wire.FLAG_PROVE:
            if self.cryptoBudget.take(now):
                requesterKey = msg.senderKey
                sign = lambda data: self.identity.sign(wire.proofInput(requesterKey, data))  # noqa: E731
            else:
                self.counters["proofs_over_budget"] += 1
        data = wire.encode(
            wire.REQUESTS[kind], msg.txid, self.publicKey, reply, self.flags, work=self.work,
            token=self.tokens.issue(host), room=wire.MAX_DATAGRAM if tokenOk else msg.size, sign=sign,
        )
        self.send(data, addr)
        if not msg.clientMode and (tokenOk or msg.size >= wire.PING_LEN):
            # our probe is no bigger than what the requester sent: no amplification
            self._maybeProbe(senderId, addr, msg.senderKey, msg.work)

    # ---- answering (the simulator's hostile nodes override these)

    def answerFindNode(self, target, senderId):
        return self.closestPeers(target, senderId)

    def answerFindValue(self, key, senderId):
        now = self.clock.seconds()
        records = self.store.get(key, now)
        own = self._published.get(key)
        if own is not None and own.expires > now and all(r.publisherId != own.publisherId for r in records):
            records.append(own)  # a publisher always serves its own records
        if len(records) > 1:
            self.rng.shuffle(records)
        return [r.raw for r in records], self.closestPeers(key, senderId)

    def answerSample(self, target, cls):
        records = self.store.sample(cls, target, self.clock.seconds())
        return [r.raw for r in records], []

    def answerStore(self, raw, addr):
        return self._storeRecord(raw, subnetOf(addr, self.config.exemptLoopback) or f"{addr[0]}:{addr[1]}", addr)

    def closestPeers(self, target, exclude=None):
        return [c.peer() for c in self.table.closest(target, self.config.k, exclude=exclude) if c.key is not None]

    def seedPeers(self, target, count):
        """Contacts from our own table to start a lookup with (all proven)."""
        return self.closestPeers(target)[:count]

    def _storeRecord(self, raw, source, origin):
        try:
            record = parseRecord(raw)
        except RecordError:
            self.counters["store_rejected"] += 1
            return wire.BAD_RECORD
        code = self.store.store(record, self.clock.seconds(), source, origin)
        self.counters["stored" if code == wire.STORED else "store_rejected"] += 1
        return code

    # ---- proofs

    def isProven(self, nodeId, addr):
        """@return: C{True} if C{nodeId} proved its key at C{addr} lately (no need to ask again)."""
        return self.proofs.isProven(nodeId, addr)

    def _maybeProbe(self, nodeId, addr, key, work):
        """A requester we may list: ask it to prove its key (a signed PONG adds it)."""
        if not checkWork(key, work, self.config.powBits) or not self.proofs.startProbe(nodeId):
            return
        self.counters["probes"] += 1
        d = self.request(addr, wire.PING, expectedId=nodeId, prove=True)
        d.addBoth(lambda _: self.proofs.probeDone(nodeId))

    # ---- sending

    def request(self, addr, kind, payload=None, expectedId=None, timeout=None, attempts=None, prove=None):
        """
        Send one request and wait for its response.

        @param prove: ask for a signed answer; by default whenever
            C{expectedId} has not proved itself at C{addr} lately (always
            for an unknown node).
        @return: a Deferred firing with the response L{wire.Message}; fails
            with L{DHTError} on timeout after all attempts.
        """
        if self.stopped:
            return defer.fail(DHTError("DHT stopped"))
        if len(self.pending) >= self.config.maxPending:
            self.counters["requests_refused"] += 1
            return defer.fail(DHTError("too many outstanding DHT requests"))
        if self.family is not None and (6 if ":" in addr[0] else 4) != self.family:
            self.counters["requests_other_family"] += 1
            return defer.fail(DHTError(f"{addr[0]} is not in this IPv{self.family} DHT"))
        if self.reachable is not None and not self.reachable(addr):
            self.counters["requests_unreachable"] += 1
            return defer.fail(DHTError(f"{addr[0]}:{addr[1]} cannot be asked now"))
        if prove is None:
            prove = expectedId is None or not self.isProven(expectedId, addr)
        txid = self._txid()
        while txid in self.pending:
            txid = self._txid()
        token = self.peerTokens.get(addr)
        p = _Pending()
        p.d = defer.Deferred()
        p.data = wire.encode(
            kind, txid, self.publicKey, payload, self.flags | (wire.FLAG_PROVE if prove else 0), work=self.work,
            token=token, padTo=_PAD.get(kind, 0) if token == NO_TOKEN else 0,
        )
        p.addr = addr
        p.expectedId = expectedId
        p.kind = kind
        p.prove = prove
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
        self._silent.pop(p.addr, None)
        self._silent[p.addr] = self.clock.seconds()
        if len(self._silent) > MAX_SILENT:
            self._silent.popitem(last=False)
        if p.expectedId is not None:
            c = self.table.get(p.expectedId)
            if c is not None and c.address == p.addr:
                self.table.failed(p.expectedId)
        p.d.errback(DHTError(f"no answer from {p.addr[0]}:{p.addr[1]}"))

    def recentlySilent(self, addr):
        """
        Whether a request to C{addr} went unanswered after all its attempts
        within the last L{SILENT_FOR} seconds, and nothing has answered from
        there since.  A dead node stays in routing tables until it has
        failed a few times; meanwhile every lookup that asks it waited out
        its whole timeout (a small network's client refreshing its relays
        after one died waited about 20 s).  Only this node's own timeouts
        set it, so no peer can make an honest node look silent.
        """
        t = self._silent.get(addr)
        return t is not None and self.clock.seconds() - t < SILENT_FOR

    def _pingContact(self, contact):
        # ping-before-evict and move checks: the long-lived address must prove itself
        return self.request(contact.address, wire.PING, expectedId=contact.nodeId, prove=True)

    def ping(self, addr, expectedId=None, prove=None):
        """@return: a Deferred firing with C{(nodeId, observedAddress)} of the answering node."""
        d = self.request(addr, wire.PING, expectedId=expectedId, prove=prove)
        return d.addCallback(lambda msg: (hashlib.sha256(msg.senderKey).digest(), msg.payload))

    def storeAt(self, addr, nodeId, record):
        """
        STORE C{record} at one node, repeating it once with the token if the
        node asks for one.  @return: a Deferred firing with the result code.
        """

        def result(msg, again):
            if msg.payload == wire.NEED_TOKEN and again:
                return self.request(addr, wire.STORE, record.raw, expectedId=nodeId).addCallback(result, False)
            return msg.payload

        return self.request(addr, wire.STORE, record.raw, expectedId=nodeId).addCallback(result, True)

    # ---- IDHT

    @defer.inlineCallbacks
    def bootstrap(self, addresses):
        """
        Ping C{addresses} and every saved contact, then look up our own id
        and refresh the buckets farther than our nearest neighbour (the
        Kademlia join).  @return: Deferred firing with the table size.
        """
        self._bootAddresses = list(addresses)
        saved = [(a, i) for i, a in self.savedContacts] + [(c.address, c.nodeId) for c in self.table.contacts()]
        pings = [self.ping(a) for a in addresses] + [self.ping(a, i) for a, i in saved]
        results = yield defer.DeferredList(pings, consumeErrors=True)
        if not any(ok for ok, _ in results) and not len(self.table):
            raise DHTError("no bootstrap node answered and the routing table is empty")
        first = yield self.lookup(self.nodeId, paths=1)
        if len(self.table) < self.config.k:
            # a lossy first round can leave us with a handful of contacts: ask again through them
            again = yield self.lookup(self.nodeId, paths=1)
            if not first.responses and not again.responses:
                # A bootstrap node that answered a ping and then left would
                # leave us alone, and every node joining through us with us:
                # an island.  Fail, so the caller tries other addresses.
                raise DHTError("no node answered the join lookup")
        targets = self.table.bucketsFartherThanClosest()
        yield defer.DeferredList([self.lookup(t, paths=1) for t in targets], consumeErrors=True)
        return len(self.table)

    def lookup(self, target, findValue=False, quorum=None, wantPublishers=None, paths=None):
        """Run one iterative lookup.  @return: Deferred firing with a L{LookupResult}."""
        self.table.touch(target)
        q = self.config.valueQuorum if quorum is None else quorum
        d = self.config.paths if paths is None else paths
        return IterativeLookup(self, target, findValue, q, wantPublishers, d).run().addCallback(self._lookupFinished)

    def _lookupFinished(self, result):
        for observe in self.lookupObservers:
            observe(result)
        return result

    def findNode(self, nodeId):
        return self.lookup(nodeId).addCallback(lambda r: [(p.nodeId, p.address) for p in r.contacts])

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

    def sampleRegion(self, cls, target):
        """Records of sample class C{cls} near C{target}: see L{meshvpn.dht.sampling.sampleRegion}."""
        return sampleRegion(self, cls, target)

    @defer.inlineCallbacks
    def put(self, record, republish=False):
        """
        Store C{record} on the k nodes closest to its key (and here, if this
        node is one of them).  @return: Deferred firing with how many stored it.
        """
        if republish:
            self._published[record.key] = record
        result = yield self.lookup(record.key, paths=self.config.storePaths)
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
            if len(contacts) < self.config.k or mine < int.from_bytes(contacts[-1].nodeId, "big") ^ key:
                if self.store.store(record, self.clock.seconds(), "self") == wire.STORED:
                    stored += 1
        ds = [self.storeAt(p.address, p.nodeId, record) for p in contacts]
        results = yield defer.DeferredList(ds, consumeErrors=True)
        stored += sum(1 for ok, code in results if ok and code == wire.STORED)
        return stored

    # ---- maintenance

    def refreshBuckets(self):
        targets = self.table.staleBuckets(self.config.refreshIdle)
        ds = [self.lookup(t, paths=1) for t in targets]
        if len(self.table) < self.config.k and self._bootAddresses:
            # A thin table may mean we joined through a node that was itself
            # alone (an island): go back through the bootstrap nodes.
            ds += [self.ping(a) for a in self._bootAddresses]
            ds.append(task.deferLater(self.clock, self.config.rpcTimeout, self.lookup, self.nodeId, False, None, None, 1))
        return defer.DeferredList(ds, consumeErrors=True)

    def _expire(self):
        self.counters["expired"] += self.store.expire(self.clock.seconds())

    @defer.inlineCallbacks
    def replicate(self):
        """
        Push records not refreshed by a STORE this interval to the k closest
        nodes: one lookup per key, at most C{replicateBudget} keys a round,
        shared fairly among the sources that stored them (see
        L{RecordStore.dueForReplication}).
        """
        if self.clientMode:
            return
        c = self.config
        batch, deferred = self.store.dueForReplication(self.clock.seconds(), c.replicateInterval, c.replicateBudget)
        self.counters["replication_deferred"] += deferred
        for key, records in batch:
            result = yield self.lookup(key, paths=c.storePaths)
            for record in records:
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
