"""The DHT protocol engine on task.Clock: RPCs, drops and counters, lookups, signed values."""

import hashlib
import random

from twisted.internet import task
from twisted.python import failure
from twisted.trial import unittest

from meshvpn.dht import wire
from meshvpn.dht.records import SHARED, makeRecord, parseRecord
from meshvpn.dht.rpc import DHTConfig
from meshvpn.tools.dhtsim import AddressPool, SimNetwork, makeSimNode
from meshvpn.errors import DHTError
from meshvpn.identity import NodeIdentity

T0 = 1_800_000_000.0
_keys = random.Random(77)


def newIdentity():
    """Seeded keys: every test here is deterministic."""
    from nacl.public import PrivateKey
    from nacl.signing import SigningKey

    return NodeIdentity(SigningKey(_keys.randbytes(32)), PrivateKey(_keys.randbytes(32)))


def config(**kw):
    c = dict(rpcTimeout=0.5, lookupTimeout=0.5, stallTimeout=0.2, refreshCheck=300, replicateInterval=600,
             republishInterval=600, expireInterval=60, powBits=8)
    c.update(kw)
    return DHTConfig(**c)


class Net:
    """A small simulated network on task.Clock."""

    def __init__(self, case, n=0, loss=0.0, **cfg):
        self.clock = task.Clock()
        self.clock.advance(T0)
        self.rng = random.Random(3)
        self.net = SimNetwork(self.clock, 0.05, loss, self.rng)
        self.pool = AddressPool(self.rng)
        self.config = config(**cfg)
        self.nodes = []
        case.addCleanup(self.stop)
        for _ in range(n):
            self.add()
        self.pump(5)

    def add(self, clientMode=False, join=True):
        node = makeSimNode(self.net, self.clock, self.pool.allocate(), self.config, clientMode=clientMode, rng=self.rng)
        if join and self.nodes:
            for _ in range(3):  # a lossy network can lose a join: try again, as services do
                done = []
                node.bootstrap([self.nodes[0].address]).addBoth(done.append)
                self.pump(1)
                while not done:
                    self.pump(0.5)
                if not isinstance(done[0], failure.Failure):
                    break
        self.nodes.append(node)
        return node

    def run(self, d, seconds=10):
        out = []
        d.addBoth(out.append)
        for _ in range(int(seconds * 20)):
            if out:
                break
            self.clock.advance(0.05)
        self.assertDone = out
        return out[0] if out else None

    def pump(self, seconds, step=0.05):
        """Advance in small steps: task.Clock schedules calls made during advance() after its end."""
        for _ in range(int(round(seconds / step))):
            self.clock.advance(step)

    def stop(self):
        for n in self.nodes:
            n.stop()


class Raw:
    """A hand-driven peer: sends crafted datagrams, records what comes back (and the tokens it is given)."""

    def __init__(self, net, addr=("198.18.200.1", 5000)):
        self.net = net
        self.addr = addr
        self.got = []
        self.ident = newIdentity()
        self.tokens = {}
        net.net.bind(addr, self)
        self.send = net.net.sender(addr)

    def datagramReceived(self, data, addr):
        msg = wire.decode(data)
        self.tokens[addr] = msg.token
        self.got.append((msg, addr))

    def request(self, node, kind, payload=None, txid=b"12345678", flags=0, token=None, padTo=0):
        if token is None:
            token = self.tokens.get(node.address, b"\x00" * 8)
        data = wire.encode(kind, txid, self.ident.identityPublicKey, payload, flags, token=token, padTo=padTo)
        self.send(data, node.address)
        self.net.pump(0.2)


