"""`meshvpn bench dht`: thousands of real DHT nodes on the simulated network, with churn and loss.

Phases, all on the virtual clock: nodes join one by one through a random
earlier node; a set of signed records is published from random nodes; then,
over C{duration} simulated seconds, C{churn * nodes} nodes are replaced by
fresh ones (new identities, new addresses, joining through a random live
node) while C{lookups} lookups for the stored records run from random live
nodes.  A lookup succeeds if it returns the exact valid record.  Every
datagram is encoded, delayed by C{latency} (one way), dropped with
probability C{loss} and parsed by the receiving node's real code.
"""

import random
import statistics
import time

from meshvpn.tools.benchoutput import report
from meshvpn.dht.records import makeRecord
from meshvpn.dht.rpc import DHTConfig
from meshvpn.tools.dhtsim import AddressPool, HeapClock, SimNetwork, makeSimNode
from meshvpn.errors import DHTError
from meshvpn.identity import NodeIdentity

START = 1_800_000_000.0  # a plausible Unix time, so record expiries look real


def simConfig():
    """Timeouts scaled to the simulated 100 ms round trip; maintenance often enough to matter in a run."""
    return DHTConfig(
        rpcTimeout=0.5,
        lookupTimeout=0.6,
        stallTimeout=0.25,
        refreshCheck=300.0,
        refreshIdle=900.0,
        replicateInterval=600.0,
        republishInterval=600.0,
    )


def _percentile(values, p):
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p * (len(s) - 1))))]


class Bench:
    def __init__(self, nodes, churn, loss, lookups, records, duration, latency=0.05, seed=None, joinInterval=0.05,
                 progress=None):
        self.n = nodes
        self.churn = churn
        self.lossRate = loss
        self.lookupCount = lookups
        self.recordCount = records
        self.duration = duration
        self.latency = latency
        self.joinInterval = joinInterval
        self.rng = random.Random(seed)
        self.clock = HeapClock(START)
        self.net = SimNetwork(self.clock, latency, loss, self.rng)
        self.pool = AddressPool(self.rng)
        self.config = simConfig()
        self.live = []
        self.results = []
        self.progress = progress or (lambda line: None)

    def addNode(self):
        node = makeSimNode(self.net, self.clock, self.pool.allocate(), self.config, rng=self.rng)
        node.joined = not self.live
        # join through nodes that finished joining, as real nodes use established bootstrap nodes
        peers = [n for n in self.live if n.joined]
        self.live.append(node)
        node.start()
        if peers:
            self._join(node, peers, 5)
        return node

    def _join(self, node, peers, triesLeft):
        boot = self.rng.choice(peers)

        def failed(f):
            f.trap(DHTError)
            if triesLeft > 1 and node in self.live:
                peers = [p for p in self.live if p is not node and p.joined]
                self.clock.callLater(1.0, self._join, node, peers, triesLeft - 1)

        def joined(_):
            node.joined = True

        node.bootstrap([boot.address]).addCallbacks(joined, failed)

    def removeNode(self, node):
        self.live.remove(node)
        self.net.unbind(node.address)
        node.stop()

    def run(self):
        wall = time.monotonic()
        for i in range(self.n):
            self.addNode()
            self.clock.advance(self.joinInterval)
            if i % 500 == 499:
                self.progress(f"bench dht: {i + 1} nodes joined ({time.monotonic() - wall:.0f}s)")
        self.clock.advance(60)
        joinWall = time.monotonic() - wall

        ready = [n for n in self.live if n.joined]
        publishers = self.rng.sample(ready, min(self.recordCount, len(ready)))
        self.records = []
        for p in publishers:
            ident = NodeIdentity.generate()
            # each record under a fresh key, so records spread over the keyspace
            rec = makeRecord(ident, b"bench", self.rng.randbytes(200), 1, self.clock.seconds() + 6 * 3600)
            self.records.append(rec)
            p.put(rec, republish=True).addErrback(lambda f: None)
            self.clock.advance(0.01)
        self.clock.advance(30)
        self.progress(f"bench dht: {len(self.records)} records published ({time.monotonic() - wall:.0f}s)")

        t0 = self.clock.seconds()
        replaced = int(round(self.churn * self.n))
        for t in sorted(self.rng.uniform(0, self.duration) for _ in range(replaced)):
            self.clock.callLater(t, self._replace)
        for t in sorted(self.rng.uniform(0, self.duration) for _ in range(self.lookupCount)):
            self.clock.callLater(t, self._lookup)
        self.clock.runUntil(t0 + self.duration + 10)
        wallTotal = time.monotonic() - wall

        ok = [r for r in self.results if r[0]]
        times = [r[1] for r in self.results]
        hops = [r[2] for r in ok if r[2] is not None]
        msgs = [r[3] for r in self.results]
        return {
            "nodes": self.n,
            "churn": self.churn,
            "loss": self.lossRate,
            "latency_one_way_s": self.latency,
            "records": len(self.records),
            "replaced_nodes": replaced,
            "simulated_s": round(self.clock.seconds() - START, 1),
            "lookups": len(self.results),
            "lookup_success": round(len(ok) / len(self.results), 4) if self.results else None,
            "hops_median": statistics.median(hops) if hops else None,
            "hops_p95": _percentile(hops, 0.95),
            "lookup_time_median_s": round(statistics.median(times), 3) if times else None,
            "lookup_time_p95_s": round(_percentile(times, 0.95), 3) if times else None,
            "messages_per_lookup": round(statistics.mean(msgs), 1) if msgs else None,
            "datagrams_total": self.net.datagrams,
            "datagrams_dropped": self.net.dropped,
            "table_size_median": statistics.median(len(n.table) for n in self.live),
            "join_wall_s": round(joinWall, 1),
            "wall_s": round(wallTotal, 1),
        }

    def _replace(self):
        self.removeNode(self.rng.choice(self.live))
        self.addNode()

    def _lookup(self):
        # from a node that finished joining: a node still joining has nothing to ask yet
        node = self.rng.choice([n for n in self.live if n.joined])
        record = self.rng.choice(self.records)

        def done(result):
            best = result.best()
            self.results.append(
                (best is not None and best.raw == record.raw, result.elapsed, result.hops,
                 result.requests + result.responses)
            )

        node.lookup(record.key, findValue=True).addCallback(done)


def main(args, out):
    bench = Bench(
        nodes=args.nodes,
        churn=args.churn,
        loss=args.loss,
        lookups=args.lookups,
        records=args.records,
        duration=args.duration,
        latency=args.latency,
        seed=args.seed,
        progress=(lambda line: None) if args.json else out,
    )
    result = bench.run()
    report(result, args.json, out)
    return 0


def addArguments(p):
    p.add_argument("--nodes", type=int, default=2000)
    p.add_argument("--churn", type=float, default=0.3, help="fraction of nodes replaced during the run")
    p.add_argument("--loss", type=float, default=0.05, help="datagram loss probability")
    p.add_argument("--latency", type=float, default=0.05, help="one-way latency, seconds")
    p.add_argument("--lookups", type=int, default=1000)
    p.add_argument("--records", type=int, default=200)
    p.add_argument("--duration", type=float, default=1800.0, help="simulated seconds of churn and lookups")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print one JSON object")
