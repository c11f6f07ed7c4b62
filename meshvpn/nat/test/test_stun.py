"""The STUN codec against every RFC 5769 test vector, plus round trips and fuzzing."""

import struct
import zlib

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from meshvpn.nat import stun

# RFC 5769 section 2.1: sample request, short-term credentials.
REQUEST = bytes.fromhex(
    "000100582112a442b7e7a701bc34d686fa87dfae"
    "80220010"
    "5354554e20746573742063"
    "6c69656e74"
    "00240004"
    "6e0001ff"
    "80290008"
    "932ff9b151263b36"
    "00060009"
    "6576746a3a6836765920 2020".replace(" ", "")
    + "00080014"
    "9aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2"
    "80280004"
    "e57a3bcf"
)
# 2.2: sample IPv4 response
RESPONSE_V4 = bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae"
    "8022000b"
    "7465737420766563746f7220"
    "00200008"
    "0001a147e112a643"
    "00080014"
    "2b91f599fd9e90c38c7489f92af9ba53f06be7d7"
    "80280004"
    "c07d4c96"
)
# 2.3: sample IPv6 response
RESPONSE_V6 = bytes.fromhex(
    "010100482112a442b7e7a701bc34d686fa87dfae"
    "8022000b"
    "7465737420766563746f7220"
    "00200014"
    "0002a1470113a9faa5d3f179bc25f4b5bed2b9d9"
    "00080014"
    "a382954e4be67bf11784c97c8292c275bfe3ed41"
    "80280004"
    "c8fb0b4c"
)
# 2.4: sample request, long-term credentials
REQUEST_LONG_TERM = bytes.fromhex(
    "000100602112a442"
    "78ad3433c6ad72c029da412e"
    "00060012"
    "e3839ee38388e383aae38383e382afe382b90000"
    "0015001c"
    "662f2f3439396b39353464364f4c33346f4c394653547679363473 41".replace(" ", "")
    + "0014000b"
    "6578616d706c652e6f726700"
    "00080014"
    "f67024656dd64a3e02b8e0712e85c9a28ca89666"
)
# RFC 8489 Appendix B.1 as corrected by Errata 6268: long-term credentials
# with SHA-256 password algorithm, USERHASH and MESSAGE-INTEGRITY-SHA256.
REQUEST_SHA256 = bytes.fromhex(
    "000100902112a44278ad3433c6ad72c029da412e"
    "001e0020"
    "4a3cf38fef6992bda952c6780417da0f24819415569e60b205c46e41407f1704"
    "00150029"
    "6f624d61744a6f733241414143662f2f3439396b39353464364f4c33346f4c39465354767936347341000000"
    "0014000b"
    "6578616d706c652e6f726700"
    "001d0004"
    "00020000"
    "001c0020"
    "b5c7bf005b6c52a21c51c5e892f81924136296cb927c43149309278cc6518e65"
)
TXID_1 = bytes.fromhex("b7e7a701bc34d686fa87dfae")
SHORT_TERM_PASSWORD = "VOkJxbRl1RmTxUk/WvJxBt"


