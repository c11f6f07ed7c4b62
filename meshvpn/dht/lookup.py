"""Iterative Kademlia lookup over d disjoint paths (S/Kademlia), alpha parallel queries per path.

The closest contacts of our own table are dealt out over C{paths} paths.  Each
path keeps its own shortlist and queries at most alpha nodes at once; a node
is queried by one path only (the first to reach it), so a hostile node can
mislead the paths that pass through it but never one that does not: with d
paths, one honest path is enough to reach the target's honest neighbours.
A query that has not answered within C{stallTimeout} stops holding its slot
(it may still answer), so one slow or dead node never halts a path.

A path ends when the k closest nodes of its shortlist not known to be dead
have all answered (or, for values, when it got a verified record).  The
lookup ends when every path has ended, or (values) when min(d, 2) paths each
got a verified record and C{quorum} nodes in all did: a record is only taken
once two independent paths agree it exists, and the highest sequence number
among everything verified wins.  Node lookups merge what all paths found.

Contacts are only believed as far as they can be checked before asking:
their proof of work (one hash), at most one node id per host per lookup (so
a host minting identities counts once), at most two addresses per id (so a
lie about where an honest node lives cannot hide its real address).  And no
single answer may fill a path: it adds at most C{perAnswer} (4) new contacts,
its closest.  A colluder's answer lists the colluders closest to the target,
closer than anything an honest node knows so early; taken whole, twenty of
them would fill the path's k closest and the path would end among them.
Four at a time, honest answers keep their share of the shortlist and the
path keeps reaching honest nodes (measured: doc/dht.md).  Every
answer from a node not proven at its address must be signed (the RPC layer
checks; an unsigned or wrong answer is a failed query), and records are
verified before they count.
"""

import enum
import hashlib

from twisted.internet import defer

from meshvpn.dht import wire
from meshvpn.dht.pow import checkWork
from meshvpn.dht.records import RecordError, parseRecord, verifyRecord
from meshvpn.dht.routing import hostOf

MAX_ENTRIES = 400
MAX_SHORTLIST = 60  # per path: three times k
MAX_QUERIES_PER_PATH = 60
MAX_ADDRESSES_PER_ID = 2


class State(enum.Enum):
    NEW = "new"
    ACTIVE = "active"
    STALLED = "stalled"  # asked, slow: no longer holds a slot, may still answer
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"  # another path queried this node, or it answered at another address


class LookupResult:
    """What a lookup found: C{contacts} (L{wire.Peer}s, closest first), C{records} (verified), stats."""

    def __init__(self, contacts, records, hops, requests, responses, elapsed, pathsFound=0):
        self.contacts = contacts
        self.records = records
        self.hops = hops
        self.requests = requests
        self.responses = responses
        self.elapsed = elapsed
        self.pathsFound = pathsFound

    def best(self):
        """@return: the record with the highest sequence number, or C{None}."""
        return max(self.records, key=lambda r: r.seq, default=None)


class _Entry:
    __slots__ = ("peer", "dist", "state", "depth", "stallCall", "path")

    def __init__(self, peer, dist, depth, path):
        self.peer = peer
        self.dist = dist
        self.state = State.NEW
        self.depth = depth
        self.stallCall = None
        self.path = path


class _Path:
    __slots__ = ("index", "order", "active", "queries", "done", "found", "seen")

    def __init__(self, index):
        self.index = index
        self.order = []  # entries sorted by distance
        self.seen = set()  # every contact offered to this path (answers repeat each other)
        self.active = 0
        self.queries = 0
        self.done = False
        self.found = False


