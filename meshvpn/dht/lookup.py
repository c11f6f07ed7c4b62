"""Iterative Kademlia lookup: alpha parallel queries converging on the k closest live nodes.

The shortlist starts from our own table.  At most alpha queries are active at
once; a query that has not answered within C{stallTimeout} stops counting as
active (it may still answer) so one slow or dead node never halts progress.
The lookup ends when the k closest nodes not known to be dead have all
answered, or (value lookups) when enough nodes returned a verified record.
Lying nodes cost at most a timeout each: answers from an id other than the
one we asked are rejected by the RPC layer, bogus contacts simply time out,
and records are verified before they count.
"""

import hashlib

from twisted.internet import defer

from meshvpn.dht import wire
from meshvpn.dht.records import RecordError, parseRecord, verifyRecord

_NEW, _ACTIVE, _STALLED, _DONE, _FAILED = range(5)
MAX_ENTRIES = 400
MAX_QUERIES = 120


class LookupResult:
    """What a lookup found: C{contacts} (closest first), C{records} (verified), stats."""

    def __init__(self, contacts, records, hops, requests, responses, elapsed):
        self.contacts = contacts
        self.records = records
        self.hops = hops
        self.requests = requests
        self.responses = responses
        self.elapsed = elapsed

    def best(self):
        """@return: the record with the highest sequence number, or C{None}."""
        return max(self.records, key=lambda r: r.seq, default=None)


class _Entry:
    __slots__ = ("nodeId", "address", "dist", "state", "depth", "stallCall")

    def __init__(self, nodeId, address, dist, depth):
        self.nodeId = nodeId
        self.address = address
        self.dist = dist
        self.state = _NEW
        self.depth = depth
        self.stallCall = None


class IterativeLookup:
    """
    One lookup.  C{run()} returns a Deferred firing with a L{LookupResult}.

    @param findValue: send FIND_VALUE and collect records for C{target}.
    @param quorum: for a value lookup, stop once this many nodes returned a
        verified record (0: run to convergence).
    @param wantPublishers: for a shared key, stop once records of this many
        distinct publishers are in hand.
    """

    def __init__(self, node, target, findValue=False, quorum=2, wantPublishers=None):
        self.node = node
        self.target = target
        self.targetInt = int.from_bytes(target, "big")
        self.findValue = findValue
        self.quorum = quorum
        self.wantPublishers = wantPublishers
        self.k = node.config.k
        self.alpha = node.config.alpha
        self.entries = {}
        self.order = []  # entries sorted by distance
        self.active = 0
        self.queries = 0
        self.failed = 0
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
            seeds = [(c.nodeId, c.address) for c in self.node.table.closest(self.target, self.k)]
        for nodeId, addr in seeds:
            self._add(nodeId, addr, 0)
        self._step()
        return self.d

    def _add(self, nodeId, address, depth):
        if nodeId in self.entries or nodeId == self.node.nodeId or len(self.entries) >= MAX_ENTRIES:
            return
        e = _Entry(nodeId, address, int.from_bytes(nodeId, "big") ^ self.targetInt, depth)
        self.entries[nodeId] = e
        # insertion into a short sorted list: cheaper than re-sorting
        order = self.order
        lo, hi = 0, len(order)
        while lo < hi:
            mid = (lo + hi) // 2
            if order[mid].dist < e.dist:
                lo = mid + 1
            else:
                hi = mid
        order.insert(lo, e)

    def _enough(self):
        if not self.findValue:
            return False
        if self.wantPublishers is not None:
            return len(self.records) >= self.wantPublishers
        return self.quorum and self.valueResponders >= self.quorum

    def _step(self):
        if self.finished:
            return
        if self._enough():
            return self._finish()
        seen = 0
        waiting = False
        for e in self.order:
            if e.state == _FAILED:
                continue
            seen += 1
            if seen > self.k:
                break
            if e.state == _NEW:
                if self.active < self.alpha and self.queries < MAX_QUERIES:
                    self._query(e)
                    if self.finished:
                        return
                waiting = True
            elif e.state != _DONE:
                waiting = True
        if not waiting or (self.active == 0 and self.queries >= MAX_QUERIES):
            self._finish()

    def _query(self, e):
        e.state = _ACTIVE
        self.active += 1
        self.queries += 1
        node = self.node
        e.stallCall = node.clock.callLater(node.config.stallTimeout, self._stalled, e)
        kind = wire.FIND_VALUE if self.findValue else wire.FIND_NODE
        # With plenty of candidates a lost query is cheaper to replace than to
        # retry; with few (a young table) each one matters, so it is retried.
        attempts = 1 if len(self.order) - self.failed >= 2 * self.alpha else 2
        d = node.request(
            e.address, kind, self.target, expectedId=e.nodeId, timeout=node.config.lookupTimeout, attempts=attempts
        )
        d.addCallbacks(self._answered, self._failed, callbackArgs=(e,), errbackArgs=(e,))

    def _release(self, e):
        if e.stallCall is not None:
            if e.stallCall.active():
                e.stallCall.cancel()
            e.stallCall = None
        if e.state == _ACTIVE:
            self.active -= 1

    def _stalled(self, e):
        e.stallCall = None
        if e.state == _ACTIVE:
            e.state = _STALLED
            self.active -= 1
            self._step()

    def _answered(self, msg, e):
        self._release(e)
        e.state = _DONE
        if self.finished:
            return
        self.responses += 1
        hop = e.depth + 1
        if hop > self.maxHops:
            self.maxHops = hop
        if self.findValue:
            records, contacts = msg.payload
            if records:
                self._takeRecords(records, hop)
        else:
            contacts = msg.payload
        for nodeId, addr in contacts:
            self._add(nodeId, addr, hop)
        self._step()

    def _takeRecords(self, raws, hop):
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
        if got:
            self.valueResponders += 1
            if self.valueHops is None:
                self.valueHops = hop

    def _failed(self, failure, e):
        self._release(e)
        e.state = _FAILED
        self.failed += 1
        self._step()

    def _finish(self):
        self.finished = True
        for e in self.order:
            if e.stallCall is not None and e.stallCall.active():
                e.stallCall.cancel()
            e.stallCall = None
        contacts = [(e.nodeId, e.address) for e in self.order if e.state == _DONE][: self.k]
        hops = self.valueHops if self.findValue else self.maxHops
        result = LookupResult(
            contacts,
            list(self.records.values()),
            hops,
            self.queries,
            self.responses,
            self.node.clock.seconds() - self.started,
        )
        self.d.callback(result)