class VectorTests(unittest.TestCase):
    """RFC 5769: every vector decodes, verifies, and re-encodes byte for byte."""

    def test_vectorsAreWhatTheRFCSays(self):
        self.assertEqual((len(REQUEST), len(RESPONSE_V4), len(RESPONSE_V6), len(REQUEST_LONG_TERM)), (108, 80, 92, 116))

    def test_sampleRequest(self):
        m = stun.StunMessage.decode(REQUEST)
        self.assertEqual((m.method, m.cls, m.transactionId), (stun.BINDING, stun.REQUEST, TXID_1))
        self.assertEqual(m.software(), "STUN test client")
        self.assertEqual(m.get(stun.USERNAME), b"evtj:h6vY")
        self.assertEqual(stun.decodeUint32(m.get(stun.PRIORITY)), 0x6E0001FF)
        self.assertEqual(m.get(stun.ICE_CONTROLLED), bytes.fromhex("932ff9b151263b36"))
        self.assertTrue(m.hasFingerprint)
        self.assertTrue(m.checkIntegrity(stun.shortTermKey(SHORT_TERM_PASSWORD)))
        self.assertFalse(m.checkIntegrity(stun.shortTermKey(SHORT_TERM_PASSWORD[:-1] + "r")))
        self.assertEqual(m.encode(stun.shortTermKey(SHORT_TERM_PASSWORD), fingerprint=True, padByte=b" "), REQUEST)

    def test_sampleIPv4Response(self):
        m = stun.StunMessage.decode(RESPONSE_V4)
        self.assertEqual((m.method, m.cls), (stun.BINDING, stun.SUCCESS))
        self.assertEqual(m.software(), "test vector")
        self.assertEqual(m.getXorAddress(), ("192.0.2.1", 32853))
        self.assertTrue(m.checkIntegrity(stun.shortTermKey(SHORT_TERM_PASSWORD)))
        self.assertEqual(m.encode(stun.shortTermKey(SHORT_TERM_PASSWORD), fingerprint=True, padByte=b" "), RESPONSE_V4)
        # and built from scratch
        built = stun.StunMessage(stun.BINDING, stun.SUCCESS, TXID_1)
        built.add(stun.SOFTWARE, b"test vector").addXorAddress(stun.XOR_MAPPED_ADDRESS, ("192.0.2.1", 32853))
        self.assertEqual(built.encode(stun.shortTermKey(SHORT_TERM_PASSWORD), fingerprint=True, padByte=b" "), RESPONSE_V4)

    def test_sampleIPv6Response(self):
        m = stun.StunMessage.decode(RESPONSE_V6)
        self.assertEqual(m.getXorAddress(), ("2001:db8:1234:5678:11:2233:4455:6677", 32853))
        self.assertTrue(m.checkIntegrity(stun.shortTermKey(SHORT_TERM_PASSWORD)))
        built = stun.StunMessage(stun.BINDING, stun.SUCCESS, TXID_1)
        built.add(stun.SOFTWARE, b"test vector")
        built.addXorAddress(stun.XOR_MAPPED_ADDRESS, ("2001:db8:1234:5678:11:2233:4455:6677", 32853))
        self.assertEqual(built.encode(stun.shortTermKey(SHORT_TERM_PASSWORD), fingerprint=True, padByte=b" "), RESPONSE_V6)

    def test_sampleLongTermRequest(self):
        m = stun.StunMessage.decode(REQUEST_LONG_TERM)
        username = "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"
        self.assertEqual(m.get(stun.USERNAME).decode(), username)
        self.assertEqual(m.get(stun.NONCE), b"f//499k954d6OL34oL9FSTvy64sA")
        self.assertEqual(m.get(stun.REALM), b"example.org")
        self.assertFalse(m.hasFingerprint)
        # The RFC gives the password before SASLprep; it must prepare to "TheMatrIX".
        password = "The\u00adM\u00aatr\u2168"
        self.assertEqual(stun.saslprep(password), "TheMatrIX")
        key = stun.longTermKey(username, "example.org", password)
        self.assertTrue(m.checkIntegrity(key))
        self.assertFalse(m.checkIntegrity(stun.longTermKey(username, "example.org", "TheMatrIx")))
        self.assertEqual(m.encode(key), REQUEST_LONG_TERM)

    def test_rfc8489Sha256Request(self):
        import hashlib

        m = stun.StunMessage.decode(REQUEST_SHA256)
        username = "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"
        self.assertEqual(m.get(stun.USERHASH), hashlib.sha256(f"{username}:example.org".encode()).digest())
        self.assertEqual(m.get(stun.NONCE), b"obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA")
        self.assertEqual(m.get(stun.PASSWORD_ALGORITHM), b"\x00\x02\x00\x00")
        key = stun.longTermKey(username, "example.org", "TheMatrIX", stun.ALGORITHM_SHA256)
        self.assertTrue(m.checkIntegritySha256(key))
        self.assertFalse(m.checkIntegritySha256(stun.longTermKey(username, "example.org", "TheMatrIX")))
        self.assertFalse(m.hasIntegrity)
        self.assertEqual(m.encode(integritySha256Key=key), REQUEST_SHA256)

    def test_corruptFingerprintRejected(self):
        bad = bytearray(REQUEST)
        bad[27] ^= 0x01  # inside SOFTWARE: the CRC no longer matches
        self.assertRaises(stun.StunParseError, stun.StunMessage.decode, bytes(bad))

    def test_corruptIntegrityDetected(self):
        bad = bytearray(RESPONSE_V4)
        bad[-9] ^= 0x01  # last MAC byte; then fix the fingerprint so only MI is wrong
        data = bytes(bad[:-8])

        crc = zlib.crc32(data[:2] + struct.pack("!H", len(bad) - 20) + data[4:]) ^ stun.FINGERPRINT_XOR
        fixed = data + struct.pack("!HHI", stun.FINGERPRINT, 4, crc)
        m = stun.StunMessage.decode(fixed)
        self.assertFalse(m.checkIntegrity(stun.shortTermKey(SHORT_TERM_PASSWORD)))


