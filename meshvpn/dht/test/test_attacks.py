"""Attacks on the DHT as a directory: one test per hole of issue 13 (written against the old code first)."""

import random

from twisted.trial import unittest

from meshvpn.dht import wire
from meshvpn.dht.records import SHARED, RecordStore, makeRecord, sharedKey
from meshvpn.dht.routing import RoutingTable, subnetOf
from meshvpn.identity import NodeIdentity
from meshvpn.dht.test.test_rpc import T0, Net, Raw, newIdentity
from meshvpn.dht.test.test_routing import Pinger, nid


class Impersonator(Raw):
    """
    Answers every request at its own address with someone else's public key
    and proof of work (both public).  It cannot sign for that key: asked for
    a proof, it signs with its own (or, with C{sign=False}, not at all).
    """

    def __init__(self, net, addr, key, work=b"\x00" * 8, sign=True):
        super().__init__(net, addr)
        self.key = key
        self.work = work
        self.sign = sign
        self.answered = 0

    def datagramReceived(self, data, addr):
        msg = wire.decode(data)
        if msg.kind not in wire.REQUESTS:
            return
        reply = {wire.PING: addr, wire.FIND_NODE: [], wire.FIND_VALUE: ([], []), wire.STORE: wire.STORED,
                 wire.SAMPLE: ([], [])}[msg.kind]
        self.answered += 1
        sign = None
        if self.sign and msg.flags & wire.FLAG_PROVE:
            sign = lambda data: self.ident.sign(wire.proofInput(msg.senderKey, data))  # noqa: E731
        self.send(wire.encode(wire.REQUESTS[msg.kind], msg.txid, self.key, reply, work=self.work, sign=sign), addr)


def peerOf(node, address=None):
    return wire.Peer(node.nodeId, address or node.address, node.publicKey, node.work)


class HijackTests(unittest.TestCase):
    """Hole 1: node ids are not authenticated."""

    def test_listedUnderAttackerAddressDoesNotMoveTheEntry(self):
        from meshvpn.dht.lookup import IterativeLookup

        net = Net(self, 30)
        victim = net.nodes[7]
        known = [n for n in net.nodes if n.nodeId in victim.table]
        liar, honest = known[0], known[1:11]
        for n in honest:  # the victim has not met these yet
            victim.table.remove(n.nodeId)
        # each imposter answers as one honest node (signing with its own key, or not at all)
        imposters = {
            n.nodeId: Impersonator(net, (f"198.18.{222 + i}.1", 4000), n.publicKey, n.work, sign=i % 2 == 0)
            for i, n in enumerate(honest)
        }

        # the liar lists every honest node at an imposter's address
        def lie(target, exclude):
            return [peerOf(n, imposters[n.nodeId].addr) for n in honest]

        liar.answerFindNode = lie
        # a lookup that meets the liar first (here: only the liar)
        result = net.run(IterativeLookup(victim, liar.nodeId, paths=1).run(seeds=[peerOf(liar)]), 20)
        self.assertGreater(sum(i.answered for i in imposters.values()), 5)
        self.assertEqual([p.nodeId for p in result.contacts], [liar.nodeId])
        real = {n.nodeId: n.address for n in net.nodes}
        for c in victim.table.contacts():
            self.assertEqual(c.address, real[c.nodeId], "a table entry points at an address that never proved the key")

    def test_existingEntryNotMovedByImpersonator(self):
        net = Net(self, 10)
        victim = net.nodes[4]
        x = next(n for n in net.nodes if n.nodeId in victim.table)
        for sign in (True, False):
            imposter = Impersonator(net, ("198.18.222.1", 4000 + sign), x.publicKey, x.work, sign=sign)
            # what a lookup does with (x, imposter address) from a NODES list
            net.run(victim.ping(imposter.addr, expectedId=x.nodeId), 5)
            self.assertGreaterEqual(imposter.answered, 1)
            self.assertEqual(victim.table.get(x.nodeId).address, x.address)
        self.assertGreater(victim.counters["dropped_bad_proof"], 0)
        self.assertGreater(victim.counters["dropped_unproven"], 0)

    def test_moveRespectsSubnetLimits(self):
        clock = __import__("twisted.internet.task", fromlist=["Clock"]).Clock()
        table = RoutingTable(b"\x00" * 32, clock, Pinger(), k=20, perBucketSubnet=20, perTableSubnet=3)
        for i in range(3):
            self.assertTrue(table.seen(nid(8, 0x80 + i), (f"198.18.7.{i + 1}", 1)))
        mover = nid(8, 0x90)
        self.assertTrue(table.seen(mover, ("198.18.9.1", 1)))
        table.seen(mover, ("198.18.7.50", 1), verified=True)
        for _, d in table.ping.calls:
            d.errback(Exception("the old address is silent"))
        clock.advance(10)
        self.assertLessEqual(sum(1 for c in table.contacts() if subnetOf(c.address) == "198.18.7"), 3)
        self.assertEqual(table.get(mover).address, ("198.18.9.1", 1))

    def test_freeKeysDoNotEnterTables(self):
        from meshvpn.tools.dhtsim import makeSimNode

        net = Net(self, 5)
        victim = net.nodes[2]
        # a real node that signs its answers but did no work for its key
        free = makeSimNode(net.net, net.clock, ("198.18.223.1", 4000), net.config, work=b"\x00" * 8, rng=net.rng)
        self.addCleanup(free.stop)
        net.run(victim.ping(free.address), 5)
        self.assertNotIn(free.nodeId, victim.table)
        self.assertGreater(victim.counters["dropped_no_work"], 0)
        # listed by someone else, it is not even asked
        liar = net.nodes[1]
        liar.answerFindNode = lambda target, exclude: [peerOf(free)]
        before = free.counters["requests_in"]
        net.run(victim.lookup(free.nodeId), 10)
        self.assertEqual(free.counters["requests_in"], before)
        self.assertGreater(victim.counters["contacts_without_work"], 0)


