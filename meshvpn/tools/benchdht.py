"""`meshvpn bench dht`: thousands of real DHT nodes on the simulated network, with churn, loss and attackers.

Phases, all on the virtual clock: nodes join one by one through a random
earlier node; every node, being a relay, announces itself (its "middle" role
record); a set of signed records is published from random honest nodes;
then, over C{duration} simulated seconds, C{churn * nodes} honest nodes are
replaced by fresh ones (new identities, new addresses, joining through a
random live node) while C{lookups} lookups for the stored records run from
random live honest nodes and C{samples} directory samples (16 relays each,
the way clients draw them) run from others.  A lookup succeeds if it
returns the exact valid record.  Every datagram is encoded, delayed by
C{latency} (one way), dropped with probability C{loss} and parsed by the
receiving node's real code.

With C{--hostile F --attack A}, F of the hosts are the attacker's
(L{meshvpn.tools.dhthostile}): real nodes running attack A, joining like
everyone else, from their own /24s (C{--hostile-hosts-per-subnet} hosts in
each, as rented servers come).  C{hostile_sample_share} is the share of
hostile relays (its nodes and the keys it minted) in the relays the samples
returned; C{hostile_host_share} the share of hosts that are the attacker's:
what a fair directory would give it.
"""

import ipaddress
import random
import statistics
import time

from meshvpn.tools.benchoutput import report
from meshvpn.dht.descriptor import makeDescriptor
from meshvpn.dht.directory import RelayDirectory
from meshvpn.tools.dhthostile import ATTACKS, Coalition, HostileNode
from meshvpn.dht.records import makeRecord
from meshvpn.dht.rpc import DHTConfig, DHTNode
from meshvpn.tools.dhtsim import AddressPool, HeapClock, SimNetwork, makeSimNode, simIdentity
from meshvpn.errors import DHTError
from meshvpn.identity import NodeIdentity

START = 1_800_000_000.0  # a plausible Unix time, so record expiries look real
# The simulator checks proofs of work like real nodes, at a low difficulty: it
# measures the protocol, not the attacker's CPU (doc/dht.md prices that).
SIM_WORK_BITS = 10
ROLE = "middle"
SAMPLE_SIZE = 16


def simConfig(paths=2):
    """Timeouts scaled to the simulated 100 ms round trip; maintenance often enough to matter in a run."""
    return DHTConfig(
        rpcTimeout=0.5,
        lookupTimeout=0.6,
        stallTimeout=0.25,
        refreshCheck=300.0,
        refreshIdle=900.0,
        replicateInterval=600.0,
        republishInterval=600.0,
        powBits=SIM_WORK_BITS,
        paths=paths,
        # stores scaled like the network: about 4x what honest relays and records need here
        maxRecords=200,
    )


def _percentile(values, p):
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p * (len(s) - 1))))]


class HostilePool:
    """Hosts of the attacker: C{perSubnet} per /24 of 100.64.0.0/10 (never routed, per our network rule)."""

    def __init__(self, perSubnet):
        self.perSubnet = perSubnet
        self.n = 0
        self.base = int(ipaddress.IPv4Address("100.64.0.0"))

    def allocate(self):
        subnet, host = divmod(self.n, self.perSubnet)
        self.n += 1
        return str(ipaddress.IPv4Address(self.base + subnet * 256 + host + 1))