class CodecTests(unittest.TestCase):
    def test_messageTypeRoundTrip(self):
        for method in (stun.BINDING, stun.ALLOCATE, stun.CHANNEL_BIND, 0xFFF):
            for cls in (stun.REQUEST, stun.INDICATION, stun.SUCCESS, stun.ERROR):
                self.assertEqual(stun.splitMessageType(stun.messageType(method, cls)), (method, cls))
        self.assertEqual(stun.messageType(stun.BINDING, stun.SUCCESS), 0x0101)
        self.assertEqual(stun.messageType(stun.BINDING, stun.ERROR), 0x0111)
        self.assertEqual(stun.messageType(stun.ALLOCATE, stun.REQUEST), 0x0003)
        self.assertEqual(stun.messageType(stun.DATA, stun.INDICATION), 0x0017)

    def test_sha256IntegrityAndBoth(self):
        key = stun.longTermKey("user", "realm", "pass", stun.ALGORITHM_SHA256)
        self.assertEqual(len(key), 32)
        m = stun.StunMessage(stun.ALLOCATE, stun.REQUEST).add(stun.USERNAME, b"user")
        data = m.encode(integrityKey=key, integritySha256Key=key, fingerprint=True)
        d = stun.StunMessage.decode(data)
        self.assertTrue(d.checkIntegrity(key))
        self.assertTrue(d.checkIntegritySha256(key))
        self.assertFalse(d.checkIntegritySha256(b"x" * 32))
        self.assertTrue(d.hasFingerprint)
        self.assertEqual(d.attributes, [(stun.USERNAME, b"user")])

    def test_attributesAfterIntegrityIgnored(self):
        key = b"k"
        data = stun.StunMessage(stun.BINDING, stun.REQUEST).encode(integrityKey=key)
        # Append an attribute after MESSAGE-INTEGRITY and fix the length.
        extra = struct.pack("!HH", stun.SOFTWARE, 4) + b"evil"
        data = data[:2] + struct.pack("!H", len(data) - 20 + 8) + data[4:] + extra
        d = stun.StunMessage.decode(data)
        self.assertTrue(d.checkIntegrity(key))
        self.assertIsNone(d.get(stun.SOFTWARE))

    def test_rfc5780Attributes(self):
        m = stun.StunMessage(stun.BINDING, stun.SUCCESS)
        m.add(stun.CHANGE_REQUEST, stun.encodeChangeRequest(changeIP=True, changePort=True))
        m.addAddress(stun.RESPONSE_ORIGIN, ("198.18.0.1", 3478))
        m.addAddress(stun.OTHER_ADDRESS, ("2001:db8::1", 3479))
        m.addAddress(stun.MAPPED_ADDRESS, ("198.18.0.7", 1))
        m.add(stun.RESPONSE_PORT, stun.encodeResponsePort(4000))
        m.add(stun.PADDING, b"\x00" * 7)
        m.addErrorCode(420, "Unknown Attribute")
        m.add(stun.UNKNOWN_ATTRIBUTES, stun.encodeUnknownAttributes([0x7777, 0x0042]))
        d = stun.StunMessage.decode(m.encode(fingerprint=True))
        self.assertEqual(stun.decodeChangeRequest(d.get(stun.CHANGE_REQUEST)), (True, True))
        self.assertEqual(d.getAddress(stun.RESPONSE_ORIGIN), ("198.18.0.1", 3478))
        self.assertEqual(d.getAddress(stun.OTHER_ADDRESS), ("2001:db8::1", 3479))
        self.assertEqual(d.getAddress(stun.MAPPED_ADDRESS), ("198.18.0.7", 1))
        self.assertEqual(stun.decodeResponsePort(d.get(stun.RESPONSE_PORT)), 4000)
        self.assertEqual(d.get(stun.PADDING), b"\x00" * 7)
        self.assertEqual(d.errorCode(), (420, "Unknown Attribute"))
        self.assertEqual(stun.decodeUnknownAttributes(d.get(stun.UNKNOWN_ATTRIBUTES)), [0x7777, 0x0042])
        self.assertEqual(d.unknownRequired({stun.CHANGE_REQUEST, stun.RESPONSE_PORT, stun.PADDING, stun.ERROR_CODE}), [stun.MAPPED_ADDRESS, stun.UNKNOWN_ATTRIBUTES])

    def test_isStun(self):
        self.assertTrue(stun.isStun(REQUEST))
        self.assertFalse(stun.isStun(REQUEST[:-1]))
        self.assertFalse(stun.isStun(b"\x00\x01\x00\x00" + b"\x00" * 16))

    def test_errors(self):
        cases = {
            b"": "shorter",
            b"\x80" + REQUEST[1:]: "top two bits",
            REQUEST[:4] + b"\0\0\0\0" + REQUEST[8:]: "cookie",
            REQUEST[:2] + b"\x00\x57" + REQUEST[4:]: "multiple of 4",
            REQUEST[:2] + b"\x00\x5c" + REQUEST[4:]: "does not match",
            bytes.fromhex("000100042112a442") + TXID_1 + b"\x00\x06\x00\x05": "runs past",
            bytes.fromhex("000100082112a442") + TXID_1 + b"\x00\x06\x00\x05abcde": "does not match",
        }
        for data, why in cases.items():
            with self.assertRaises(stun.StunParseError) as e:
                stun.StunMessage.decode(data)
            self.assertIn(why, str(e.exception))

    def test_badAddressFamily(self):
        self.assertRaises(stun.StunParseError, stun.decodeAddress, b"\x00\x03\x00\x01abcd")
        self.assertRaises(stun.StunParseError, stun.decodeAddress, b"\x00\x01\x00\x01abc")
        self.assertRaises(stun.StunParseError, stun.decodeErrorCode, b"\x00\x00\x09\x00")


