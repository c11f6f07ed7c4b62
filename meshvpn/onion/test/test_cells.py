"""Cells and relay messages: every type round-trips; malformed input raises CellError only."""

from hypothesis import given, settings, strategies as st
from twisted.trial import unittest

from meshvpn.onion import cells as C
from meshvpn.link.cellsize import CELL_SIZE
from meshvpn.onion.packets import PacketReader, framePackets, packetCellCount


class CellFormat(unittest.TestCase):
    def test_sizes(self):
        self.assertEqual(CELL_SIZE, 514)
        self.assertEqual(C.PAYLOAD_LEN, 509)
        self.assertEqual(C.RELAY_DATA_LEN, 494)

    def test_everyCommandRoundTrips(self):
        bodies = {
            C.Command.PADDING: b"",
            C.Command.CREATE2: C.Create2(C.HTYPE_NTOR, bytes(range(96))).encode(),
            C.Command.CREATED2: C.Created2(bytes(64)).encode(),
            C.Command.RELAY: bytes(range(256)) * 1 + b"x" * 253,
            C.Command.RELAY_EARLY: b"y" * 509,
            C.Command.DESTROY: C.Destroy(C.DestroyReason.PROTOCOL).encode(),
            C.Command.CREATE2_MORE: b"m" * 509,
            C.Command.CREATED2_MORE: b"n" * 100,
        }
        self.assertEqual(set(bodies), C.Command.ALL)
        for cmd, body in bodies.items():
            circId = 0 if cmd == C.Command.PADDING else 0x80000001
            raw = C.Cell(circId, cmd, body).encode()
            self.assertEqual(len(raw), CELL_SIZE)
            cell = C.parseCell(raw)
            self.assertEqual((cell.circId, cell.command), (circId, cmd))
            self.assertEqual(cell.payload[:len(body)], body)
            self.assertEqual(cell.encode(), raw)

    def test_initiatorBit(self):
        cell = C.parseCell(C.encodeCell(C.INITIATOR_BIT | 5, C.Command.DESTROY, b"\x01"))
        self.assertTrue(cell.circId & C.INITIATOR_BIT)
        self.assertEqual(cell.circId & C.CIRCID_MASK, 5)

    def test_bodiesRoundTrip(self):
        create = C.Create2(C.HTYPE_NTOR, bytes(96))
        samples = [
            C.Create2.decode(create.encode()) == create,
            C.Created2.decode(C.Created2(b"\x05" * 64).encode()) == C.Created2(b"\x05" * 64),
            C.Destroy.decode(C.Destroy(9).encode()) == C.Destroy(9),
        ]
        self.assertTrue(all(samples))
        relayBodies = [
            (C.RelayCommand.EXTEND2, C.Extend2(b"\x07" * 32, (("198.18.0.1", 9001), ("2001:db8::1", 443)),
                                               ("tls 198.18.0.1:9001",), create)),
            (C.RelayCommand.EXTENDED2, C.Extended2(C.Created2(b"\x01" * 64))),
            (C.RelayCommand.TRUNCATED, C.Truncated(C.DestroyReason.CONNECTFAILED)),
            (C.RelayCommand.BEGIN, C.Begin("example.com", 443, 1)),
            (C.RelayCommand.BEGIN, C.Begin("2001:db8::2", 80)),
            (C.RelayCommand.END, C.End(6)),
            (C.RelayCommand.CONNECTED, C.Connected()),
            (C.RelayCommand.CONNECTED, C.Connected("198.18.0.7", 300)),
            (C.RelayCommand.CONNECTED, C.Connected("2001:db8::7", 60)),
            (C.RelayCommand.RESOLVE, C.Resolve("example.com")),
            (C.RelayCommand.RESOLVED, C.Resolved(((C.AnswerType.IPV4, bytes(4), 60), (C.AnswerType.HOSTNAME, b"a.b", 5)))),
        ]
        for cmd, body in relayBodies:
            self.assertEqual(type(body).decode(body.encode()), body)
            stream = 0 if cmd in (C.RelayCommand.EXTEND2, C.RelayCommand.EXTENDED2, C.RelayCommand.TRUNCATED) else 3
            hdr = C.unpackRelay(C.packRelay(cmd, stream, body.encode()))
            self.assertEqual((hdr.command, hdr.streamId, hdr.data), (cmd, stream, body.encode()))
        s = C.Sendme(b"12345678")
        self.assertEqual(C.Sendme.decode(s.encode()), s)

    def test_everyRelayCommandRoundTrips(self):
        for cmd in C.RelayCommand.ALL:
            stream = 0 if cmd in (14, 15, 8, 9, 128, 129, 130, 131, 132, 10, 5, *range(134, 141)) else 1
            payload = C.packRelay(cmd, stream, b"data")
            self.assertEqual(len(payload), C.PAYLOAD_LEN)
            hdr = C.unpackRelay(payload)
            self.assertEqual((hdr.command, hdr.streamId, hdr.data), (cmd, stream, b"data"))

    def test_errorsAreClear(self):
        e = self.assertRaises(C.CellError, C.parseCell, b"\x00" * 100)
        self.assertIn("100 bytes", str(e))
        e = self.assertRaises(C.CellError, C.parseCell, C.encodeCell(1, 77, b""))
        self.assertIn("unknown cell command 77", str(e))
        self.assertRaises(C.CellError, C.Create2.decode, b"\x00\x04\x00\x60" + bytes(96))
        self.assertRaises(C.CellError, C.Create2.decode, b"\x00\x03\x00\x60" + bytes(96))  # ntor v3: >= 128
        self.assertRaises(C.CellError, C.unpackRelay, C.packRelay(200, 0, b""))
        self.assertRaises(C.CellError, C.unpackRelay, C.packRelay(C.RelayCommand.DATA, 0, b"x"))
        self.assertRaises(C.CellError, C.Extend2.decode, b"\x00" + C.Create2(2, bytes(96)).encode())
        self.assertRaises(C.CellError, C.Sendme.decode, b"\x01\x00\x00")

    def test_packets(self):
        packets = [b"a" * 1420, b"b" * 40, b"c" * 1, b"d" * 1500]
        bodies = framePackets(packets)
        self.assertEqual(len(bodies), packetCellCount(packets))
        self.assertTrue(all(len(b) <= C.RELAY_DATA_LEN for b in bodies))
        reader = PacketReader()
        out = []
        for b in bodies:
            out += reader.feed(b)
        self.assertEqual(out, packets)
        self.assertEqual(packetCellCount([b"x" * 1480]), 3)
        self.assertEqual(packetCellCount([b"x" * 1481]), 4)