class Bench:
    def __init__(self, nodes, churn, loss, lookups, records, duration, latency=0.05, seed=None, joinInterval=0.05,
                 progress=None, hostile=0.0, attack=None, samples=100, paths=2, sybils=4, hostsPerSubnet=10,
                 decoys=4, junkKeys=4, floodInterval=20.0, floodBurst=8):
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
        self.config = simConfig(paths)
        self.live = []
        self.results = []
        self.sampleResults = []
        self.progress = progress or (lambda line: None)
        self.hostile = hostile if attack else 0.0
        self.attack = attack
        self.sampleCount = samples
        self.sybils = sybils if attack == "sybil" else 1
        self.decoys = decoys
        self.junkKeys = junkKeys
        self.floodInterval = floodInterval
        self.floodBurst = floodBurst
        self.hostilePool = HostilePool(hostsPerSubnet)
        self.coalition = Coalition(attack, self.net, self.rng, self.config.k) if attack else None
        self.hostileHosts = 0
        self.honestHosts = 0

    # ---- nodes

    def addNode(self, hostile=False, address=None):
        cls = HostileNode if hostile else DHTNode
        node = makeSimNode(self.net, self.clock, address or self.pool.allocate(), self.config, rng=self.rng, cls=cls)
        node.hostile = hostile
        if hostile:
            self.coalition.add(node)
        node.joined = not self.live
        # Join through nodes that finished joining, as real nodes use established
        # bootstrap nodes; an honest node's bootstrap nodes are honest (a node
        # that only knows the attacker learns only what the attacker says, in any DHT).
        peers = [n for n in self.live if n.joined and (hostile or not n.hostile)]
        self.live.append(node)
        node.start()
        if peers:
            self._join(node, peers, 5)
        return node

    def addHostileHost(self):
        ip = self.hostilePool.allocate()
        self.hostileHosts += 1
        return [self.addNode(True, (ip, 4000 + i)) for i in range(self.sybils)]

    def _join(self, node, peers, triesLeft):
        boot = self.rng.choice(peers)

        def failed(f):
            f.trap(DHTError)
            if triesLeft > 1 and node in self.live:
                peers = [p for p in self.live if p is not node and p.joined and (node.hostile or not p.hostile)]
                self.clock.callLater(1.0, self._join, node, peers, triesLeft - 1)

        def joined(_):
            node.joined = True
            if self.announceRelays:
                self.announce(node)

        node.bootstrap([boot.address]).addCallbacks(joined, failed)

    def announce(self, node, identity=None, address=None):
        """Publish a relay's role record (every DHT node is a relay)."""
        identity = identity or node.identity
        host, port = address or node.address
        d = makeDescriptor(identity, {"udp": f"{host}:{port}"}, {ROLE}, published=self.clock.seconds(),
                           lifetime=3 * 3600)
        for record in RelayDirectory(node, identity).records(d)[1:]:
            node.put(record, republish=True).addErrback(lambda f: None)

    def removeNode(self, node):
        self.live.remove(node)
        self.net.unbind(node.address)
        if node.hostile:
            self.coalition.remove(node)
        node.stop()

    # ---- the run

    def run(self):
        wall = time.monotonic()
        hostileHosts = int(round(self.hostile * self.n))
        # the first node is honest (somebody starts the network); the rest join in random order
        rest = [True] * hostileHosts + [False] * (self.n - hostileHosts - 1)
        self.rng.shuffle(rest)
        kinds = [False] + rest
        self.announceRelays = False
        for i, hostile in enumerate(kinds):
            if hostile:
                self.addHostileHost()
            else:
                self.honestHosts += 1
                self.addNode()
            self.clock.advance(self.joinInterval)
            if i % 500 == 499:
                self.progress(f"bench dht: {i + 1} hosts joined ({time.monotonic() - wall:.0f}s)")
        self.clock.advance(60)
        joinWall = time.monotonic() - wall

        # every node is a relay: each announces its role once it has joined
        self.announceRelays = True
        for node in [n for n in self.live if n.joined]:
            self.announce(node)
            self.clock.advance(0.005)
        if self.attack == "evict":
            self._startEviction()
        self.clock.advance(60)
        self.progress(f"bench dht: relays announced ({time.monotonic() - wall:.0f}s)")

        ready = [n for n in self.live if n.joined and not n.hostile]
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
        for t in sorted(self.rng.uniform(0, self.duration) for _ in range(self.sampleCount)):
            self.clock.callLater(t, self._sample)
        self.clock.runUntil(t0 + self.duration + 30)
        wallTotal = time.monotonic() - wall
        return self._summary(replaced, joinWall, wallTotal)

    def _summary(self, replaced, joinWall, wallTotal):
        ok = [r for r in self.results if r[0]]
        times = [r[1] for r in self.results]
        hops = [r[2] for r in ok if r[2] is not None]
        msgs = [r[3] for r in self.results]
        honest = [n for n in self.live if not n.hostile]
        sampled = sum(r[0] for r in self.sampleResults)
        hostileSampled = sum(r[1] for r in self.sampleResults)
        hostShare = self.hostileHosts / (self.hostileHosts + self.honestHosts) if self.hostileHosts else 0.0
        out = {
            "nodes": self.n,
            "churn": self.churn,
            "loss": self.lossRate,
            "latency_one_way_s": self.latency,
            "attack": self.attack,
            "hostile": self.hostile,
            "disjoint_paths": self.config.paths,
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
            "samples": len(self.sampleResults),
            "relays_per_sample": round(sampled / len(self.sampleResults), 1) if self.sampleResults else None,
            "hostile_sample_share": round(hostileSampled / sampled, 4) if sampled else None,
            "hostile_host_share": round(hostShare, 4),
            "hostile_identity_share": round(sum(1 for n in self.live if n.hostile) / len(self.live), 4),
            "datagrams_total": self.net.datagrams,
            "datagrams_dropped": self.net.dropped,
            "table_size_median": statistics.median(len(n.table) for n in honest),
            "join_wall_s": round(joinWall, 1),
            "wall_s": round(wallTotal, 1),
        }
        if self.sampleResults:
            out["messages_per_sample"] = round(statistics.mean(r[2] for r in self.sampleResults), 1)
        if self.attack:
            out["sample_share_ratio"] = round(out["hostile_sample_share"] / hostShare, 2) if sampled else None
            totals = {}
            for n in honest:
                for name in ("dropped_bad_proof", "dropped_unproven", "dropped_no_work", "contacts_without_work",
                             "lookup_same_host", "sample_outside_radius", "store_need_token"):
                    totals[name] = totals.get(name, 0) + n.counters[name]
            out["honest_counters"] = totals
            out["honest_store_evictions"] = sum(n.store.evicted for n in honest)
            if self.attack == "evict":
                out["junk_stores_sent"] = self.coalition.junkSent
                out["honest_records_held"] = sum(
                    1 for n in honest for r, _ in n.store.items() if not self.coalition.isHostile(r.publisherId)
                )
        return out

    # ---- attacks that need more than their nodes' answers

    def _startEviction(self):
        now = self.clock.seconds()
        for node in self.coalition.members.values():
            node.mintJunk(self.junkKeys, 16, now)
            for i in range(self.decoys):
                decoy = simIdentity(self.rng)
                self.coalition.minted.add(decoy.nodeId)
                # a 24 h decoy relay on a port of ours that nothing answers on
                d = makeDescriptor(decoy, {"udp": f"{node.address[0]}:{30000 + i}"}, {ROLE},
                                   published=self.clock.seconds(), lifetime=24 * 3600)
                for record in RelayDirectory(node, decoy).records(d)[1:]:
                    node.put(record).addErrback(lambda f: None)
        self._flood()

    def _flood(self):
        for node in list(self.coalition.members.values()):
            node.flood(self.floodBurst)
        self.clock.callLater(self.floodInterval, self._flood)

    # ---- honest activity

    def _replace(self):
        honest = [n for n in self.live if not n.hostile]
        self.removeNode(self.rng.choice(honest))
        self.addNode()  # a replacement: the number of honest hosts stays

    def _honestJoined(self):
        return [n for n in self.live if n.joined and not n.hostile]

    def _lookup(self):
        # from a node that finished joining: a node still joining has nothing to ask yet
        node = self.rng.choice(self._honestJoined())
        record = self.rng.choice(self.records)

        def done(result):
            best = result.best()
            self.results.append(
                (best is not None and best.raw == record.raw, result.elapsed, result.hops,
                 result.requests + result.responses)
            )

        node.lookup(record.key, findValue=True).addCallback(done)

    def _sample(self):
        node = self.rng.choice(self._honestJoined())
        directory = RelayDirectory(node, node.identity, rng=self.rng)
        before = node.counters["requests_out"]

        def done(relays):
            hostile = sum(1 for d in relays if self.coalition is not None and self.coalition.isHostile(d.nodeId))
            self.sampleResults.append((len(relays), hostile, node.counters["requests_out"] - before))

        directory.sample(ROLE, SAMPLE_SIZE).addCallbacks(done, lambda f: None)


