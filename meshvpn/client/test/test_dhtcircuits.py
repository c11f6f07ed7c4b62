"""The client's DHT through circuits, end to end in memory: real DHT nodes, real circuits, a client with no socket of its own."""

import random
from types import SimpleNamespace

from twisted.internet import task
from twisted.trial import unittest

from meshvpn.client.dhtcircuits import CircuitDatagramTransport, loadSavedRelays
from meshvpn.dht.rpc import DHTConfig
from meshvpn.onion.cells import RelayCommand
from meshvpn.onion.dhtmsgs import encodePieces
from meshvpn.onion.dhtrelay import DHTDatagramRelay
from meshvpn.onion.origin import OriginCircuit
from meshvpn.tools.dhtsim import AddressPool, SimNetwork, makeSimNode
from meshvpn.tools.onionfakes import MemoryNetwork, TestRelay

T0 = 1_800_000_000.0


class _Tapped:
    """A relay's DHT socket: answers to what it carried first, the rest to its DHT node."""

    def __init__(self, carrier, dht):
        self.carrier, self.dht = carrier, dht

    def datagramReceived(self, data, addr):
        if not self.carrier.datagramReceived(data, addr):
            self.dht.datagramReceived(data, addr)


class _Guards:
    def __init__(self, guard):
        self.guard = guard
        self.down = []

    def choose(self, relays):
        return self.guard if self.guard in relays and self.guard.nodeId not in self.down else None

    def succeeded(self, nodeId):
        pass

    def markDown(self, nodeId):
        self.down.append(nodeId)


class _UDP:
    """The client node's own socket: records what would leave it."""

    def __init__(self):
        self.sent = []

    def sendDatagram(self, data, addr):
        self.sent.append((data, addr))


class World:
    """
    Twelve DHT nodes; a guard and two middles (each with its own DHT node
    and carrier on its socket); a client whose DHT node has no socket: it
    sends through L{CircuitDatagramTransport}.
    """

    def __init__(self, case, known=True, middles=2):
        self.clock = task.Clock()
        self.clock.advance(T0)
        self.rng = random.Random(5)
        self.config = DHTConfig(rpcTimeout=0.5, lookupTimeout=0.5, stallTimeout=0.2, powBits=8)
        self.sim = SimNetwork(self.clock, 0.01, 0.0, self.rng)
        pool = AddressPool(self.rng)
        self.nodes = [makeSimNode(self.sim, self.clock, pool.allocate(), self.config, rng=self.rng) for _ in range(12)]
        self.net = MemoryNetwork(self.clock)
        self.dir = {}
        guard = TestRelay(self.net, self.clock, "guard", directory=self.dir)
        self.guardInfo = self._info(guard, {"guard", "middle"}, pool.allocate())
        self.carriers, self.middleInfos = [], []
        for i in range(middles):
            relay = TestRelay(self.net, self.clock, f"middle{i}", directory=self.dir)
            addr = pool.allocate()
            dht = makeSimNode(self.sim, self.clock, addr, self.config, rng=self.rng)
            self.nodes.append(dht)
            carrier = DHTDatagramRelay(
                self.clock, self.sim.sender(addr),
                lambda a, dht=dht, addr=addr: a == addr or any(c.address == a for c in dht.table.contacts()))
            self.sim.bind(addr, _Tapped(carrier, dht))
            relay.switch.datagramRelay = carrier
            self.carriers.append(carrier)
            self.middleInfos.append(self._info(relay, {"middle"}, addr))
        for node in self.nodes[1:]:
            node.bootstrap([self.nodes[0].address])
            self.run(2)
        self.client = TestRelay(self.net, self.clock, "client", directory=self.dir)
        self.client.switch.keyRing = None
        self.udp = _UDP()
        self.bootstrapAddr = self.nodes[0].address
        self.transport = CircuitDatagramTransport(self.clock, self.udp, [self.bootstrapAddr], fallbackAfter=30,
                                                  rng=random.Random(1))
        self.relays = [self.guardInfo, *self.middleInfos] if known else []
        self.guards = _Guards(self.guardInfo)
        self.builds = 0
        self.transport.attach(lambda: list(self.relays), self.guards, self._build)
        self.dht = makeSimNode(self.sim, self.clock, pool.allocate(), self.config, clientMode=True, rng=self.rng)
        self.sim.unbind(self.dht.address)  # the client has no DHT socket of its own here
        self.dht.send = self.transport.send
        self.transport.setReceiver(self.dht)
        case.addCleanup(self.stop)

    def _info(self, relay, roles, dhtAddr):
        descriptor = SimpleNamespace(addresses=[("udp", f"{dhtAddr[0]}:{dhtAddr[1]}")])
        return SimpleNamespace(nodeId=relay.nodeId, roles=frozenset(roles), descriptor=descriptor, spec=relay.hopSpec())

    def _build(self, path):
        self.builds += 1
        link = self.client.linkTo(path[0].nodeId, True)
        return OriginCircuit(self.client.switch, link, [r.spec for r in path]).build()

    def run(self, seconds, step=0.01):
        for _ in range(int(seconds / step)):
            self.net.pump()
            self.clock.advance(step)
        self.net.pump()

    def start(self):
        self.transport.startService()
        ready = []
        self.transport.whenReady().addCallback(ready.append)
        self.run(1)
        return ready

    def stop(self):
        if self.transport.running:
            self.transport.stopService()
        for node in self.nodes + [self.dht]:
            node.stop()
        self.run(0.1)