class RPCTests(unittest.TestCase):
    def test_pingPongObservedAddress(self):
        net = Net(self, 2)
        a, b = net.nodes
        r = net.run(a.ping(b.address))
        self.assertEqual(r, (b.nodeId, a.address))
        self.assertIn(b.nodeId, a.table)
        self.assertIn(a.nodeId, b.table)

    def test_timeoutAndRetry(self):
        net = Net(self, 1)
        a = net.nodes[0]
        d = a.request(("198.18.99.99", 1), wire.PING)
        failures = []
        d.addErrback(failures.append)
        net.clock.advance(0.5)
        self.assertEqual(a.counters["retries"], 1)
        self.assertEqual(failures, [])
        net.clock.advance(0.5)
        failures[0].trap(DHTError)
        self.assertEqual(a.counters["timeouts"], 1)
        self.assertEqual(a.pending, {})

    def test_malformedOversizedUnsolicitedDropped(self):
        net = Net(self, 1)
        a = net.nodes[0]
        raw = Raw(net)
        a.datagramReceived(b"\x80garbage", raw.addr)
        a.datagramReceived(b"\x86" + b"\x00" * 2000, raw.addr)
        raw.send(wire.encode(wire.PONG, b"zzzzzzzz", raw.ident.identityPublicKey, raw.addr), a.address)
        net.pump(0.1)
        self.assertEqual(a.counters["dropped_malformed"], 2)
        self.assertEqual(a.counters["dropped_unsolicited"], 1)
        self.assertEqual(raw.got, [])

    def test_responseFromWrongAddressOrWrongIdDropped(self):
        net = Net(self, 1)
        a = net.nodes[0]
        liar = Raw(net, ("198.18.201.1", 1))
        other = Raw(net, ("198.18.202.1", 1))
        d = a.request(liar.addr, wire.PING, expectedId=b"\x01" * 32)
        d.addErrback(lambda f: None)
        net.pump(0.1)
        txid = wire.decode(a.pending[next(iter(a.pending))].data).txid
        # right txid, wrong source
        other.send(wire.encode(wire.PONG, txid, other.ident.identityPublicKey, a.address), a.address)
        # right source, but not the node we asked for
        liar.send(wire.encode(wire.PONG, txid, liar.ident.identityPublicKey, a.address), a.address)
        net.pump(0.1)
        self.assertEqual(a.counters["dropped_unsolicited"], 1)
        self.assertEqual(a.counters["dropped_wrong_id"], 1)
        self.assertNotIn(liar.ident.nodeId, a.table)

    def test_rateLimitPerSource(self):
        net = Net(self, 1, rateLimit=1.0, rateBurst=5.0)
        a = net.nodes[0]
        raw = Raw(net)
        for i in range(8):
            raw.send(wire.encode(wire.PING, b"%08d" % i, raw.ident.identityPublicKey), a.address)
        net.pump(0.2)
        self.assertEqual(len(raw.got), 5)
        self.assertEqual(a.counters["dropped_rate_limited"], 3)
        other = Raw(net, ("198.18.203.1", 1))
        other.request(a, wire.PING)
        self.assertEqual(len(other.got), 1)  # other sources unaffected
        net.pump(2.0)
        raw.request(a, wire.PING)
        self.assertEqual(len(raw.got), 6)

    def test_rateLimitCountsAnIPv6SourceByItsSlash64(self):
        """The attack: a new source address of one /64 per request; the /64 is rate limited as one source."""
        net = Net(self, 1, rateLimit=1.0, rateBurst=5.0)
        a = net.nodes[0]
        raws = [Raw(net, (f"2001:2:77:1::{i + 1:x}", 1)) for i in range(8)]
        for i, raw in enumerate(raws):
            raw.send(wire.encode(wire.PING, b"%08d" % i, raw.ident.identityPublicKey), a.address)
        net.pump(0.2)
        self.assertEqual(sum(len(r.got) for r in raws), 5)
        self.assertEqual(a.counters["dropped_rate_limited"], 3)
        other = Raw(net, ("2001:2:77:2::1", 1))
        other.request(a, wire.PING)
        self.assertEqual(len(other.got), 1)  # the next /64 is another source

    def test_clientModeNotInsertedAndServesNothing(self):
        net = Net(self, 3)
        client = net.add(clientMode=True)
        net.pump(5)
        self.assertGreater(len(client.table), 0)
        for n in net.nodes[:3]:
            self.assertNotIn(client.nodeId, n.table)
        raw = Raw(net)
        raw.request(client, wire.PING)
        self.assertEqual(raw.got, [])
        self.assertEqual(client.counters["dropped_client_mode"], 1)

    def test_findNodeRequest(self):
        net = Net(self, 5)
        raw = Raw(net)
        # no token, no padding: the answer may not be bigger than the question
        raw.request(net.nodes[0], wire.FIND_NODE, b"\x00" * 32)
        (msg, _), = raw.got
        self.assertEqual((msg.kind, msg.payload, msg.truncated), (wire.NODES, [], True))
        self.assertLessEqual(msg.size, wire.HEADER_LEN + 32)
        # with the token it got, the full answer
        raw.request(net.nodes[0], wire.FIND_NODE, b"\x00" * 32)
        msg = raw.got[-1][0]
        ids = [c.nodeId for c in msg.payload]
        self.assertEqual(len(ids), 4)
        self.assertEqual(ids, sorted(ids))
        self.assertFalse(msg.truncated)
        # a padded first request gets it too
        other = Raw(net, ("198.18.201.9", 5000))
        other.request(net.nodes[0], wire.FIND_NODE, b"\x00" * 32, padTo=1100)
        self.assertEqual(len(other.got[-1][0].payload), 4)

    def test_storeRejectsForgedAndReplayed(self):
        net = Net(self, 1)
        a = net.nodes[0]
        raw = Raw(net)
        raw.request(a, wire.PING, txid=b"pingpong")  # a token first: STORE needs one
        del raw.got[:]
        ident = newIdentity()
        r1 = makeRecord(ident, b"s", b"one", 1, T0 + 3600)
        r2 = makeRecord(ident, b"s", b"two", 2, T0 + 3600)
        forged = r2.raw[:-65] + b"X" + r2.raw[-64:]
        for payload in (r2.raw, r1.raw, forged, b"\x07junk", makeRecord(ident, b"s", b"x", 3, T0 - 1).raw):
            raw.request(a, wire.STORE, payload, txid=hashlib.sha256(payload).digest()[:8])
        codes = [m.payload for m, _ in raw.got]
        self.assertEqual(codes, [wire.STORED, wire.STALE, wire.STALE, wire.BAD_RECORD, wire.EXPIRED])
        self.assertEqual([r.raw for r in a.store.get(r2.key, net.clock.seconds())], [r2.raw])
        # a forged record with a fresh seq fails on its signature
        forged3 = makeRecord(ident, b"s", b"three", 3, T0 + 3600).raw
        forged3 = forged3[:-65] + b"Y" + forged3[-64:]
        raw.request(a, wire.STORE, forged3, txid=b"forged33")
        self.assertEqual(raw.got[-1][0].payload, wire.BAD_RECORD)