def main(args, out):
    if args.hostile and not args.attack:
        raise SystemExit("meshvpn bench dht: --hostile needs --attack")
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
        hostile=args.hostile,
        attack=args.attack,
        samples=args.samples,
        paths=args.paths,
        sybils=args.sybils_per_host,
        hostsPerSubnet=args.hostile_hosts_per_subnet,
    )
    result = bench.run()
    report(result, args.json, out)
    return 0


def addArguments(p):
    p.add_argument("--nodes", type=int, default=2000, help="hosts (with --attack sybil, hostile hosts run several)")
    p.add_argument("--churn", type=float, default=0.3, help="fraction of nodes replaced during the run")
    p.add_argument("--loss", type=float, default=0.05, help="datagram loss probability")
    p.add_argument("--latency", type=float, default=0.05, help="one-way latency, seconds")
    p.add_argument("--lookups", type=int, default=1000)
    p.add_argument("--records", type=int, default=200)
    p.add_argument("--samples", type=int, default=100, help="directory samples of 16 relays")
    p.add_argument("--duration", type=float, default=1800.0, help="simulated seconds of churn and lookups")
    p.add_argument("--paths", type=int, default=2, help="disjoint lookup paths (d)")
    p.add_argument("--hostile", type=float, default=0.0, metavar="FRACTION", help="fraction of hosts that attack")
    p.add_argument("--attack", choices=ATTACKS, default=None, help="what the hostile nodes do")
    p.add_argument("--sybils-per-host", type=int, default=4, help="identities per hostile host (--attack sybil)")
    p.add_argument("--hostile-hosts-per-subnet", type=int, default=10,
                   help="hostile hosts per /24 (1: spread like honest ones)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print one JSON object")
