"""Relay descriptors: canonical encoding, strict parsing, signatures, expiry."""

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from meshvpn.dht.descriptor import (
    DescriptorError,
    OnionKey,
    _encodeBody,
    encodeDescriptor,
    makeDescriptor,
    parseDescriptor,
)
from meshvpn.identity import NodeIdentity

NOW = 1_800_000_000


def sample(ident=None, **kw):
    ident = ident or NodeIdentity.generate()
    args = dict(
        addresses={"udp": "198.18.0.1:9000", "tcp": "198.18.0.1:9001"},
        flags={"guard", "exit"},
        published=NOW,
        exitPolicy="accept 80,443",
        bandwidth=10_000_000,
        family=[b"\x01" * 32],
    )
    args.update(kw)
    return makeDescriptor(ident, **args)


class DescriptorTests(unittest.TestCase):
    def test_roundTrip(self):
        ident = NodeIdentity.generate()
        nxt = NodeIdentity.generate().onionPublicKey
        d = sample(ident, onionKeys=[OnionKey(ident.onionPublicKey, NOW, NOW + 7200), OnionKey(nxt, NOW + 3600, NOW + 10800)])
        raw = encodeDescriptor(d)
        p = parseDescriptor(raw, now=NOW + 1)
        self.assertEqual(p, d)
        self.assertEqual(p.address("tcp"), "198.18.0.1:9001")
        self.assertEqual(p.currentOnionKey(NOW + 5000), ident.onionPublicKey)
        self.assertEqual(p.currentOnionKey(NOW + 8000), nxt)
        self.assertEqual(p.toJSON()["flags"], ["exit", "guard"])

    def test_everyBitFlipRejected(self):
        raw = encodeDescriptor(sample())
        for i in range(len(raw)):
            b = bytearray(raw)
            b[i] ^= 0x40
            self.assertRaises(DescriptorError, parseDescriptor, bytes(b))

    def test_forgedBySomeoneElse(self):
        d = sample()
        other = NodeIdentity.generate()
        forged = attrs.evolve(d, addresses=(("udp", "198.18.6.6:1"),))
        forged = attrs.evolve(forged, signature=other.sign(b"meshvpn-descriptor-v1\x00" + _encodeBody(forged)))
        self.assertRaises(DescriptorError, parseDescriptor, encodeDescriptor(forged))
        # signed by another key but claiming the victim's id: the id check or signature fails
        self.assertRaises(DescriptorError, parseDescriptor, encodeDescriptor(attrs.evolve(d, signature=b"\x00" * 64)))

    def test_expiredAndFuture(self):
        raw = encodeDescriptor(sample(lifetime=60))
        self.assertRaises(DescriptorError, parseDescriptor, raw, now=NOW + 60)
        self.assertRaises(DescriptorError, parseDescriptor, raw, now=NOW - 3600)
        parseDescriptor(raw, now=NOW + 59)

    def test_fieldRules(self):
        for bad in (
            dict(flags={"wizard"}),
            dict(addresses={"UDP": "x"}),
            dict(addresses={"udp": "has space"}),
            dict(addresses={"udp": ""}),
            dict(exitPolicy="x" * 300),
            dict(lifetime=25 * 3600),
            dict(family=[b"short"]),
        ):
            self.assertRaises(DescriptorError, sample, **bad)

    def test_nonCanonicalRejected(self):
        d = sample(addresses={"udp": "198.18.0.1:1", "tcp": "198.18.0.1:2"})
        swapped = attrs.evolve(d, addresses=tuple(reversed(d.addresses)))
        ident = NodeIdentity.generate()
        # even correctly signed, an unsorted list is refused
        d2 = sample(ident)
        unsorted = attrs.evolve(d2, addresses=tuple(reversed(d2.addresses)))
        unsorted = attrs.evolve(unsorted, signature=ident.sign(b"meshvpn-descriptor-v1\x00" + _encodeBody(unsorted)))
        self.assertRaises(DescriptorError, parseDescriptor, encodeDescriptor(unsorted))
        self.assertRaises(DescriptorError, parseDescriptor, encodeDescriptor(swapped))
        self.assertRaises(DescriptorError, parseDescriptor, encodeDescriptor(d) + b"\x00")

    @settings(max_examples=500)
    @given(st.binary(max_size=600))
    def test_garbage(self, data):
        try:
            parseDescriptor(data)
        except DescriptorError:
            pass

    @settings(max_examples=300)
    @given(st.data())
    def test_mutationsNeverCrash(self, data):
        raw = bytearray(encodeDescriptor(sample()))
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
        cut = data.draw(st.integers(0, len(raw)))
        try:
            parseDescriptor(bytes(raw[:cut]))
        except DescriptorError:
            pass
