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


class PolicySummaryFieldTests(unittest.TestCase):
    """The summary travels in the compact form of meshvpn.dht.policysummary: canonical, up to 1000 characters."""

    def test_longestSummariesFitOneRecord(self):
        from meshvpn.dht.records import makeRecord
        from meshvpn.exit.policy import ExitPolicy

        ident = NodeIdentity.generate()
        nxt = NodeIdentity.generate().onionPublicKey
        for text in (
            ",".join(f"reject *:{p}" for p in range(1, 2000, 2)) + ",accept *:*",  # Tor's truncation vector
            ",".join(f"accept *:{p}" for p in range(10, 100, 2)) + ","
            + ",".join(f"accept *:{p}" for p in range(10000, 60000, 97)) + ",reject *:*",
        ):
            summary = ExitPolicy.fromText(text).summary()
            self.assertGreater(len(summary), 990)
            d = sample(ident, onionKeys=[OnionKey(ident.onionPublicKey, NOW, NOW + 7200), OnionKey(nxt, NOW + 3600, NOW + 10800)],
                       family=[bytes([i]) * 32 for i in range(1, 9)], exitPolicy=summary)
            raw = encodeDescriptor(d)
            self.assertEqual(parseDescriptor(raw).exitPolicy, summary)
            makeRecord(ident, b"relay-descriptor", raw, 1, NOW + 3600)

    def test_nonCanonicalSummariesRefused(self):
        for bad in ("accept 443,80", "accept 80-81,82", "accept 80,80", "accept 080", "accept 80 ", "accept 0",
                    "reject 1-65536", "accept 1," + "3," * 600 + "5", "allow 80", "accept", ""):
            self.assertRaises(DescriptorError, sample, exitPolicy=bad)

    @settings(max_examples=300)
    @given(st.lists(st.tuples(st.integers(1, 65535), st.integers(0, 300)), min_size=1, max_size=120), st.booleans())
    def test_summaryRoundTrip(self, spans, accept):
        from meshvpn.dht.policysummary import decodeSummary, encodeSummary, formatSummary

        ranges = [(lo, min(65535, lo + n)) for lo, n in spans]
        text = formatSummary(ranges)
        if not accept and text.startswith("accept"):
            text = "reject" + text[6:]
        self.assertEqual(decodeSummary(encodeSummary(text)), text)

    @settings(max_examples=500)
    @given(st.binary(max_size=40))
    def test_summaryBytesOnlyRaiseSummaryError(self, data):
        from meshvpn.dht.policysummary import SummaryError, decodeSummary

        try:
            decodeSummary(data)
        except SummaryError:
            pass


class HandshakesFieldTests(unittest.TestCase):
    """The handshakes a relay speaks: absent (classic only, MVD2) or listed (MVD3)."""

    def test_classicDescriptorUnchanged(self):
        """No list: the v2 layout older nodes parse, and it means classic only."""
        raw = encodeDescriptor(sample())
        self.assertEqual(raw[:4], b"MVD2")
        self.assertEqual(parseDescriptor(raw).handshakes, ())

    def test_listed(self):
        d = sample(handshakes=["ntor3-mlkem768", "ntor", "cgo", "ntor3"])
        raw = encodeDescriptor(d)
        self.assertEqual(raw[:4], b"MVD3")
        p = parseDescriptor(raw, now=NOW + 1)
        self.assertEqual(p.handshakes, ("cgo", "ntor", "ntor3", "ntor3-mlkem768"))
        self.assertEqual(p, d)
        self.assertEqual(p.toJSON()["handshakes"], ["cgo", "ntor", "ntor3", "ntor3-mlkem768"])

    def test_everyBitFlipRejected(self):
        raw = encodeDescriptor(sample(handshakes=["ntor", "ntor3-mlkem768"]))
        for i in range(len(raw)):
            b = bytearray(raw)
            b[i] ^= 0x40
            self.assertRaises(DescriptorError, parseDescriptor, bytes(b))

    def test_rules(self):
        self.assertRaises(DescriptorError, sample, handshakes=["NTOR"])
        self.assertRaises(DescriptorError, sample, handshakes=[f"h{i}" for i in range(9)])

    def test_strippedListIsAnotherSignature(self):
        """Dropping the list (to make clients use classic handshakes) breaks the signature."""
        d = sample(handshakes=["ntor", "ntor3-mlkem768"])
        stripped = attrs.evolve(d, handshakes=())
        self.assertRaises(DescriptorError, parseDescriptor, encodeDescriptor(stripped))

    @settings(max_examples=50, deadline=None)
    @given(st.binary(max_size=40))
    def test_garbageList(self, tail):
        raw = encodeDescriptor(sample(handshakes=["ntor"]))
        # replace the list (after the family) with garbage: never anything but DescriptorError
        cut = raw.index(b"\x04ntor")
        try:
            parseDescriptor(raw[:cut] + tail + raw[cut + 5:], verify=False)
        except DescriptorError:
            pass