class LookupTests(unittest.TestCase):
    def test_findsTheKClosest(self):
        net = Net(self, 60)
        target = hashlib.sha256(b"target").digest()
        everyone = sorted((n.nodeId for n in net.nodes), key=lambda i: int.from_bytes(i, "big") ^ int.from_bytes(target, "big"))
        looker = net.nodes[-1]
        result = net.run(looker.lookup(target))
        got = [c[0] for c in result.contacts]
        expected = [i for i in everyone if i != looker.nodeId][:20]
        self.assertEqual(got, expected)
        self.assertLessEqual(result.hops, 4)

    def test_survivesDeadAndLyingNodes(self):
        net = Net(self, 60)
        rng = random.Random(9)
        dead = rng.sample(net.nodes[1:-1], 15)
        for d in dead:
            net.net.unbind(d.address)
        # liars answer FIND_NODE with made-up contacts close to any target
        liars = rng.sample([n for n in net.nodes[1:-1] if n not in dead], 5)
        for liar in liars:
            def lie(target, exclude, liar=liar):
                t = int.from_bytes(target, "big")
                return [((t ^ (i + 1)).to_bytes(32, "big"), ("198.19.0.%d" % (i + 1), 9)) for i in range(20)]
            liar._closestContacts = lie
        target = hashlib.sha256(b"t2").digest()
        alive = [n.nodeId for n in net.nodes if n not in dead and n is not net.nodes[-1]]
        expected = sorted(alive, key=lambda i: int.from_bytes(i, "big") ^ int.from_bytes(target, "big"))[:20]
        result = net.run(net.nodes[-1].lookup(target), 30)
        got = [c[0] for c in result.contacts]
        # every returned contact answered; the honest closest are found
        self.assertTrue(set(got) <= set(alive))
        self.assertGreaterEqual(len(set(got) & set(expected)), 16)

    def test_aSilentAddressIsNotWaitedForTwice(self):
        """
        A node dies: the first lookup near it waits out its timeout (the
        looker cannot know yet); later lookups within a minute pass over it
        once its query stalls, and still find the live closest nodes.  An
        answer from that address makes it count again.
        """
        net = Net(self, 30, lookupTimeout=2.0)
        looker = net.nodes[-1]
        dead = net.nodes[5]
        handler = net.net.handlers[dead.address]
        net.net.unbind(dead.address)

        def timed(target):
            t0 = net.clock.seconds()
            result = net.run(looker.lookup(target), 30)
            return net.clock.seconds() - t0, [c[0] for c in result.contacts]

        near = dead.nodeId[:-1] + bytes([dead.nodeId[-1] ^ 1])
        first, contacts = timed(near)
        self.assertGreaterEqual(first, 2.0)
        self.assertNotIn(dead.nodeId, contacts)
        self.assertTrue(looker.recentlySilent(dead.address))
        again = dead.nodeId[:-1] + bytes([dead.nodeId[-1] ^ 2])
        second, contacts = timed(again)
        self.assertLess(second, 1.0)
        self.assertNotIn(dead.nodeId, contacts)
        self.assertGreaterEqual(len(contacts), 20)
        self.assertGreaterEqual(looker.counters["lookup_silent_passed"], 1)
        net.net.bind(dead.address, handler)  # back: its next answer clears the mark
        self.assertEqual(net.run(looker.ping(dead.address))[0], dead.nodeId)
        self.assertFalse(looker.recentlySilent(dead.address))

    def test_lossyLookupsStillSucceed(self):
        net = Net(self, 40, loss=0.1)
        target = hashlib.sha256(b"t3").digest()
        result = net.run(net.nodes[3].lookup(target), 30)
        self.assertGreaterEqual(len(result.contacts), 15)


