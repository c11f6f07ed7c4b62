"""The DHT attached to real nodes in this process (real reactor, loopback UDP only)."""

import json
import os

from twisted.internet import defer, reactor, task
from twisted.internet.protocol import Factory, Protocol
from twisted.trial import unittest

from meshvpn.dht.descriptor import parseDescriptor
from meshvpn.dht.service import (
    RELAYS_FILE,
    TABLE_FILE,
    DHTService,
    RelayFinder,
    RelayPublisher,
    loadTable,
    parseBootstrapList,
    parseFlags,
    saveTable,
)
from meshvpn.dht.routing import RoutingTable
from meshvpn.dht.rpc import DHTConfig
from meshvpn.ports import StreamListenerService
from meshvpn.roles.node import Node

# every node here is a process on 127.0.0.1: the explicit option for local test networks
LOCAL = DHTConfig(exemptLoopback=True)


def waitFor(predicate, timeout=10.0, step=0.05):
    """Poll C{predicate} on the reactor (real sockets need real time to pass)."""
    deadline = reactor.seconds() + timeout

    @defer.inlineCallbacks
    def loop():
        while not predicate():
            if reactor.seconds() > deadline:
                raise AssertionError("condition not reached in time")
            yield task.deferLater(reactor, step, lambda: None)

    return loop()


class SettingsTests(unittest.TestCase):
    def test_bootstrapList(self):
        self.assertEqual(parseBootstrapList("127.0.0.1:1, [::1]:2"), [("127.0.0.1", 1), ("::1", 2)])
        self.assertEqual(parseBootstrapList(["127.0.0.1:1"]), [("127.0.0.1", 1)])
        self.assertEqual(parseBootstrapList(""), [])
        self.assertRaises(ValueError, parseBootstrapList, "example.com:1")
        self.assertRaises(ValueError, parseBootstrapList, 7)

    def test_flags(self):
        self.assertEqual(parseFlags("exit,guard"), {"exit", "guard"})
        self.assertRaises(ValueError, parseFlags, "guard,wizard")

    def test_tableFileRoundTripAndDamage(self):
        clock = task.Clock()
        t = RoutingTable(b"\x00" * 32, clock, None, exemptLoopback=True)
        for i in range(1, 30):
            t.seen(bytes([i]) * 32, ("127.0.0.1", 1000 + i))
        path = self.mktemp()
        saveTable(t, path)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        # saved contacts come back as candidates to ask, never straight into a table
        loaded = loadTable(path)
        self.assertEqual({(i, a) for i, a in loaded}, {(c.nodeId, c.address) for c in t.contacts()})
        with open(path, "w") as f:
            f.write('{"version": 1, "contacts": [["zz", "x", -1]]}')
        self.assertEqual(loadTable(path), [])
        self.assertEqual(loadTable(path + ".missing"), [])

    def test_tableFileNotAnObject(self):
        """A table file that is JSON but not an object, or nested past the parser's depth, is damaged, not a crash.

        Found by the bootstrap-file fuzz target (meshvpn/fuzz/regressions/bootstrap-file/table-not-an-object):
        the file C{0} raised AttributeError out of loadTable, and so out of the DHT's start.
        """
        path = self.mktemp()
        for text in ("0", "[]", '"contacts"', "null", "[" * 100000):
            with open(path, "w") as f:
                f.write(text)
            self.assertEqual(loadTable(path), [], text[:20])


def startNode(case, role, settings, bootstrap, flags, stream6=False):
    """A started node of C{role} with its DHT (a relay publishing C{flags}, a client finding relays)."""
    node = Node(reactor, role, settings)
    if role == "relay":
        node.listenStream("tcp:0:interface=127.0.0.1", Factory.forProtocol(Protocol))
        if stream6:
            node.addListener("stream6", StreamListenerService(reactor, "tcp6:0:interface=\\:\\:1",
                                                              Factory.forProtocol(Protocol)))
        dht = DHTService(node, bootstrap, config=LOCAL)
        RelayPublisher(dht, frozenset(flags), 3600).setServiceParent(dht)
    else:
        dht = DHTService(node, bootstrap, clientMode=True, config=LOCAL)
        RelayFinder(dht, 300).setServiceParent(dht)
    dht.setServiceParent(node)
    node.startService()
    case.addCleanup(lambda: node.running and node.stopService())
    return node, dht