_addresses = st.one_of(
    st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str)
)


class FuzzTests(unittest.TestCase):
    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=200))
    def test_randomBytesNeverCrash(self, data):
        try:
            stun.StunMessage.decode(data)
        except stun.StunParseError:
            pass

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=120), st.integers(0, 119), st.integers(0, 255))
    def test_mutatedVectorsNeverCrash(self, tail, index, byte):
        for vector in (REQUEST, RESPONSE_V4, RESPONSE_V6, REQUEST_LONG_TERM):
            data = bytearray(vector)
            data[index % len(data)] = byte
            for candidate in (bytes(data), bytes(data) + tail, bytes(data[: index % len(data)])):
                try:
                    m = stun.StunMessage.decode(candidate)
                except stun.StunParseError:
                    continue
                # typed accessors raise only StunParseError too
                for attr in (stun.XOR_MAPPED_ADDRESS, stun.MAPPED_ADDRESS):
                    try:
                        m.getXorAddress(attr)
                    except stun.StunParseError:
                        pass
                m.checkIntegrity(b"key")

    @settings(max_examples=200, deadline=None)
    @given(
        st.integers(0, 0xFFF),
        st.sampled_from([stun.REQUEST, stun.INDICATION, stun.SUCCESS, stun.ERROR]),
        st.lists(st.tuples(st.integers(0, 0xFFFF).filter(lambda t: t not in (stun.MESSAGE_INTEGRITY, stun.MESSAGE_INTEGRITY_SHA256, stun.FINGERPRINT, stun.XOR_MAPPED_ADDRESS)), st.binary(max_size=40)), max_size=8),
        _addresses,
        st.integers(0, 65535),
        st.booleans(),
        st.one_of(st.none(), st.binary(min_size=1, max_size=32)),
    )
    def test_roundTrip(self, method, cls, attrs, host, port, fp, key):
        m = stun.StunMessage(method, cls, attributes=attrs)
        m.addXorAddress(stun.XOR_MAPPED_ADDRESS, (host, port))
        data = m.encode(integrityKey=key, fingerprint=fp)
        # methods above 0xff do not fit the RFC 7983 first-byte range 0..3
        self.assertEqual(stun.isStun(data), method <= 0xFF)
        d = stun.StunMessage.decode(data)
        self.assertEqual((d.method, d.cls, d.transactionId, d.attributes), (method, cls, m.transactionId, m.attributes))
        self.assertEqual(d.getXorAddress(), (host, port))
        self.assertEqual(d.hasFingerprint, fp)
        if key is not None:
            self.assertTrue(d.checkIntegrity(key))
