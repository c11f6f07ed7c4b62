"""Attacks on the DHT as a directory: one test per hole of issue 13 (written against the old code first)."""

import random

from twisted.trial import unittest

from meshvpn.dht import wire
from meshvpn.dht.records import SHARED, RecordStore, makeRecord, sharedKey
from meshvpn.dht.routing import RoutingTable, subnetOf
from meshvpn.identity import NodeIdentity
from meshvpn.test.test_dht_rpc import T0, Net, Raw, newIdentity
from meshvpn.test.test_dht_routing import Pinger, nid


class Impersonator(Raw):
    """Answers every request at its own address with someone else's public key (it cannot sign for it)."""

    def __init__(self, net, addr, key):
        super().__init__(net, addr)
        self.key = key
        self.answered = 0

    def datagramReceived(self, data, addr):
        msg = wire.decode(data)
        if msg.kind not in wire.REQUESTS:
            return
        reply = {wire.PING: addr, wire.FIND_NODE: [], wire.FIND_VALUE: ([], []), wire.STORE: wire.STORED}[msg.kind]
        self.answered += 1
        self.send(wire.encode(wire.REQUESTS[msg.kind], msg.txid, self.key, reply), addr)


class HijackTests(unittest.TestCase):
    """Hole 1: node ids are not authenticated."""

    def test_listedUnderAttackerAddressDoesNotMoveTheEntry(self):
        net = Net(self, 30)
        victim = net.nodes[7]
        known = [n for n in net.nodes if n.nodeId in victim.table]
        liar, honest = known[0], known[1:11]
        for n in honest:  # the victim has not met these yet
            victim.table.remove(n.nodeId)
        imposter = Impersonator(net, ("198.18.222.1", 4000), honest[0].publicKey)

        # the liar lists every honest node at the imposter's address
        def lie(target, exclude):
            return [(n.nodeId, imposter.addr) for n in honest]

        liar._closestContacts = lie
        net.run(victim.lookup(liar.nodeId), 20)
        self.assertGreater(imposter.answered, 0)
        real = {n.nodeId: n.address for n in net.nodes}
        for c in victim.table.contacts():
            self.assertEqual(c.address, real[c.nodeId], "a table entry points at an address that never proved the key")

    def test_existingEntryNotMovedByImpersonator(self):
        net = Net(self, 10)
        victim = net.nodes[4]
        x = next(n for n in net.nodes if n.nodeId in victim.table)
        imposter = Impersonator(net, ("198.18.222.1", 4000), x.publicKey)
        # what a lookup does with (x, imposter address) from a NODES list
        net.run(victim.ping(imposter.addr, expectedId=x.nodeId), 5)
        self.assertEqual(imposter.answered, 1)
        self.assertEqual(victim.table.get(x.nodeId).address, x.address)

    def test_moveRespectsSubnetLimits(self):
        clock = __import__("twisted.internet.task", fromlist=["Clock"]).Clock()
        table = RoutingTable(b"\x00" * 32, clock, Pinger(), k=20, perBucketSubnet=20, perTableSubnet=3)
        for i in range(3):
            self.assertTrue(table.seen(nid(8, 0x80 + i), (f"198.18.7.{i + 1}", 1)))
        mover = nid(8, 0x90)
        self.assertTrue(table.seen(mover, ("198.18.9.1", 1)))
        table.seen(mover, ("198.18.7.50", 1), verified=True)
        clock.advance(10)
        self.assertLessEqual(sum(1 for c in table.contacts() if subnetOf(c.address) == "198.18.7"), 3)

    def test_freeKeysDoNotEnterTables(self):
        net = Net(self, 5)
        victim = net.nodes[2]
        free = Impersonator(net, ("198.18.223.1", 4000), NodeIdentity.generate().identityPublicKey)
        free.ident = None
        net.run(victim.ping(free.addr), 5)
        self.assertEqual(
            [c for c in victim.table.contacts() if c.address == free.addr], [], "an id that did no work entered the table"
        )


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
        newcomer = Raw(net, ("198.18.231.1", 5000))
        relay = makeRecord(newIdentity(), b"relay-descriptor", b"d", 1, T0 + 3 * 3600)
        newcomer.request(node, wire.STORE, relay.raw, txid=b"newrelay")
        self.assertEqual(newcomer.got[-1][0].payload, wire.STORED, "a new relay was locked out by free keys")

    def test_roleShardsCheckedAgainstPublisher(self):
        from meshvpn.descriptor import encodeDescriptor, makeDescriptor
        from meshvpn.dht.directory import RelayDirectory, roleSalt, shardOf

        net = Net(self, 20)
        attacker = newIdentity()
        d = makeDescriptor(attacker, {"udp": "198.18.240.1:4000"}, {"guard"}, published=T0)
        raw = encodeDescriptor(d)
        own = shardOf(attacker.nodeId)
        for shard in range(8):
            if shard != own:
                r = makeRecord(attacker, roleSalt("guard", shard), raw, 1, T0 + 3600, kind=SHARED)
                net.run(net.nodes[1].put(r))
        reader = RelayDirectory(net.nodes[9], newIdentity())
        found = net.run(reader.sample("guard", 10), 30)
        self.assertEqual(found, [], "a relay was listed from a shard that is not its own")


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
            answered = len(wire.encode(victim.got[-1][0].kind, b"x" * 8, b"k" * 32, victim.got[-1][0].payload))
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
        net.pump(0.01, step=0.01)
        before = len(flooder.got)
        for i in range(40):
            node.datagramReceived(wire.encode(wire.PING, (100 + i).to_bytes(8, "big"), b"k" * 32), flooder.addr)
        net.pump(0.2)
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