class ValueTests(unittest.TestCase):
    def test_putGetHigherSeqWins(self):
        net = Net(self, 40)
        ident = newIdentity()
        r1 = makeRecord(ident, b"v", b"one", 1, T0 + 3600)
        stored = net.run(net.nodes[1].put(r1))
        self.assertGreaterEqual(stored, 20)
        self.assertEqual(net.run(net.nodes[7].get(r1.key)).value, b"one")
        r2 = makeRecord(ident, b"v", b"two", 2, T0 + 3600)
        net.run(net.nodes[2].put(r2))
        self.assertEqual(net.run(net.nodes[9].get(r1.key)).value, b"two")
        # a replay of seq 1 is refused by every node that holds seq 2 (a node
        # that never saw seq 2 may take it), and readers still get seq 2
        holders = [n for n in net.nodes if [r.value for r in n.store.get(r1.key, net.clock.seconds())] == [b"two"]]
        self.assertGreaterEqual(len(holders), 20)
        net.run(net.nodes[3].put(r1))
        for n in holders:
            self.assertEqual(n.store.get(r1.key, net.clock.seconds())[0].value, b"two")
        self.assertEqual(net.run(net.nodes[11].get(r1.key)).value, b"two")

    def test_readersVerify(self):
        net = Net(self, 20)
        ident = newIdentity()
        good = makeRecord(ident, b"v", b"good", 1, T0 + 3600)
        # a hostile storing node serves a forged record with a higher seq
        forged = parseRecord(makeRecord(ident, b"v", b"evil", 9, T0 + 3600).raw[:-65] + b"E" + b"\x00" * 64)
        for n in net.nodes[1:]:
            n.store._insert(forged, T0, "x")  # no check: a hostile store
        net.nodes[0].store._insert(good, T0, "x")
        reader = net.add()
        net.pump(5)
        result = net.run(reader.lookup(good.key, findValue=True, quorum=0), 20)
        self.assertEqual([r.value for r in result.records], [b"good"])
        self.assertGreater(reader.counters["bad_records_read"], 0)

    def test_expiryDropsRecords(self):
        net = Net(self, 10)
        ident = newIdentity()
        r = makeRecord(ident, b"v", b"short", 1, T0 + 120)
        net.run(net.nodes[1].put(r))
        self.assertTrue(any(n.store.count for n in net.nodes))
        for n in net.nodes:
            n.start()
        net.pump(400)
        self.assertFalse(any(n.store.count for n in net.nodes))
        self.assertIsNone(net.run(net.nodes[2].get(r.key)))

    def test_republishAndReplicationReachNewNodes(self):
        net = Net(self, 25)
        ident = newIdentity()
        r = makeRecord(ident, b"v", b"data", 1, T0 + 20000)
        publisher = net.nodes[1]
        net.run(publisher.put(r, republish=True))
        for n in net.nodes:
            n.start()
        # 25 new nodes join; the old storers then all leave except the publisher
        old = [n for n in net.nodes if n is not publisher]
        for _ in range(25):
            net.add()
        net.pump(1300)  # replication and republishing both ran
        for n in old:
            net.net.unbind(n.address)
            n.stop()
        newcomers = net.nodes[25:]
        key = int.from_bytes(r.key, "big")
        closest = sorted(net.nodes, key=lambda n: n.table.ownInt ^ key)[:20]
        shouldHold = [n for n in newcomers if n in closest]
        holders = [n for n in shouldHold if n.store.get(r.key, net.clock.seconds())]
        self.assertGreater(len(shouldHold), 3)
        self.assertGreaterEqual(len(holders), len(shouldHold) - 1)
        self.assertEqual(net.run(newcomers[-1].get(r.key), 20).value, b"data")

    def test_sharedKeyManyPublishers(self):
        net = Net(self, 30)
        records = [makeRecord(newIdentity(), b"role", b"r%d" % i, 1, T0 + 3600, kind=SHARED) for i in range(12)]
        for i, r in enumerate(records):
            net.run(net.nodes[i].put(r))
        got = net.run(net.nodes[20].getAll(records[0].key, 12), 20)
        self.assertEqual(sorted(r.value for r in got), sorted(r.value for r in records))

    def test_bootstrapFailsCleanlyAndUsesSavedTable(self):
        net = Net(self, 10)
        lonely = net.add(join=False)
        self.assertIsInstance(net.run(lonely.bootstrap([("198.18.250.250", 1)])), __import__("twisted").python.failure.Failure)
        # a node that knows one saved contact needs no bootstrap address
        lonely.savedContacts = [(net.nodes[3].nodeId, net.nodes[3].address)]
        self.assertGreaterEqual(net.run(lonely.bootstrap([])), 9)