class EclipseTests(unittest.TestCase):
    """Lookups route around colluders: disjoint paths."""

    def test_disjointPathsRouteAroundALiar(self):
        from meshvpn.dht.lookup import IterativeLookup
        from meshvpn.tools.dhtsim import makeSimNode, simIdentity

        net = Net(self, 24, k=4)
        record = makeRecord(newIdentity(), b"v", b"value", 1, T0 + 3600)
        t = int.from_bytes(record.key, "big")
        # colluders with ids ground next to the record's key (10 bits), known only to the liar
        colluders = []
        rng = random.Random(8)
        while len(colluders) < 5:
            ident = simIdentity(rng)
            if int.from_bytes(ident.nodeId, "big") >> 246 == t >> 246:
                node = makeSimNode(net.net, net.clock, (f"198.18.{60 + len(colluders)}.9", 4000), net.config,
                                   identity=ident, rng=net.rng)
                self.addCleanup(node.stop)
                colluders.append(node)
        liar = net.nodes[3]

        def lie(key, exclude):
            return [peerOf(c) for c in colluders]

        for n in colluders + [liar]:
            n.answerFindNode = lie
            n.answerFindValue = lambda key, exclude: ([], lie(key, exclude))
        # the record sits with the honest nodes closest to its key
        honest = [n for n in net.nodes if n is not liar]
        for n in sorted(honest, key=lambda n: n.table.ownInt ^ t)[:4]:
            n.store.store(record, net.clock.seconds())
        looker = net.nodes[10]
        helper = max((n for n in honest if n is not looker), key=lambda n: n.table.ownInt ^ t)
        seeds = [peerOf(liar), peerOf(helper)]
        one = net.run(IterativeLookup(looker, record.key, findValue=True, paths=1).run(seeds=list(seeds)), 20)
        two = net.run(IterativeLookup(looker, record.key, findValue=True, paths=2).run(seeds=list(seeds)), 20)
        self.assertEqual(one.records, [], "one path is captured: the liar's colluders fill its k closest")
        self.assertEqual([r.raw for r in two.records], [record.raw], "the second path goes around")


