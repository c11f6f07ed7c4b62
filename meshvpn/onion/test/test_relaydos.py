"""A relay under attack: CREATE2 floods (per-address limits, a node-wide budget
shared round-robin), onion keys looked up without new CPU work, and EXTEND2
targets that would make the relay dial its own host or private networks."""

import hashlib
import ipaddress

from hypothesis import given, strategies as st
from twisted.internet import defer, task
from twisted.trial import unittest

from meshvpn.onion import keyring, ntor
from meshvpn.onion.cells import HTYPE_NTOR, Command, Create2, DestroyReason, encodeCell
from meshvpn.onion.keyring import OnionKeyRing
from meshvpn.onion.origin import HopSpec, OriginCircuit
from meshvpn.onion.switch import CircuitSwitch, ExtendRefused, SwitchLimits, checkExtendTarget
from meshvpn.tools.onionfakes import MemoryNetwork, TestRelay


class FakeLink:
    """A peer's link as the switch sees it: records what the relay sends."""

    isInitiator = False

    def __init__(self, remoteHost, peerId=None):
        self.remoteHost = remoteHost
        self.peerId = peerId
        self.sent = []
        self._closed = defer.Deferred()

    def setCellReceiver(self, receiver):
        pass

    def whenClosed(self):
        return self._closed

    def acquire(self):
        pass

    def release(self):
        pass

    def sendCells(self, cells):
        self.sent.extend(cells)

    def answers(self):
        """@return: C{(created, destroyed)} circuit ids."""
        created = [int.from_bytes(c[:4], "big") for c in self.sent if c[4] == Command.CREATED2]
        destroyed = [int.from_bytes(c[:4], "big") for c in self.sent if c[4] == Command.DESTROY]
        return created, destroyed


class Relay:
    def __init__(self, limits):
        self.clock = task.Clock()
        self.nodeId = hashlib.sha256(b"relay").digest()
        self.ring = OnionKeyRing(self.clock)
        self.switch = CircuitSwitch(self.clock, self.nodeId, self.ring, limits=limits)
        self._next = {}

    def link(self, host):
        link = FakeLink(host)
        return link, self.switch.attachLink(link)

    def creates(self, channel, count):
        """C{count} CREATE2 cells with fresh circuit ids, as one read batch."""
        B = self.ring.publicKeys()["current"]
        cells = []
        for _ in range(count):
            circId = self._next.get(channel, 1) | 0x80000000
            self._next[channel] = (circId & 0x7FFFFFFF) + 1
            skin = ntor.clientCreate(self.nodeId, B)[1]
            cells.append(encodeCell(circId, Command.CREATE2, Create2(HTYPE_NTOR, skin).encode()))
        channel.receive(cells)
        self.clock.advance(0)


class OnionKeyLookup(unittest.TestCase):
    def test_findKeyComputesNoPublicKey(self):
        """
        A CREATE2 must not cost the relay base-point multiplications to find
        its own key (the old ring computed the public keys of current and
        next on every lookup: two X25519 operations for whoever asks).
        """
        ring = OnionKeyRing(task.Clock())
        current, upcoming = ring.publicKeys()["current"], ring.publicKeys()["next"]
        calls = []
        real = keyring.crypto_scalarmult_base
        self.patch(keyring, "crypto_scalarmult_base", lambda k: calls.append(1) or real(k))
        for _ in range(10):
            self.assertEqual(ring.findKey(current), ring.current)
            self.assertEqual(ring.findKey(upcoming), ring.next)
            self.assertIsNone(ring.findKey(b"\x07" * 32))
        self.assertEqual(calls, [])

    def test_rotationKeepsThePublicKeysRight(self):
        ring = OnionKeyRing(task.Clock())
        before = ring.publicKeys()
        ring.rotate()
        after = ring.publicKeys()
        self.assertEqual(after["current"], before["next"])
        self.assertEqual(after["current"], OnionKeyRing.public(ring.current))
        self.assertEqual(after["next"], OnionKeyRing.public(ring.next))
        self.assertEqual(ring.findKey(before["current"]), OnionKeyRing(task.Clock(), current=ring._previous[0][0]).current)