_BODY_DECODERS = [C.Create2.decode, C.Created2.decode, C.Destroy.decode, C.Extend2.decode, C.Extended2.decode,
                  C.Truncated.decode, C.Sendme.decode, C.Begin.decode, C.End.decode, C.Connected.decode,
                  C.Resolve.decode, C.Resolved.decode]


class Malformed(unittest.TestCase):
    @settings(max_examples=300, deadline=None)
    @given(st.binary(min_size=0, max_size=600))
    def test_parseCell(self, data):
        try:
            cell = C.parseCell(data)
        except C.CellError:
            return
        self.assertEqual(cell.encode(), data)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(min_size=C.PAYLOAD_LEN, max_size=C.PAYLOAD_LEN))
    def test_unpackRelay(self, payload):
        try:
            hdr = C.unpackRelay(payload)
        except C.CellError:
            return
        self.assertLessEqual(len(hdr.data), C.RELAY_DATA_LEN)

    @settings(max_examples=200, deadline=None)
    @given(st.sampled_from(_BODY_DECODERS), st.binary(max_size=C.RELAY_DATA_LEN))
    def test_bodies(self, decode, data):
        try:
            decode(data)
        except C.CellError:
            pass

    @settings(max_examples=100, deadline=None)
    @given(st.lists(st.binary(max_size=C.RELAY_DATA_LEN), max_size=10))
    def test_packetReader(self, bodies):
        reader = PacketReader()
        for b in bodies:
            try:
                for p in reader.feed(b):
                    self.assertTrue(0 < len(p) <= 65535)
            except C.CellError:
                return
            self.assertLessEqual(len(reader._buf), 65537 + C.RELAY_DATA_LEN)


class FlowNegotiateBody(unittest.TestCase):
    def test_roundTrip(self):
        for flags in range(16):
            self.assertEqual(C.FlowNegotiate.decode(C.FlowNegotiate(flags).encode()).flags, flags)

    def test_malformedRefused(self):
        for bad in (b"", b"\x01", b"\x01\x03\x00", b"\x02\x03", b"\x01\x10", b"\x01\xff"):
            self.assertRaises(C.CellError, C.FlowNegotiate.decode, bad)

    @given(st.binary(max_size=8))
    def test_anyBytesParseOrCellError(self, data):
        try:
            C.FlowNegotiate.decode(data)
        except C.CellError:
            pass

    def test_xonNeedsStream(self):
        self.assertRaises(C.CellError, C.unpackRelay, C.packRelay(C.RelayCommand.XOFF, 0, b""))
        self.assertRaises(C.CellError, C.unpackRelay, C.packRelay(C.RelayCommand.FLOW_NEGOTIATE, 3, b"\x01\x03"))


class PaymentCommandTests(unittest.TestCase):
    def test_paymentUsesStreamZero(self):
        """PAYMENT (bandwidth tokens, meshvpn.payments.paymsg) is a circuit-level message."""
        self.assertEqual(C.RelayCommand.NAMES[C.RelayCommand.PAYMENT], "PAYMENT")
        self.assertRaises(C.CellError, C.unpackRelay, C.packRelay(C.RelayCommand.PAYMENT, 5, b"\x01"))