class EvictionTests(unittest.TestCase):
    """Hole 2: honest descriptors can be evicted."""

    def test_longExpiryClaimsDoNotEvictHonestRecords(self):
        store = RecordStore(maxRecords=20000, maxPerKey=64)
        salt = b"meshvpn-role:guard:\x00"
        honest = [NodeIdentity.generate() for _ in range(8)]
        for h in honest:
            self.assertEqual(store.store(makeRecord(h, salt, b"d", 1, T0 + 3 * 3600, kind=SHARED), T0), wire.STORED)
        for _ in range(64):
            store.store(makeRecord(NodeIdentity.generate(), salt, b"x", 1, T0 + 24 * 3600, kind=SHARED), T0)
        kept = {r.publisherKey for r in store.get(sharedKey(salt), T0)}
        self.assertEqual(kept & {h.identityPublicKey for h in honest}, {h.identityPublicKey for h in honest})
        # and an honest republish (higher seq) is not refused
        again = makeRecord(honest[0], salt, b"d2", 2, T0 + 3 * 3600 + 60, kind=SHARED)
        self.assertEqual(store.store(again, T0 + 60), wire.STORED)

    def test_freeKeysCannotLockOutNewRelays(self):
        net = Net(self, 1, maxRecords=300)
        node = net.nodes[0]
        flood = Raw(net, ("198.18.230.1", 5000))
        i = 0
        while node.store.count < 300 and i < 400:
            r = makeRecord(NodeIdentity.generate(), b"junk%d" % i, b"x" * 100, 1, T0 + 24 * 3600)
            flood.request(node, wire.STORE, r.raw, txid=i.to_bytes(8, "big"))
            i += 1
        self.assertEqual(node.store.count, 300)
        newcomer = Raw(net, ("198.18.231.1", 5000))
        newcomer.request(node, wire.PING, txid=b"tokenplz")
        relay = makeRecord(newIdentity(), b"mine", b"d", 1, T0 + 3 * 3600)
        newcomer.request(node, wire.STORE, relay.raw, txid=b"newrelay")
        self.assertEqual(newcomer.got[-1][0].payload, wire.STORED, "a new relay was locked out by free keys")

    def test_junkBuysBoundedReplication(self):
        """
        Replication repeats, every interval, work a stranger's one STORE
        made: a flood of free keys from one source gets its turn with the
        other sources, never the whole budget, and one lookup per key.
        """
        store = RecordStore(maxRecords=20000, maxPerKey=64)
        honest = [makeRecord(NodeIdentity.generate(), b"relay%d" % i, b"d", 1, T0 + 3 * 3600) for i in range(10)]
        for i, r in enumerate(honest):
            store.store(r, T0, "198.18.%d" % (10 + i))
        for i in range(2000):
            store.store(makeRecord(NodeIdentity.generate(), b"junk%d" % i, b"x", 1, T0 + 24 * 3600), T0, "198.18.230")
        batch, left = store.dueForReplication(T0 + 3601, 3600, 64)
        keys = [key for key, _ in batch]
        self.assertEqual(len(keys), 64)
        self.assertEqual(len(set(keys)), 64)
        self.assertLessEqual({r.key for r in honest}, set(keys), "honest records lost their turn to junk")
        self.assertEqual(left, 2010 - 64)
        # refreshed records are not due: their publisher or a peer just stored them
        self.assertEqual(store.dueForReplication(T0 + 100, 3600, 64), ([], 0))

    def test_roleAnnouncementsOnlyFromTheirHost(self):
        """
        Old: any key could announce itself in every shard of every role, and
        evict others there.  Now a role announcement is filed under its
        host, and only that host may STORE it: checked on store and on read.
        """
        from meshvpn.dht.descriptor import encodeDescriptor, makeDescriptor
        from meshvpn.dht.directory import ROLE_PREFIX, RelayDirectory, roleSalt

        net = Net(self, 20)
        honest = net.nodes[2:5]
        for n in honest:
            publishRelay(net, n, {"guard"})
        victimHost = honest[0].address[0]
        attacker = newIdentity()
        forged = []
        # free keys announcing themselves at an honest relay's host, and in the old shard salts
        d = makeDescriptor(attacker, {"udp": "%s:%d" % honest[0].address}, {"guard"}, published=T0)
        forged.append(makeRecord(attacker, roleSalt("guard", victimHost), encodeDescriptor(d), 1, T0 + 3600,
                                 kind=SHARED))
        for shard in range(8):
            forged.append(makeRecord(attacker, ROLE_PREFIX + b"guard:" + bytes([shard]), encodeDescriptor(d), 1,
                                     T0 + 3600, kind=SHARED))
        raw = Raw(net, ("198.18.66.1", 4000))
        for i, node in enumerate(net.nodes):
            raw.request(node, wire.PING, txid=b"token%03d" % i)
            for j, r in enumerate(forged):
                raw.request(node, wire.STORE, r.raw, txid=b"st%03d%03d" % (i, j))
                self.assertEqual(raw.got[-1][0].payload, wire.BAD_RECORD)  # every node refuses them
        # a real node's own announcement, sent from another host, is refused too
        own = RelayDirectory(honest[1], honest[1].identity).records(
            makeDescriptor(honest[1].identity, {"udp": "%s:%d" % honest[1].address}, {"guard"}, published=T0))[1]
        raw.request(net.nodes[7], wire.STORE, own.raw, txid=b"relayed!")
        self.assertEqual(raw.got[-1][0].payload, wire.BAD_RECORD)
        # hostile storers serving one anyway cost the reader a liveness ping, nothing more
        for n in net.nodes[::2]:
            n.store._insert(forged[0], T0, "x")
        reader = RelayDirectory(net.nodes[9], newIdentity())
        found = net.run(reader.sample("guard", 10), 30)
        self.assertEqual({x.nodeId for x in found}, {n.nodeId for n in honest})