class CreateFlood(unittest.TestCase):
    def test_newLinkBringsNoNewBurst(self):
        """
        The CREATE2 bucket is the peer address's, not the link's: opening
        link after link from one address must not buy a fresh burst each
        time (the old switch gave every new link 100 handshakes at once).
        """
        relay = Relay(SwitchLimits(createRate=50.0, createBurst=100, createGlobalRate=1e6, createGlobalBurst=10**6))
        created = 0
        for _ in range(10):
            link, channel = relay.link("203.0.113.66")
            relay.creates(channel, 100)
            created += len(link.answers()[0])
        self.assertEqual(created, 100)
        self.assertEqual(relay.switch.counters["create_refused"], 900)
        # Another address has its own bucket.
        honest, channel = relay.link("198.51.100.7")
        relay.creates(channel, 5)
        self.assertEqual(len(honest.answers()[0]), 5)

    def test_nodeWideBudget(self):
        """
        Many addresses flooding together (a botnet) get no more handshakes
        per second than the node's budget: the CPU for moving cells stays.
        """
        limits = SwitchLimits(createGlobalRate=100.0, createGlobalBurst=20, createQueuePerPeer=4)
        relay = Relay(limits)
        links = [relay.link(f"203.0.113.{i}") for i in range(1, 41)]
        for second in range(5):
            for _, channel in links:
                relay.creates(channel, 10)
            for _ in range(100):
                relay.clock.advance(0.01)
        answered = relay.switch.counters["circuits_created"]
        self.assertLessEqual(answered, 20 + 100 * 5 + 1)
        self.assertGreater(answered, 400)  # and the budget is used, not wasted
        relay.clock.advance(limits.createMaxDelay + 1)
        self.assertEqual(relay.switch.createsWaiting(), 0)

    def test_honestPeerGetsItsTurnDuringAFlood(self):
        """
        While one address floods (over many links, as fast as its buckets
        allow), another's CREATE2 waits at most one round-robin turn, not
        behind the flooder's queue.
        """
        limits = SwitchLimits(createRate=1000.0, createBurst=1000, createGlobalRate=200.0, createGlobalBurst=10)
        relay = Relay(limits)
        attackers = [relay.link("203.0.113.66") for _ in range(20)]
        honest, honestChannel = relay.link("198.51.100.7")
        waits = []
        for step in range(200):  # two seconds in 10 ms steps
            for _, channel in attackers:
                relay.creates(channel, 5)
            if step % 20 == 10:
                before = len(honest.answers()[0])
                relay.creates(honestChannel, 1)
                t0 = relay.clock.seconds()
                while len(honest.answers()[0]) == before and not honest.answers()[1]:
                    relay.clock.advance(0.005)
                waits.append(relay.clock.seconds() - t0)
                self.assertEqual(honest.answers()[1], [], "the honest CREATE2 was refused")
            relay.clock.advance(0.01)
        self.assertEqual(len(waits), 10)
        self.assertLessEqual(max(waits), 0.05)
        # the flood itself got no more than the budget
        self.assertLessEqual(relay.switch.counters["circuits_created"], 10 + 200 * relay.clock.seconds() + 1)

    def test_waitingIsBounded(self):
        """A peer's waiting CREATE2s are bounded in number and in time; the rest are refused at once."""
        limits = SwitchLimits(createRate=1e6, createBurst=10**6, createGlobalRate=1.0, createGlobalBurst=1,
                              createQueuePerPeer=8, createMaxDelay=2.0)
        relay = Relay(limits)
        link, channel = relay.link("203.0.113.66")
        relay.creates(channel, 50)
        created, destroyed = link.answers()
        self.assertEqual(len(created), 1)
        self.assertEqual(len(destroyed), 50 - 1 - 8)
        self.assertEqual(relay.switch.createsWaiting(), 8)
        relay.clock.advance(1.0)  # one token: one answered
        relay.clock.advance(1.5)  # the rest waited too long
        created, destroyed = link.answers()
        self.assertEqual(len(created), 2)
        self.assertEqual(relay.switch.createsWaiting(), 0)
        self.assertEqual(relay.switch.counters["create_expired"], 7)
        self.assertTrue(all(c[5] == DestroyReason.RESOURCELIMIT for c in link.sent if c[4] == Command.DESTROY))

    def test_closedLinkLeavesNothingQueued(self):
        limits = SwitchLimits(createGlobalRate=1.0, createGlobalBurst=1)
        relay = Relay(limits)
        link, channel = relay.link("203.0.113.66")
        relay.creates(channel, 10)
        channel.linkClosed(None)
        relay.clock.advance(20)
        self.assertEqual(relay.switch.createsWaiting(), 0)
        self.assertEqual(relay.switch.counters["circuits_created"], 1)