class ServiceTests(unittest.TestCase):
    timeout = 60

    def makeNode(self, role, bootstrap=(), flags=("guard", "middle"), dataDir=None):
        return startNode(self, role, {"data_dir": dataDir or self.mktemp(), "udp": ("127.0.0.1", 0)}, bootstrap, flags)

    @defer.inlineCallbacks
    def test_relaysPublishClientFindsAndRestartsFromSavedTable(self):
        a, dhtA = self.makeNode("relay", flags=("guard", "exit", "bootstrap"))
        yield a.whenStarted
        boot = [("127.0.0.1", a.udpService.port.getHost().port)]
        relays = [(a, dhtA)] + [self.makeNode("relay", boot) for _ in range(3)]
        yield defer.gatherResults([d.joined for _, d in relays])
        publishers = [list(d)[0] for _, d in relays]
        yield waitFor(lambda: all(p.published for p in publishers))

        c, dhtC = self.makeNode("client", boot)
        finder = list(dhtC)[0]
        yield waitFor(lambda: len(finder.relays) == 4)
        for node, _ in relays:
            d = finder.relays[node.identity.nodeId]
            self.assertEqual(d.address("udp"), node.addresses()["udp"])
            self.assertEqual(d.address("tls"), node.addresses()["stream"])
        self.assertEqual(finder.relays[a.identity.nodeId].flags, {"guard", "exit", "bootstrap"})
        # clients are never in relays' tables
        for _, d in relays:
            self.assertNotIn(c.identity.nodeId, d.dht.table)
        # relays.json holds raw descriptors anyone can re-verify
        with open(os.path.join(c.dataDir, RELAYS_FILE)) as f:
            listed = json.load(f)["relays"]
        import base64

        self.assertEqual(len(listed), 4)
        for entry in listed:
            parseDescriptor(base64.b64decode(entry["descriptor"]), now=reactor.seconds())
        # lookup by node id through IRelayDirectory
        found = yield dhtC.directory.lookup(relays[2][0].identity.nodeId)
        self.assertEqual(found.nodeId, relays[2][0].identity.nodeId)
        exits = yield dhtC.directory.sample("exit", 5)
        self.assertEqual([d.nodeId for d in exits], [a.identity.nodeId])

        # the client stops, saving its table; restarted without bootstrap it rejoins from it
        yield c.stopService()
        self.assertTrue(os.path.exists(os.path.join(c.dataDir, TABLE_FILE)))
        c2, dhtC2 = self.makeNode("client", (), dataDir=c.dataDir)
        size = yield dhtC2.joined
        self.assertGreaterEqual(size, 4)


class DualStackTests(unittest.TestCase):
    """IPv4 and IPv6 are two overlays; dual-stack relays are in both, announced under each family's address."""

    timeout = 120  # six nodes, two DHTs each: slow on a loaded machine

    def makeNode(self, role, udp, udp6=None, bootstrap=(), flags=("guard", "middle")):
        settings = {"data_dir": self.mktemp(), "udp": udp}
        if udp6:
            settings["udp6"] = udp6
        return startNode(self, role, settings, bootstrap, flags, stream6=True)

    @defer.inlineCallbacks
    def test_ipv6OnlyAndIPv4OnlyClientsBothFindDualStackRelays(self):
        a, dhtA = self.makeNode("relay", ("127.0.0.1", 0), ("::1", 0), flags=("guard", "exit", "bootstrap"))
        info = yield a.whenStarted
        self.assertIn("udp6", info)
        self.assertIn("stream6", info)
        boot4 = ("127.0.0.1", a.udpService.port.getHost().port)
        boot6 = ("::1", a.udp6Service.port.getHost().port)
        relays = [(a, dhtA)] + [self.makeNode("relay", ("127.0.0.1", 0), ("::1", 0), [boot4, boot6])
                                for _ in range(3)]
        yield defer.gatherResults([o.joined for _, d in relays for o in d.overlays])
        self.assertEqual([o.family for o in dhtA.overlays], [4, 6])
        publishers = [list(d)[0] for _, d in relays]
        yield waitFor(lambda: all(p.published for p in publishers), timeout=40)

        c6, dht6 = self.makeNode("client", ("::1", 0), bootstrap=[boot6])
        c4, dht4 = self.makeNode("client", ("127.0.0.1", 0), bootstrap=[boot4])
        finders = [list(dht6)[0], list(dht4)[0]]
        yield waitFor(lambda: all(len(f.relays) == 4 for f in finders), timeout=60)
        for node, _ in relays:
            for f in finders:
                d = f.relays[node.identity.nodeId]
                self.assertEqual(sorted(a for t, a in d.addresses if t == "udp"),
                                 sorted([node.addresses()["udp"], node.addresses()["udp6"]]))
                self.assertEqual(len(d.linkAddresses), 2)
        # the IPv6-only client's table holds IPv6 addresses only, and it sent nothing on IPv4
        self.assertTrue(all(":" in c.address[0] for c in dht6.dht.table.contacts()))
        # each relay's second table is IPv6, its first IPv4
        for _, d in relays:
            self.assertTrue(all(":" not in c.address[0] for c in d.overlays[0].dht.table.contacts()))
            self.assertTrue(all(":" in c.address[0] for c in d.overlays[1].dht.table.contacts()))
            self.assertIn("ipv6", d.status()["overlays"])
        exits = yield dht6.directory.sample("exit", 5)
        self.assertEqual([d.nodeId for d in exits], [a.identity.nodeId])

    def test_bothSocketsOfOneFamilyRefused(self):
        self.assertRaises(SystemExit, Node, reactor, "relay",
                          {"data_dir": self.mktemp(), "udp": ("127.0.0.1", 0), "udp6": ("127.0.0.2", 0)})