def publishRelay(net, node, flags):
    from meshvpn.dht.descriptor import makeDescriptor
    from meshvpn.dht.directory import RelayDirectory

    d = makeDescriptor(node.identity, {"udp": "%s:%d" % node.address}, flags, published=net.clock.seconds())
    return net.run(RelayDirectory(node, node.identity).publish(d), 20)


class ReflectionTests(unittest.TestCase):
    """Hole 3: reflection and verify floods."""

    def test_unprovenSourcesGetNoAmplification(self):
        net = Net(self, 25)
        node = net.nodes[4]
        # records under the key, so FIND_VALUE answers carry them
        for i in range(6):
            r = makeRecord(newIdentity(), b"role", b"v" * 200, 1, T0 + 3600, kind=SHARED)
            node.store.store(r, net.clock.seconds())
        victim = Raw(net, ("198.18.250.1", 7000))  # the spoofed source: it never asked
        for kind, payload in ((wire.FIND_NODE, b"\x07" * 32), (wire.FIND_VALUE, sharedKey(b"role"))):
            request = wire.encode(kind, b"spoofed!", victim.ident.identityPublicKey, payload)
            node.datagramReceived(request, victim.addr)
            net.pump(0.2)
            self.assertTrue(victim.got)
            answered = victim.got[-1][0].size
            self.assertLessEqual(answered, len(request), f"{wire.NAMES[kind]} amplified {answered / len(request):.1f}x")

    def test_globalAnswerBudget(self):
        net = Net(self, 3)
        node = net.nodes[0]
        answered = []
        rng = random.Random(5)
        for s in range(2000):
            src = (f"198.{rng.randrange(20, 200)}.{rng.randrange(256)}.{rng.randrange(1, 255)}", 9)
            net.net.bind(src, type("Sink", (), {"datagramReceived": lambda self, d, a: answered.append(d)})())
            node.datagramReceived(wire.encode(wire.PING, s.to_bytes(8, "big"), b"k" * 32), src)
        net.pump(0.2)
        self.assertLessEqual(len(answered), 1200, "no global budget: every spoofed source is answered")

    def test_manySourcesDoNotResetAFloodersBucket(self):
        net = Net(self, 1, rateLimit=10.0, rateBurst=20.0, maxSources=64)
        node = net.nodes[0]
        flooder = Raw(net, ("198.18.251.1", 9))
        for i in range(40):
            node.datagramReceived(wire.encode(wire.PING, i.to_bytes(8, "big"), b"k" * 32), flooder.addr)
        for s in range(200):
            node.datagramReceived(wire.encode(wire.PING, b"other%03d" % s, b"k" * 32), (f"198.19.{s}.1", 9))
        net.pump(0.1, step=0.01)  # the answers so far arrive (2 s of refill is 1 token)
        before = len(flooder.got)
        for i in range(40):
            node.datagramReceived(wire.encode(wire.PING, (100 + i).to_bytes(8, "big"), b"k" * 32), flooder.addr)
        net.pump(0.1, step=0.01)
        self.assertLessEqual(len(flooder.got) - before, 2, "other sources reset the flooder's bucket")

    def test_spoofedStoresCostNoVerifies(self):
        from meshvpn.dht import records

        net = Net(self, 1)
        node = net.nodes[0]
        calls = []
        real = records.verifyRecord

        def counting(*a, **kw):
            calls.append(1)
            return real(*a, **kw)

        self.patch(records, "verifyRecord", counting)
        rng = random.Random(6)
        for i in range(300):
            r = makeRecord(newIdentity(), b"s%d" % i, b"v", 1, T0 + 3600)
            src = (f"198.{rng.randrange(20, 200)}.{rng.randrange(256)}.{rng.randrange(1, 255)}", 9)
            node.datagramReceived(wire.encode(wire.STORE, i.to_bytes(8, "big"), b"k" * 32, r.raw), src)
        self.assertLessEqual(len(calls), 0, f"{len(calls)} signature checks for spoofed STOREs")
        # and a real source (with a token) gets at most the global budget of checks
        source = Raw(net, ("198.18.252.1", 9))
        source.request(node, wire.PING, txid=b"tokenplz")
        for i in range(300, 900):
            r = makeRecord(newIdentity(), b"s%d" % i, b"v", 1, T0 + 3600)
            node.datagramReceived(wire.encode(wire.STORE, i.to_bytes(8, "big"), b"k" * 32, r.raw,
                                              token=source.tokens[node.address]), source.addr)
        self.assertLessEqual(len(calls), node.config.cryptoBurst)
        self.assertGreater(node.counters["dropped_crypto_budget"] + node.counters["dropped_rate_limited"], 0)