class ExtendTargets(unittest.TestCase):
    def _world(self, limits=None, own=()):
        clock = task.Clock()
        net = MemoryNetwork(clock)
        d = {}
        relay = TestRelay(net, clock, "relay", limits=limits or SwitchLimits(), directory=d)
        relay.switch.localAddresses = frozenset(ipaddress.ip_address(a) for a in own)
        target = TestRelay(net, clock, "target", directory=d)
        client = TestRelay(net, clock, "client", directory=d)
        dialled = []
        real = relay.switch.connector
        relay.switch.connector = lambda ext: dialled.append(getattr(ext, "linkAddresses", ext)) or real(ext)
        return net, relay, target, client, dialled

    def _extend(self, net, relay, target, client, addresses=(), transports=()):
        spec = HopSpec(target.nodeId, target.keyRing.publicKeys()["current"], addresses, transports)
        circ = OriginCircuit(client.switch, client.linkTo(relay.nodeId), [relay.hopSpec(), spec])
        results = []
        circ.build().addBoth(results.append)
        net.pump()
        return results[0]

    def test_extendIntoASuspectedLinkIsTruncatedAtOnce(self):
        """
        The relay's link to the target answers no PING: a new EXTEND2 to it
        is answered TRUNCATED in the same turn, no CREATE2 goes into that
        link, and nothing is dialled; once the link answers again, it
        extends as before.
        """
        net, relay, target, client, dialled = self._world(own=("198.18.0.5",))
        first = self._extend(net, relay, target, client, addresses=(("198.18.0.7", 9001),))
        self.assertIsInstance(first, OriginCircuit)
        link = relay.switch.linkToPeer(target.nodeId)
        link.suspected = True
        creates = target.switch.counters["circuits_created"]
        dialled.clear()
        second = self._extend(net, relay, target, client, addresses=(("198.18.0.7", 9001),))
        self.assertNotIsInstance(second, OriginCircuit)
        self.assertEqual(relay.switch.counters["extend_suspected"], 1)
        self.assertEqual(target.switch.counters["circuits_created"], creates)
        self.assertEqual(dialled, [])
        link.suspected = False
        third = self._extend(net, relay, target, client, addresses=(("198.18.0.7", 9001),))
        self.assertIsInstance(third, OriginCircuit)

    def test_privateAndLoopbackTargetsAreNeverDialled(self):
        """
        A client names the relay's own loopback service, a private network
        and link-local addresses: the relay dials none of them (the old
        relay sent a TLS ClientHello to its own 127.0.0.1 port).
        """
        for host in ("127.0.0.1", "10.1.2.3", "192.168.1.1", "172.16.0.9", "169.254.169.254", "100.64.0.1",
                     "0.0.0.0", "::1", "fe80::1", "fd00::1", "::ffff:127.0.0.1", "224.0.0.1"):
            net, relay, target, client, dialled = self._world()
            where = f"[{host}]:22" if ":" in host else f"{host}:22"
            result = self._extend(net, relay, target, client, transports=(f"tls {where}",))
            self.assertFalse(isinstance(result, OriginCircuit), host)
            self.assertEqual(dialled, [], host)
            self.assertEqual(relay.switch.counters["extend_refused"], 1, host)

    def test_ownAddressIsNeverDialled(self):
        net, relay, target, client, dialled = self._world(own=("198.18.0.5",))
        result = self._extend(net, relay, target, client, addresses=(("198.18.0.5", 22),))
        self.assertNotIsInstance(result, OriginCircuit)
        self.assertEqual(dialled, [])

    def test_namesAndOddTransportAddressesAreRefused(self):
        refused = [("tls", "localhost:22"), ("obfs", "a-bridge-line"), ("tls", "198.18.0.9:0"), ("tls", "198.18.0.9")]
        self.assertRaises(ExtendRefused, checkExtendTarget, refused)

    def test_publicTargetsAreDialledAndTheRestDropped(self):
        net, relay, target, client, dialled = self._world(own=("198.18.0.5",))
        result = self._extend(net, relay, target, client, addresses=(("127.0.0.1", 9001), ("198.18.0.7", 9001)),
                              transports=("tls 198.18.0.5:9001", "tls [2001:db8::7]:9001"))
        self.assertIsInstance(result, OriginCircuit)
        self.assertEqual(dialled, [(("tls", "[2001:db8::7]:9001"), ("tls", "198.18.0.7:9001"))])

    @given(st.lists(st.tuples(st.text(max_size=12), st.one_of(
        st.text(max_size=40),
        st.builds(lambda ip, port: f"{ip}:{port}", st.ip_addresses(v=4), st.integers(-5, 70000)),
        st.builds(lambda ip, port: f"[{ip}]:{port}", st.ip_addresses(v=6), st.integers(-5, 70000)),
    )), max_size=6))
    def test_anyTargetListIsCheckedWithoutCrashing(self, pairs):
        """Whatever a client names: only public IP:PORT targets survive, anything else is dropped, never an error."""
        from meshvpn.hostport import splitHostPort
        from meshvpn.localaddrs import isInternal

        try:
            kept = checkExtendTarget(pairs, frozenset())
        except ExtendRefused:
            return
        for transport, address in kept:
            host, port = splitHostPort(address)
            self.assertFalse(isInternal(host))
            self.assertTrue(1 <= port <= 65535)

    def test_testNetworkOptIn(self):
        net, relay, target, client, dialled = self._world(limits=SwitchLimits(extendAllowPrivate=True))
        result = self._extend(net, relay, target, client, addresses=(("127.0.0.1", 9001),))
        self.assertIsInstance(result, OriginCircuit)
        self.assertEqual(dialled, [(("tls", "127.0.0.1:9001"),)])