class SavedState(unittest.TestCase):
    def test_lookupsOnlyThroughCircuits(self):
        """
        With relays known from the last run, the client's DHT joins and looks
        up through two circuits (different middles), and nothing ever leaves
        its own socket.
        """
        w = World(self)
        ready = w.start()
        self.assertEqual(w.transport.mode, "circuits")
        self.assertEqual(len(w.transport.legs), 2)
        self.assertEqual(len({leg.path[-1].nodeId for leg in w.transport.legs}), 2)
        [[extra]] = ready
        self.assertIn(extra, [w.nodes[12].address, w.nodes[13].address])  # the first middle's DHT node
        joined = []
        w.dht.bootstrap([extra]).addBoth(joined.append)
        w.run(10)
        self.assertIsInstance(joined[0], int, joined)
        self.assertGreater(joined[0], 5)
        target = w.nodes[7].nodeId
        found = []
        w.dht.findNode(target).addBoth(found.append)
        w.run(10)
        self.assertEqual(found[0][0][0], target)
        self.assertEqual(w.udp.sent, [])  # not one datagram from the client's own address
        self.assertTrue(all(c.counters["answered"] > 0 for c in w.carriers), [c.counters for c in w.carriers])
        self.assertEqual(w.transport.counters["answers_unasked"], 0)

    def test_nothingLeavesBeforeTheFirstCircuit(self):
        w = World(self)
        w.transport.startService()  # no reactor turn yet: no circuit
        self.assertEqual(w.transport.mode, "waiting")
        w.transport.send(b"\x80" * 100, w.bootstrapAddr)
        self.assertEqual(w.udp.sent, [])
        self.assertEqual(w.transport.counters["sends_held_back"], 1)

    def test_noUsableSavedGuardFallsBackToBootstrap(self):
        w = World(self)
        w.guards.down.append(w.guardInfo.nodeId)  # the saved guard is down: no circuit can be built
        ready = w.start()
        self.assertEqual(ready, [[]])
        self.assertEqual(w.transport.mode, "bootstrap")

    def test_noCircuitInTimeFallsBackToBootstrap(self):
        """Builds that never finish (a guard that hangs) end in a first start after C{fallbackAfter}."""
        from twisted.internet import defer

        w = World(self)
        w.transport._build = lambda path: defer.Deferred()
        ready = w.start()
        self.assertEqual((ready, w.transport.mode), ([], "waiting"))
        w.run(30)
        self.assertEqual((ready, w.transport.mode), ([[]], "bootstrap"))

    def test_guardLostCircuitsRebuilt(self):
        w = World(self)
        w.start()
        for leg in list(w.transport.legs):
            leg.circuit.close()
        w.run(2)
        self.assertEqual(len(w.transport.legs), 2)
        self.assertEqual(w.transport.mode, "circuits")


class FirstStart(unittest.TestCase):
    def test_onlyBootstrapThenOnlyCircuits(self):
        """No saved relays: only the bootstrap node hears from the client, then everything goes by circuit."""
        w = World(self, known=False)
        ready = w.start()
        self.assertEqual(ready, [[]])
        self.assertEqual(w.transport.mode, "bootstrap")
        w.transport.send(b"\x80" * 100, w.bootstrapAddr)
        w.transport.send(b"\x80" * 100, w.nodes[3].address)
        self.assertEqual([a for _, a in w.udp.sent], [w.bootstrapAddr])
        # the directory gave relays: circuits, and from then on nothing direct, not even to the bootstrap node
        w.relays = [w.guardInfo, *w.middleInfos]
        w.run(2)
        self.assertEqual(w.transport.mode, "circuits")
        w.transport.send(b"\x80" * 100, w.bootstrapAddr)
        self.assertEqual(len(w.udp.sent), 1)


class HostileMiddle(unittest.TestCase):
    """The middle is trusted with nothing: what it sends back unasked is dropped, junk closes its circuit."""

    def _lastHopSends(self, w, leg, command, body):
        # the middle's hop of the leg's circuit originates cells toward the client
        [hop] = [e for ch in w.dir[leg.path[-1].nodeId].switch.channels() for e in ch.circuits.values()
                 if hasattr(e, "sendRelay") and e.next is None]
        hop.sendRelay(command, 0, body)
        w.run(0.1)

    def test_unaskedAnswersDropped(self):
        w = World(self, middles=1)
        w.start()
        [leg] = w.transport.legs
        got = []
        w.transport.setReceiver(SimpleNamespace(datagramReceived=lambda d, a: got.append(a)))
        for piece in encodePieces(b"\x81" * 200, ("198.18.9.9", 9000), leg.circuit.maxData):
            self._lastHopSends(w, leg, RelayCommand.DHT_RECEIVED, piece)
        self.assertEqual(got, [])
        self.assertEqual(w.transport.counters["answers_unasked"], 1)

    def test_malformedAnswerClosesThatCircuit(self):
        w = World(self, middles=1)
        w.start()
        [leg] = w.transport.legs
        self._lastHopSends(w, leg, RelayCommand.DHT_RECEIVED, b"\x05\x01junk")
        self.assertNotIn(leg, w.transport.legs)


class SavedRelays(unittest.TestCase):
    def test_damagedOrMissingGivesNone(self):
        d = self.mktemp()
        import os

        os.makedirs(d)
        self.assertEqual(loadSavedRelays(d, T0), {})
        with open(os.path.join(d, "relays.json"), "w") as f:
            f.write('{"relays": [{"descriptor": "!!"}, 3]}')
        self.assertEqual(loadSavedRelays(d, T0), {})
