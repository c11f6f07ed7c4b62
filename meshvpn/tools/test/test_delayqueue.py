"""The NFQUEUE delay line's netlink codec (no root needed): what it sends and what it parses."""

import struct

from hypothesis import given, strategies as st
from twisted.trial import unittest

from meshvpn.tools import delayqueue as dq


def _packetMessage(packetId, queue=7):
    attr = dq._attr(dq.NFQA_PACKET_HDR, struct.pack("!IHB", packetId, 0x0800, 1))
    return dq._message(dq.NFQNL_MSG_PACKET, queue, [attr])


class CodecTests(unittest.TestCase):
    def test_packetIds(self):
        data = _packetMessage(5) + _packetMessage(6)
        self.assertEqual(dq.parseMessages(data), ([5, 6], []))

    def test_ack(self):
        ack = dq._NLMSG.pack(36, dq.NLMSG_ERROR, 0, 1, 0) + struct.pack("=i", 0) + bytes(16)
        self.assertEqual(dq.parseMessages(ack), ([], [0]))

    def test_verdictBatch(self):
        msg = dq.verdictBatch(7, 1234)
        length, kind, flags, _, _ = dq._NLMSG.unpack_from(msg)
        self.assertEqual((length, kind), (len(msg), (3 << 8) | 3))
        self.assertEqual(struct.unpack_from("!H", msg, 18)[0], 7)  # the queue, big-endian
        self.assertEqual(struct.unpack_from("!II", msg, 24), (dq.NF_ACCEPT, 1234))

    @given(st.binary(max_size=300))
    def test_garbageNeverRaises(self, data):
        ids, errors = dq.parseMessages(data)
        self.assertIsInstance(ids, list)

    @given(st.binary(max_size=200))
    def test_truncatedMessagesStop(self, tail):
        data = _packetMessage(9) + tail
        self.assertEqual(dq.parseMessages(data)[0][:1], [9])

    def test_shortError(self):
        """An error message too short for its code is skipped, not a crash."""
        self.assertEqual(dq.parseMessages(dq._NLMSG.pack(16, dq.NLMSG_ERROR, 0, 1, 0)), ([], []))