class IterativeLookup:
    """
    One lookup.  C{run()} returns a Deferred firing with a L{LookupResult}.

    @param findValue: send FIND_VALUE and collect records for C{target}.
    @param quorum: for a value lookup, stop once this many nodes returned a
        verified record (0: run to convergence).
    @param wantPublishers: for a shared key, stop once records of this many
        distinct publishers are in hand.
    @param paths: the number d of disjoint paths.
    """

    def __init__(self, node, target, findValue=False, quorum=2, wantPublishers=None, paths=1):
        self.node = node
        self.target = target
        self.targetInt = int.from_bytes(target, "big")
        self.findValue = findValue
        self.quorum = quorum
        self.wantPublishers = wantPublishers
        self.k = node.config.k
        self.alpha = node.config.alpha
        self.workBits = node.config.powBits
        self.perAnswer = node.config.perAnswer
        self.exemptLoopback = node.config.exemptLoopback
        self.paths = [_Path(i) for i in range(max(1, paths))]
        self.entries = {}  # (path index, nodeId, address) -> _Entry: each path has its own shortlist
        self.addresses = {}  # (path index, nodeId) -> number of entries
        self.hosts = {}  # host -> the one node id this lookup takes from it
        self.claimed = {}  # nodeId -> index of the path that queried it
        self.byId = {}  # nodeId -> its entries (in all paths)
        self.answered = set()  # node ids that answered (at some address)
        self.queries = 0
        self.responses = 0
        self.records = {}  # publisherId -> best Record
        self.valueResponders = 0
        self.valueHops = None
        self.maxHops = 0
        self._verified = set()
        self.finished = False
        self.started = node.clock.seconds()
        self.d = defer.Deferred()

    def run(self, seeds=None):
        if seeds is None:
            seeds = self.node.seedPeers(self.target, self.k)
        for i, peer in enumerate(seeds):
            self._add(peer, 0, self.paths[i % len(self.paths)])
        self._step()
        return self.d

    def _add(self, peer, depth, path):
        nodeId, address = peer.nodeId, peer.address
        key = (path.index, nodeId, address)
        if nodeId == self.node.nodeId or len(self.entries) >= MAX_ENTRIES or key in self.entries:
            return False
        dist = int.from_bytes(nodeId, "big") ^ self.targetInt
        order = path.order
        if len(order) >= MAX_SHORTLIST and dist >= order[-1].dist:
            return False  # farther than every candidate of a full shortlist: it would never be asked
        if self.addresses.get((path.index, nodeId), 0) >= MAX_ADDRESSES_PER_ID:
            return False
        host = hostOf(address, self.exemptLoopback)
        if host is not None:
            owner = self.hosts.setdefault(host, nodeId)
            if owner != nodeId:
                self.node.counters["lookup_same_host"] += 1
                return False
        if peer.key is not None and not checkWork(peer.key, peer.work, self.workBits):
            self.node.counters["contacts_without_work"] += 1
            return False
        owner = self.claimed.get(nodeId)
        if nodeId in self.answered or (owner is not None and owner != path.index):
            return False  # asked already, by another path or at another address
        e = _Entry(peer, dist, depth, path)
        self.entries[key] = e
        self.byId.setdefault(nodeId, []).append(e)
        self.addresses[(path.index, nodeId)] = self.addresses.get((path.index, nodeId), 0) + 1
        # insertion into a short sorted list: cheaper than re-sorting
        lo, hi = 0, len(order)
        while lo < hi:
            mid = (lo + hi) // 2
            if order[mid].dist < e.dist:
                lo = mid + 1
            else:
                hi = mid
        order.insert(lo, e)
        return True

    def _enough(self):
        if not self.findValue:
            return False
        if self.wantPublishers is not None:
            return len(self.records) >= self.wantPublishers
        if not self.quorum:
            return False
        agreeing = sum(1 for p in self.paths if p.found)
        return agreeing >= min(len(self.paths), 2) and self.valueResponders >= self.quorum

    def _step(self):
        if self.finished:
            return
        if self._enough():
            return self._finish()
        for path in self.paths:
            if not path.done:
                self._stepPath(path)
                if self.finished:
                    return
        if all(p.done for p in self.paths):
            self._finish()

    def _stepPath(self, path):
        if self.findValue and path.found and self.quorum and self.valueResponders >= self.quorum:
            # this path has done its part; it waits for the others to agree
            path.done = not path.active
            return
        seen = 0
        waiting = False
        for e in path.order:
            state = e.state
            if state is State.FAILED or state is State.SKIPPED:
                continue
            seen += 1
            if seen > self.k:
                break
            if state is State.NEW:
                if path.active < self.alpha and path.queries < MAX_QUERIES_PER_PATH:
                    self._query(e, path)
                    if self.finished:
                        return
                waiting = True
            elif state is not State.DONE:
                waiting = True
        if not waiting or (path.active == 0 and path.queries >= MAX_QUERIES_PER_PATH):
            path.done = True

    def _skipOthers(self, e):
        """Another entry of this node (another path's, or another address) will not be asked."""
        for other in self.byId[e.peer.nodeId]:
            if other is not e and other.state is State.NEW:
                other.state = State.SKIPPED

    def _query(self, e, path):
        e.state = State.ACTIVE
        self.claimed[e.peer.nodeId] = path.index
        for other in self.byId[e.peer.nodeId]:
            if other.path is not path and other.state is State.NEW:
                other.state = State.SKIPPED
        path.active += 1
        path.queries += 1
        self.queries += 1
        node = self.node
        e.stallCall = node.clock.callLater(node.config.stallTimeout, self._stalled, e)
        kind = wire.FIND_VALUE if self.findValue else wire.FIND_NODE
        # With plenty of candidates a lost query is cheaper to replace than to
        # retry; with few (a young table) each one matters, so it is retried.
        attempts = 1 if len(path.order) >= 2 * self.alpha else 2
        d = node.request(
            e.peer.address, kind, self.target, expectedId=e.peer.nodeId, timeout=node.config.lookupTimeout,
            attempts=attempts,
        )
        d.addCallbacks(self._answered, self._failed, callbackArgs=(e,), errbackArgs=(e,))

    def _release(self, e):
        if e.stallCall is not None:
            if e.stallCall.active():
                e.stallCall.cancel()
            e.stallCall = None
        if e.state is State.ACTIVE:
            e.path.active -= 1

    def _stalled(self, e):
        e.stallCall = None
        if e.state is State.ACTIVE:
            # An address that timed out on us lately is not waited for: its
            # query goes on, and an answer still counts if it comes.
            silent = self.node.recentlySilent(e.peer.address)
            e.state = State.FAILED if silent else State.STALLED
            if silent:
                self.node.counters["lookup_silent_passed"] += 1
            e.path.active -= 1
            self._step()

    def _answered(self, msg, e):
        self._release(e)
        e.state = State.DONE
        if self.finished:
            return
        self.responses += 1
        self.answered.add(e.peer.nodeId)
        self._skipOthers(e)
        hop = e.depth + 1
        if hop > self.maxHops:
            self.maxHops = hop
        if self.findValue:
            records, contacts = msg.payload
            if records and self._takeRecords(records):
                self.valueResponders += 1
                e.path.found = True
                if self.valueHops is None:
                    self.valueHops = hop
        else:
            contacts = msg.payload
        seen = e.path.seen
        fresh = [p for p in contacts if p not in seen]
        seen.update(fresh)
        if len(fresh) > self.perAnswer:
            # one answer may not fill a path's shortlist: its closest few only
            fresh.sort(key=lambda p: int.from_bytes(p.nodeId, "big") ^ self.targetInt)
        taken = 0
        for peer in fresh:
            if taken >= self.perAnswer:
                break
            taken += self._add(peer, hop, e.path)
        self._step()

    def _takeRecords(self, raws):
        now = self.node.clock.seconds()
        got = False
        for raw in raws:
            digest = hashlib.blake2b(raw, digest_size=16).digest()
            try:
                record = parseRecord(raw)
                if digest not in self._verified:
                    verifyRecord(record, now, key=self.target)
                    self._verified.add(digest)
            except RecordError:
                self.node.counters["bad_records_read"] += 1
                continue
            got = True
            old = self.records.get(record.publisherId)
            if old is None or record.seq > old.seq:
                self.records[record.publisherId] = record
        return got

    def _failed(self, failure, e):
        self._release(e)
        e.state = State.FAILED
        self._step()

    def _finish(self):
        self.finished = True
        done = []
        for e in self.entries.values():
            if e.stallCall is not None and e.stallCall.active():
                e.stallCall.cancel()
            e.stallCall = None
            if e.state is State.DONE:
                done.append(e)
        done.sort(key=lambda e: e.dist)
        contacts, ids = [], set()
        for e in done:
            if e.peer.nodeId not in ids:
                ids.add(e.peer.nodeId)
                contacts.append(e.peer)
        hops = self.valueHops if self.findValue else self.maxHops
        result = LookupResult(
            contacts[: self.k],
            list(self.records.values()),
            hops,
            self.queries,
            self.responses,
            self.node.clock.seconds() - self.started,
            sum(1 for p in self.paths if p.found),
        )
        self.d.callback(result)