class OnionRingTests(unittest.TestCase):
    def test_descriptorCarriesCurrentAndNextKeys(self):
        from meshvpn.dht.service import onionKeysFromRing
        from meshvpn.dht.descriptor import encodeDescriptor, makeDescriptor, parseDescriptor
        from meshvpn.identity import NodeIdentity

        class Ring:
            rotatedAt = 1_800_000_000.0
            overlap = 600

            def publicKeys(self):
                return {"current": b"c" * 32, "next": b"n" * 32}

        keys = onionKeysFromRing(Ring(), 3600)(1_800_000_100)
        ident = NodeIdentity.generate()
        d = makeDescriptor(ident, {"udp": "127.0.0.1:1", "tls": "127.0.0.1:2"}, {"middle"}, 1_800_000_100, onionKeys=keys)
        p = parseDescriptor(encodeDescriptor(d), now=1_800_000_200)
        self.assertEqual([k.key for k in p.onionKeys], [b"c" * 32, b"n" * 32])
        self.assertEqual(p.currentOnionKey(1_800_004_000), b"c" * 32)
        self.assertEqual(p.linkAddresses, (("tls", "127.0.0.1:2"),))


class RefreshSoonTests(unittest.TestCase):
    def finder(self, enough):
        from meshvpn.dht.service import RelayFinder

        clock = task.Clock()
        samples = []

        class Directory:
            rejected = 0

            def sample(self, role, count):
                samples.append(clock.seconds())
                return defer.succeed([])

        class FakeDHT:
            joined = defer.succeed(3)
            directory = Directory()
            node = type("N", (), {"reactor": clock, "dataDir": self.mktemp()})()

        os.makedirs(FakeDHT.node.dataDir)
        finder = RelayFinder(FakeDHT(), interval=100, enough=lambda ds: enough[0])
        finder.startService()
        self.addCleanup(finder.stopService)
        return finder, clock, samples

    def rounds(self, samples):
        return sorted(set(samples))

    def test_oneSamplingLoopOnly(self):
        finder, clock, samples = self.finder([False])
        for _ in range(5):
            finder.refreshSoon()  # many asks move the one scheduled sampling to now
        clock.advance(0)
        self.assertEqual(len(samples), 7)  # one round: a sample per role, at once on joining
        clock.advance(0.5)
        self.assertEqual(len(samples), 14)  # not a second loop: the next round of the same one
        finder.refreshSoon()
        clock.advance(0)
        self.assertEqual(len(samples), 21)

    def test_quickUntilAPathThenTheInterval(self):
        enough = [False]
        finder, clock, samples = self.finder(enough)
        clock.advance(0)
        clock.pump([0.25] * 60)  # 15 s
        self.assertEqual(self.rounds(samples), [0, 0.5, 1.5, 3.5, 7.5, 11.5])
        enough[0] = True
        clock.pump([1] * 400)
        gaps = [b - a for a, b in zip(self.rounds(samples), self.rounds(samples)[1:])]
        self.assertEqual(gaps[6:], [4, 8, 16, 32, 64, 100, 100])  # back off to --dht-sample-interval
