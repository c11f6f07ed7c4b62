"""The DHT wire codec: every message round-trips, and nothing else parses."""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from meshvpn.dht import wire

ids = st.binary(min_size=32, max_size=32)
eight = st.binary(min_size=8, max_size=8)
ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
ipv6 = st.binary(min_size=16, max_size=16).map(
    lambda b: __import__("ipaddress").IPv6Address(b).compressed
)
addrs = st.tuples(st.one_of(ipv4, ipv6), st.integers(1, 65535))
peers = st.builds(wire.Peer.of, ids, eight, addrs)
contacts = st.lists(peers, max_size=wire.MAX_CONTACTS)
records = st.lists(st.binary(min_size=1, max_size=300), max_size=4)
REQUEST_FLAGS = st.sampled_from([0, wire.FLAG_CLIENT, wire.FLAG_PROVE, wire.FLAG_CLIENT | wire.FLAG_PROVE])


def payloads(kind):
    return {
        wire.PING: st.none(),
        wire.PONG: addrs,
        wire.FIND_NODE: ids,
        wire.FIND_VALUE: ids,
        wire.NODES: contacts,
        wire.VALUE: st.tuples(records, st.lists(peers, max_size=8)),
        wire.STORE: st.binary(min_size=1, max_size=1200),
        wire.STORE_RESULT: st.sampled_from(sorted(wire.RESULT_CODES)),
        wire.SAMPLE: st.tuples(ids, st.binary(max_size=wire.MAX_SALT)),
    }[kind]


def flagsFor(kind):
    return st.sampled_from([0, wire.FLAG_CLIENT]) if kind in wire.RESPONSES else REQUEST_FLAGS


messages = st.sampled_from(sorted(wire.NAMES)).flatmap(
    lambda kind: st.tuples(st.just(kind), eight, ids, payloads(kind), flagsFor(kind), eight, eight)
)


def encode(m, **kw):
    kind, txid, key, payload, flags, work, token = m
    return wire.encode(kind, txid, key, payload, flags, work=work, token=token, **kw)


