"""The DHT wire codec: every message round-trips, and nothing else parses."""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from meshvpn.dht import wire

ids = st.binary(min_size=32, max_size=32)
ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
ipv6 = st.binary(min_size=16, max_size=16).map(
    lambda b: __import__("ipaddress").IPv6Address(b).compressed
)
addrs = st.tuples(st.one_of(ipv4, ipv6), st.integers(1, 65535))
contacts = st.lists(st.tuples(ids, addrs), max_size=wire.MAX_CONTACTS)
records = st.lists(st.binary(min_size=1, max_size=300), max_size=4)


def payloads(kind):
    return {
        wire.PING: st.none(),
        wire.PONG: addrs,
        wire.FIND_NODE: ids,
        wire.FIND_VALUE: ids,
        wire.NODES: contacts,
        wire.VALUE: st.tuples(records, st.lists(st.tuples(ids, addrs), max_size=8)),
        wire.STORE: st.binary(min_size=1, max_size=1200),
        wire.STORE_RESULT: st.sampled_from(sorted(wire.RESULT_CODES)),
    }[kind]


messages = st.sampled_from(sorted(wire.NAMES)).flatmap(
    lambda kind: st.tuples(st.just(kind), st.binary(min_size=8, max_size=8), ids, payloads(kind),
                           st.sampled_from([0, wire.FLAG_CLIENT]))
)


class CodecTests(unittest.TestCase):
    @settings(max_examples=400)
    @given(messages)
    def test_roundTrip(self, m):
        kind, txid, key, payload, flags = m
        data = wire.encode(kind, txid, key, payload, flags)
        self.assertLessEqual(len(data), wire.MAX_DATAGRAM)
        self.assertEqual(data[0] & 0xF0, 0x80)
        msg = wire.decode(data)
        self.assertEqual((msg.kind, msg.txid, msg.senderKey, msg.flags), (kind, txid, key, flags))
        if kind == wire.VALUE:
            # the encoder keeps what fits; what it keeps comes back unchanged
            self.assertEqual(msg.payload[0], payload[0][: len(msg.payload[0])])
            self.assertEqual(msg.payload[1], payload[1][: len(msg.payload[1])])
        else:
            self.assertEqual(msg.payload, payload)
        self.assertEqual(wire.encode(kind, txid, key, msg.payload, flags), data)

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
        encoded = wire.encode(m[0], m[1], m[2], m[3], m[4])
        cut = data.draw(st.integers(0, len(encoded) - 1))
        if m[0] != wire.STORE or cut < wire.HEADER_LEN + 1:
            self.assertRaises(wire.WireError, wire.decode, encoded[:cut])
        if m[0] != wire.STORE:
            self.assertRaises(wire.WireError, wire.decode, encoded + b"\x00")

    @given(messages, st.integers(0, 42), st.integers(0, 255))
    def test_headerMutationsNeverCrash(self, m, pos, value):
        encoded = bytearray(wire.encode(m[0], m[1], m[2], m[3], m[4]))
        encoded[pos] = value
        try:
            wire.decode(bytes(encoded))
        except wire.WireError:
            pass

    def test_sizeCap(self):
        self.assertRaises(wire.WireError, wire.decode, b"\x86\x01\x00" + b"\x00" * 40 + b"x" * wire.MAX_DATAGRAM)
        self.assertRaises(wire.WireError, wire.encode, wire.STORE, b"t" * 8, b"k" * 32, b"x" * wire.MAX_DATAGRAM)

    def test_strictFields(self):
        good = wire.encode(wire.PING, b"t" * 8, b"k" * 32)
        self.assertRaises(wire.WireError, wire.decode, bytes([0x8F]) + good[1:])  # unknown type
        self.assertRaises(wire.WireError, wire.decode, good[:1] + b"\x02" + good[2:])  # version
        self.assertRaises(wire.WireError, wire.decode, good[:2] + b"\x80" + good[3:])  # unknown flag
        self.assertRaises(wire.WireError, wire.decode, b"\x01" + good[1:])  # not DHT
        nodes = wire.encode(wire.NODES, b"t" * 8, b"k" * 32, [(b"i" * 32, ("198.18.0.1", 1))])
        self.assertRaises(wire.WireError, wire.decode, nodes[:-2] + b"\x00\x00")  # port 0
        self.assertRaises(wire.WireError, wire.decode, nodes[:43] + b"\x15" + nodes[44:])  # 21 contacts
        badFamily = bytearray(nodes)
        badFamily[44 + 32] = 5
        self.assertRaises(wire.WireError, wire.decode, bytes(badFamily))
        result = wire.encode(wire.STORE_RESULT, b"t" * 8, b"k" * 32, wire.STORED)
        self.assertRaises(wire.WireError, wire.decode, result[:-1] + b"\x09")

    def test_valueTruncatesToFit(self):
        big = [b"r" * 600] * 4
        data = wire.encode(wire.VALUE, b"t" * 8, b"k" * 32, (big, [(b"i" * 32, ("::1", 5))] * 20))
        self.assertLessEqual(len(data), wire.MAX_DATAGRAM)
        records, contacts = wire.decode(data).payload
        self.assertEqual(len(records), 2)