class RobustnessTests(unittest.TestCase):
    def test_randomDatagramsNeverRaiseAndAreCounted(self):
        from hypothesis import given, settings
        from hypothesis import strategies as st

        net = Net(self, 2)
        a = net.nodes[0]

        @settings(max_examples=300, deadline=None)
        @given(st.binary(max_size=1500).map(lambda b: bytes([0x80 | (b[0] & 0x0F if b else 0)]) + b))
        def feed(data):
            before = sum(a.counters.values())
            a.datagramReceived(data, ("198.18.77.1", 9))
            self.assertGreater(sum(a.counters.values()), before)

        feed()
        self.assertGreater(a.counters["dropped_malformed"], 0)

    def test_interfaces(self):
        from zope.interface.verify import verifyObject

        from meshvpn.dht.directory import RelayDirectory
        from meshvpn.interfaces import IDHT, IDatagramHandler, IRelayDirectory

        net = Net(self, 1)
        verifyObject(IDHT, net.nodes[0])
        verifyObject(IDatagramHandler, net.nodes[0])
        verifyObject(IRelayDirectory, RelayDirectory(net.nodes[0], newIdentity()))

    def test_idleBucketsRefreshed(self):
        net = Net(self, 20, refreshIdle=3600.0, refreshCheck=300.0)
        a = net.nodes[5]
        net.clock.advance(3601)
        self.assertGreater(len(a.table.staleBuckets(3600)), 0)
        sent = a.counters["requests_out"]
        a.start()
        net.pump(400, step=0.5)
        self.assertGreater(a.counters["requests_out"], sent)
        self.assertEqual(a.table.staleBuckets(3600), [])
