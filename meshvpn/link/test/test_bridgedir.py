"""DIRECTORY records and the directory over links: parser bounds (hypothesis), rate limits, bad records close only their link."""

from hypothesis import given, settings, strategies as st
from twisted.internet import defer, task
from twisted.trial import unittest

from meshvpn.dht.descriptor import encodeDescriptor, makeDescriptor
from meshvpn.errors import LinkError
from meshvpn.identity import NodeIdentity
from meshvpn.link import dirwire
from meshvpn.link.bridgedir import BridgeDirectory, DirectoryChannel
from meshvpn.link.pt.args import parseBridgeLine


class WireTests(unittest.TestCase):
    def test_roundTrip(self):
        self.assertEqual(dirwire.decodeRecord(dirwire.encodeRequest(7, dirwire.WHAT_RELAYS, 64)),
                         dirwire.Request(7, dirwire.WHAT_RELAYS, 64))
        entries = [bytes([i]) * (300 + i) for i in range(10)]
        records = dirwire.encodeResponse(9, dirwire.OK, entries)
        self.assertGreater(len(records), 1)
        chunks = [dirwire.decodeRecord(r) for r in records]
        self.assertTrue(all(len(r) <= 1024 for r in records))
        self.assertEqual([c.last for c in chunks], [False] * (len(chunks) - 1) + [True])
        self.assertEqual(dirwire.splitEntries(b"".join(c.chunk for c in chunks)), entries)

    def test_malformed(self):
        for payload, why in [(b"", "empty"), (b"\x01\x00", "request of 2 bytes"), (b"\x09", "unknown DIRECTORY operation"),
                             (dirwire.encodeRequest(1, 7, 0), "request for 7"),
                             (dirwire.encodeRequest(1, 2, 9999), "request for 2/9999"),
                             (b"\x02\x00\x00\x00\x01\x04\x00", "unknown flags")]:
            e = self.assertRaises(dirwire.DirectoryWireError, dirwire.decodeRecord, payload)
            self.assertIn(why, str(e))
        self.assertRaises(dirwire.DirectoryWireError, dirwire.splitEntries, b"\x00\x05abc")
        self.assertRaises(dirwire.DirectoryWireError, dirwire.splitEntries, b"\x00\x00")

    @settings(deadline=None)  # timing is noisy on a shared machine
    @given(st.binary(max_size=1100))
    def test_anyPayload(self, payload):
        try:
            dirwire.decodeRecord(payload)
        except dirwire.DirectoryWireError:
            pass

    @settings(deadline=None)  # timing is noisy on a shared machine
    @given(st.binary(max_size=600))
    def test_anyEntries(self, body):
        try:
            entries = dirwire.splitEntries(body)
        except dirwire.DirectoryWireError:
            return
        self.assertEqual(sum(2 + len(e) for e in entries), len(body))


class FakeLink:
    """Two of these joined: what one sends the other's channel receives (synchronously)."""

    def __init__(self):
        self.peer = None
        self.channel = None
        self.closed = None
        self._closed = defer.Deferred()

    def sendDirectory(self, payload):
        if self.closed is not None:
            return False
        self.peer.channel.directoryReceived(self.peer, payload)
        return True

    def whenClosed(self):
        d = defer.Deferred()
        self._closed.addBoth(lambda r: (d.callback(r), r)[1])
        return d

    def close(self, reason):
        if self.closed is None:
            self.closed = reason
            self._closed.callback(reason)


def pair(clientChannel, bridgeChannel):
    a, b = FakeLink(), FakeLink()
    a.peer, b.peer = b, a
    a.channel, b.channel = clientChannel, bridgeChannel
    return a, b


class Responder:
    def __init__(self, own, relays):
        self.own, self._relays = own, relays

    def ownDescriptor(self):
        return self.own

    def relays(self, count):
        return self._relays[:count]


def descriptor(clock, flags=("guard", "middle"), address="198.18.0.1:9001"):
    return makeDescriptor(NodeIdentity.generate(), {"udp": "198.18.0.1:9000", "tls": address}, frozenset(flags),
                          published=clock.seconds())


class ChannelTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        self.bridgeId = NodeIdentity.generate()
        self.own = makeDescriptor(self.bridgeId, {"udp": "198.18.6.2:9000", "obfs4": "198.18.6.2:443"},
                                  frozenset({"guard", "middle"}), published=self.clock.seconds())
        self.relays = [descriptor(self.clock, ("exit",), f"198.19.0.{i}:9001") for i in range(1, 4)]
        self.bridge = DirectoryChannel(self.clock, Responder(self.own, self.relays))
        self.client = DirectoryChannel(self.clock)

    @defer.inlineCallbacks
    def test_askAndAnswer(self):
        a, _ = pair(self.client, self.bridge)
        [own] = yield self.client.ask(a, dirwire.WHAT_SELF)
        self.assertEqual(own, encodeDescriptor(self.own))
        got = yield self.client.ask(a, dirwire.WHAT_RELAYS, 2)
        self.assertEqual(got, [encodeDescriptor(d) for d in self.relays[:2]])

    @defer.inlineCallbacks
    def test_rateLimitedPerLink(self):
        a, _ = pair(self.client, self.bridge)
        for _ in range(20):
            yield self.client.ask(a, dirwire.WHAT_SELF)
        e = yield self.assertFailure(self.client.ask(a, dirwire.WHAT_SELF), LinkError)
        self.assertIn("refused", str(e))
        c, _ = pair(DirectoryChannel(self.clock), self.bridge)  # another link is not held back
        c.channel.ask(c, dirwire.WHAT_SELF)

    @defer.inlineCallbacks
    def test_clientRefusesToAnswer(self):
        a, b = pair(self.bridge, self.client)  # the bridge asks the client: clients answer nothing
        e = yield self.assertFailure(self.bridge.ask(a, dirwire.WHAT_RELAYS, 5), LinkError)
        self.assertIn("refused", str(e))

    def test_badRecordClosesOnlyThatLink(self):
        a, b = pair(self.client, self.bridge)
        c, d = pair(DirectoryChannel(self.clock), self.bridge)
        self.bridge.directoryReceived(b, b"\x77garbage")
        self.assertIsInstance(b.closed, dirwire.DirectoryWireError)
        self.assertIsNone(d.closed)
        self.assertEqual(self.bridge.counters["bad_records"], 1)

    @defer.inlineCallbacks
    def test_bridgeBeforeVersion4IsNamed(self):
        """A bridge whose link negotiated version 3 is not sent a request it would not know; the error says why."""
        a, _ = pair(self.client, self.bridge)
        a.version = 3
        a.sendDirectory = lambda payload: self.fail("DIRECTORY sent on a version 3 link")
        e = yield self.assertFailure(self.client.ask(a, dirwire.WHAT_SELF), LinkError)
        self.assertIn("link version 3", str(e))
        self.assertEqual(self.client._pending, {})

    @defer.inlineCallbacks
    def test_timeout(self):
        a = FakeLink()
        a.sendDirectory = lambda payload: True  # the request vanishes
        d = self.client.ask(a, dirwire.WHAT_SELF, timeout=5)
        self.clock.advance(6)
        yield self.assertFailure(d, defer.TimeoutError)
        self.assertEqual(self.client._pending, {})

    @defer.inlineCallbacks
    def test_oversizedAnswerIsRefused(self):
        a = FakeLink()
        a.sendDirectory = lambda payload: True
        d = self.client.ask(a, dirwire.WHAT_RELAYS, 5)
        requestId = next(iter(self.client._pending))[1]
        record = dirwire.encodeResponse(requestId, dirwire.OK, [b"x" * 1000])[0]
        notLast = record[:5] + b"\x00" + record[6:]
        for _ in range(dirwire.MAX_RESPONSE // dirwire.CHUNK + 5):
            if a.closed is not None:
                break
            self.client.directoryReceived(a, notLast)
        self.assertIsInstance(a.closed, dirwire.DirectoryWireError)
        self.assertEqual(self.client._pending, {})
        e = yield self.assertFailure(d, dirwire.DirectoryWireError)
        self.assertIn("over", str(e))


class BridgeDirectoryTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_bridgeIsTheOnlyGuardAndDialledAtItsLine(self):
        clock = task.Clock()
        clock.advance(1_700_000_000)
        bridgeId = NodeIdentity.generate()
        own = makeDescriptor(bridgeId, {"udp": "198.18.6.2:9000", "obfs4": "198.18.6.2:443"},
                             frozenset({"guard", "middle"}), published=clock.seconds())
        public = [descriptor(clock, ("guard", "middle"), f"198.19.0.{i}:9001") for i in range(1, 4)]
        bridgeChannel = DirectoryChannel(clock, Responder(own, public))
        clientChannel = DirectoryChannel(clock)
        a, _ = pair(clientChannel, bridgeChannel)

        class Links:
            def getLink(self, target):
                self.target = target
                return defer.succeed(a)

        links = Links()
        line = parseBridgeLine(f"obfs4 198.18.6.2:443 {bridgeId.nodeIdHex} cert=abc iat-mode=0")
        directory = BridgeDirectory(clock, links, clientChannel, [line])
        yield directory.refresh()
        self.assertEqual(links.target.addresses, (("obfs4", "198.18.6.2:443 cert=abc iat-mode=0"),))
        entry = directory.relays[bridgeId.nodeId]
        self.assertEqual(entry.flags, frozenset({"guard"}))
        self.assertEqual(entry.linkAddresses, (("obfs4", "198.18.6.2:443 cert=abc iat-mode=0"),))
        for d in public:
            self.assertNotIn("guard", directory.relays[d.nodeId].flags)
            self.assertIn("middle", directory.relays[d.nodeId].flags)
        from meshvpn.circuits.relayinfo import relayInfo

        self.assertEqual(relayInfo(entry).hosts, ("198.18.6.2",))

    @defer.inlineCallbacks
    def test_wrongBridgeIdentityIsUnusable(self):
        clock = task.Clock()
        clock.advance(1_700_000_000)
        other = descriptor(clock)
        clientChannel = DirectoryChannel(clock)
        a, _ = pair(clientChannel, DirectoryChannel(clock, Responder(other, [])))

        class Links:
            def getLink(self, target):
                return defer.succeed(a)

        line = parseBridgeLine(f"obfs4 198.18.6.2:443 {'ab' * 32} cert=abc iat-mode=0")
        directory = BridgeDirectory(clock, Links(), clientChannel, [line])
        yield directory.refresh()
        self.assertEqual(directory.relays, {})
        self.assertIn("another relay's descriptor", directory.errors["ab" * 32])
