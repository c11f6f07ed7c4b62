"""The SOCKS5 client a managed transport's client method is reached with: pt-spec arguments, refusals named, bounded replies."""

from hypothesis import given, settings, strategies as st
from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from meshvpn.errors import LinkError
from meshvpn.link.pt.socks import SocksClient, SocksState

ARGS = (("cert", "abc"), ("iat-mode", "0"))


class Inner(Protocol):
    def __init__(self):
        self.got = b""

    def dataReceived(self, data):
        self.got += data


def client(args=ARGS):
    done = defer.Deferred()
    inner = Inner()
    proto = SocksClient("transport obfs4", "198.18.6.2", 443, args, Factory.forProtocol(lambda: inner), done)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport, done, inner


class SocksClientTests(unittest.TestCase):
    def test_happyPathWithArguments(self):
        proto, t, done, inner = client()
        self.assertEqual(t.value(), b"\x05\x01\x02")
        t.clear()
        proto.dataReceived(b"\x05\x02")
        user = b"cert=abc;iat-mode=0"
        self.assertEqual(t.value(), b"\x01" + bytes([len(user)]) + user + b"\x01\x00")
        t.clear()
        proto.dataReceived(b"\x01\x00")
        self.assertEqual(t.value(), b"\x05\x01\x00\x01" + bytes([198, 18, 6, 2]) + b"\x01\xbb")
        # the reply and the first link bytes in one read: the link gets its bytes
        proto.dataReceived(b"\x05\x00\x00\x01\x7f\x00\x00\x01\x00\x50" + b"TLS!")
        self.assertIs(self.successResultOf(done), inner)
        self.assertEqual(inner.got, b"TLS!")
        proto.dataReceived(b"more")
        self.assertEqual(inner.got, b"TLS!more")

    def test_noArgumentsNoAuth(self):
        proto, t, done, _ = client(())
        self.assertEqual(t.value(), b"\x05\x01\x00")

    def refusal(self, *replies):
        proto, t, done, _ = client()
        for r in replies:
            proto.dataReceived(r)
        e = self.failureResultOf(done, LinkError).value
        self.assertTrue(t.disconnecting)
        self.assertIs(proto.state, SocksState.FAILED)
        return str(e)

    def test_refusals(self):
        self.assertIn("refused username/password", self.refusal(b"\x05\xff"))
        self.assertIn("non-SOCKS5", self.refusal(b"\x04\x02"))
        self.assertIn("rejected the bridge's arguments", self.refusal(b"\x05\x02", b"\x01\x01"))
        self.assertIn("198.18.6.2:443: connection refused", self.refusal(b"\x05\x02", b"\x01\x00", b"\x05\x05\x00\x01"))
        self.assertIn("host unreachable", self.refusal(b"\x05\x02", b"\x01\x00", b"\x05\x04\x00\x01"))
        self.assertIn("address type 9", self.refusal(b"\x05\x02", b"\x01\x00", b"\x05\x00\x00\x09\x00"))

    def test_closedDuringHandshake(self):
        proto, t, done, _ = client()
        proto.connectionLost(None)
        self.assertIn("closed the connection during the SOCKS handshake", str(self.failureResultOf(done, LinkError).value))

    @settings(deadline=None)  # timing is noisy on a shared machine
    @given(st.binary(max_size=300))
    def test_anyRepliesAreBounded(self, data):
        proto, t, done, inner = client()
        for i in range(0, len(data), 7):
            proto.dataReceived(data[i:i + 7])
        self.assertLessEqual(len(proto._buf), 4 + 1 + 255 + 2)
        if proto.state is SocksState.FAILED:
            self.failureResultOf(done, LinkError)