class CodecTests(unittest.TestCase):
    @settings(max_examples=400)
    @given(messages)
    def test_roundTrip(self, m):
        kind, txid, key, payload, flags, work, token = m
        data = encode(m)
        self.assertLessEqual(len(data), wire.MAX_DATAGRAM)
        self.assertEqual(data[0] & 0xF0, 0x80)
        msg = wire.decode(data)
        self.assertEqual((msg.kind, msg.txid, msg.senderKey, msg.work, msg.token), (kind, txid, key, work, token))
        self.assertEqual(msg.flags & ~wire.FLAG_TRUNCATED, flags)
        self.assertEqual(msg.size, len(data))
        if kind == wire.VALUE:
            # the encoder keeps what fits; what it keeps comes back unchanged
            self.assertEqual(msg.payload[0], payload[0][: len(msg.payload[0])])
            self.assertEqual(msg.payload[1], payload[1][: len(msg.payload[1])])
        else:
            self.assertEqual(msg.payload, payload)
        self.assertEqual(encode((kind, txid, key, msg.payload, flags, work, token)), data)

    @settings(max_examples=300)
    @given(messages, st.integers(0, wire.MAX_DATAGRAM))
    def test_roomIsNeverExceeded(self, m, padding):
        """An answer to an address without a token fits the request's size: it is cut and flagged."""
        kind = m[0]
        if kind not in wire.RESPONSES:
            return
        room = wire.HEADER_LEN + 20 + padding
        data = encode(m, room=room)
        if kind in (wire.NODES, wire.VALUE):
            self.assertLessEqual(len(data), room)
        msg = wire.decode(data)
        if kind == wire.NODES and len(msg.payload) < len(m[3]):
            self.assertTrue(msg.truncated)

    @settings(max_examples=200)
    @given(messages)
    def test_signedAnswers(self, m):
        kind = m[0]
        if kind not in wire.RESPONSES:
            return
        data = encode(m, sign=lambda unsigned: b"S" * wire.SIG_LEN)
        msg = wire.decode(data)
        self.assertEqual(msg.signature, b"S" * wire.SIG_LEN)
        self.assertEqual(msg.signedPart, data[: -wire.SIG_LEN])
        self.assertTrue(msg.flags & wire.FLAG_SIGNED)

    def test_pingIsPaddedToTheBiggestPong(self):
        ping = wire.encode(wire.PING, b"t" * 8, b"k" * 32, flags=wire.FLAG_PROVE)
        pong = wire.encode(wire.PONG, b"t" * 8, b"k" * 32, ("2001:db8::1", 9), sign=lambda b: b"s" * 64)
        self.assertEqual(len(ping), wire.PING_LEN)
        self.assertLessEqual(len(pong), len(ping))
        self.assertRaises(wire.WireError, wire.decode, ping[:-1])
        self.assertRaises(wire.WireError, wire.decode, ping[:-1] + b"\x01")

    def test_padding(self):
        data = wire.encode(wire.FIND_NODE, b"t" * 8, b"k" * 32, b"x" * 32, padTo=1000)
        self.assertEqual(len(data), 1000)
        self.assertEqual(wire.decode(data).payload, b"x" * 32)
        self.assertRaises(wire.WireError, wire.decode, data[:-1] + b"\x01")  # padding must be zeros

    @settings(max_examples=1000)
    @given(st.binary(max_size=1600))
    def test_garbageOnlyWireError(self, data):
        try:
            wire.decode(data)
        except wire.WireError:
            pass

    @settings(max_examples=400)
    @given(messages, st.data())
    def test_truncatedOrExtendedRejected(self, m, data):
        encoded = encode(m)
        cut = data.draw(st.integers(0, len(encoded) - 1))
        if m[0] != wire.STORE or cut < wire.HEADER_LEN + 1:
            self.assertRaises(wire.WireError, wire.decode, encoded[:cut])
        if m[0] not in (wire.STORE, *wire.PADDED):
            self.assertRaises(wire.WireError, wire.decode, encoded + b"\x00")

    @given(messages, st.integers(0, wire.HEADER_LEN - 1), st.integers(0, 255))
    def test_headerMutationsNeverCrash(self, m, pos, value):
        encoded = bytearray(encode(m))
        encoded[pos] = value
        try:
            wire.decode(bytes(encoded))
        except wire.WireError:
            pass

    def test_sizeCap(self):
        self.assertRaises(wire.WireError, wire.decode, b"\x86\x02\x00" + b"\x00" * 56 + b"x" * wire.MAX_DATAGRAM)
        self.assertRaises(wire.WireError, wire.encode, wire.STORE, b"t" * 8, b"k" * 32, b"x" * wire.MAX_DATAGRAM)

    def test_strictFields(self):
        good = wire.encode(wire.PING, b"t" * 8, b"k" * 32)
        self.assertRaises(wire.WireError, wire.decode, bytes([0x8F]) + good[1:])  # unknown type
        self.assertRaises(wire.WireError, wire.decode, good[:1] + b"\x01" + good[2:])  # version
        self.assertRaises(wire.WireError, wire.decode, good[:2] + b"\x80" + good[3:])  # unknown flag
        self.assertRaises(wire.WireError, wire.decode, good[:2] + b"\x04" + good[3:])  # SIGNED on a request
        self.assertRaises(wire.WireError, wire.decode, b"\x01" + good[1:])  # not DHT
        peer = wire.Peer.of(b"i" * 32, b"w" * 8, ("198.18.0.1", 1))
        nodes = wire.encode(wire.NODES, b"t" * 8, b"k" * 32, [peer])
        self.assertRaises(wire.WireError, wire.decode, nodes[:2] + b"\x02" + nodes[3:])  # PROVE on a response
        self.assertRaises(wire.WireError, wire.decode, nodes[:-2] + b"\x00\x00")  # port 0
        h = wire.HEADER_LEN
        self.assertRaises(wire.WireError, wire.decode, nodes[:h] + b"\x15" + nodes[h + 1 :])  # 21 contacts
        badFamily = bytearray(nodes)
        badFamily[h + 1 + 40] = 5
        self.assertRaises(wire.WireError, wire.decode, bytes(badFamily))
        result = wire.encode(wire.STORE_RESULT, b"t" * 8, b"k" * 32, wire.STORED)
        self.assertRaises(wire.WireError, wire.decode, result[:-1] + b"\x09")
        sample = wire.encode(wire.SAMPLE, b"t" * 8, b"k" * 32, (b"x" * 32, b"salt"))
        self.assertRaises(wire.WireError, wire.decode, sample[: h + 32] + b"\x41" + sample[h + 33 :])  # salt > 64

    def test_contactsCarryKeysAndWork(self):
        peer = wire.Peer.of(b"k" * 32, b"w" * 8, ("198.18.0.1", 7))
        (got,) = wire.decode(wire.encode(wire.NODES, b"t" * 8, b"s" * 32, [peer])).payload
        self.assertEqual(got, peer)
        self.assertEqual(got.nodeId, __import__("hashlib").sha256(b"k" * 32).digest())

    def test_valueTruncatesToFit(self):
        big = [b"r" * 600] * 4
        peer = wire.Peer.of(b"k" * 32, b"w" * 8, ("::1", 5))
        data = wire.encode(wire.VALUE, b"t" * 8, b"k" * 32, (big, [peer] * 20))
        self.assertLessEqual(len(data), wire.MAX_DATAGRAM)
        msg = wire.decode(data)
        records, contacts = msg.payload
        self.assertEqual(len(records), 2)
        self.assertTrue(msg.truncated)