class HeldNotRefusedCellByCell(unittest.TestCase):
    def test_floodingPeerIsHeldThenResumed(self):
        """
        A peer over its CREATE2 rate stops being read (its flood waits in
        its own socket buffer) until a token is back; the relay does not
        spend a decryption and a DESTROY on each of its cells.
        """
        from zope.interface import implementer
        from twisted.internet.interfaces import IPushProducer

        @implementer(IPushProducer)
        class PausableLink(FakeLink):
            paused = 0

            def pauseProducing(self):
                self.paused += 1

            def resumeProducing(self):
                self.paused -= 1

            def stopProducing(self):
                pass

        relay = Relay(SwitchLimits(createRate=10.0, createBurst=5))
        link = PausableLink("203.0.113.66")
        channel = relay.switch.attachLink(link)
        other = PausableLink("203.0.113.66")
        otherChannel = relay.switch.attachLink(other)
        relay.creates(channel, 5)
        self.assertEqual(link.paused, 0)
        relay.creates(channel, 1)
        self.assertEqual(link.paused, 1)
        relay.creates(otherChannel, 1)  # the same address's other link is held too
        self.assertEqual(other.paused, 1)
        relay.clock.advance(0.1)
        self.assertEqual((link.paused, other.paused), (0, 0))
        honest = PausableLink("198.51.100.7")
        relay.creates(relay.switch.attachLink(honest), 5)
        self.assertEqual(honest.paused, 0)
