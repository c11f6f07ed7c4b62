"""The Extended ORPort's SAFE_COOKIE handshake and commands, against a scripted transport (and garbage)."""

import os
import struct

from hypothesis import given, settings, strategies as st
from twisted.internet import task
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from meshvpn.link.pt import extorport as x


class Inner(Protocol):
    def __init__(self, addr):
        self.addr, self.got = addr, b""

    def dataReceived(self, data):
        self.got += data


class InnerFactory(Factory):
    def __init__(self):
        self.built = []

    def buildProtocol(self, addr):
        p = Inner(addr)
        self.built.append(p)
        return p


def command(kind, body=b""):
    return struct.pack(">HH", kind, len(body)) + body


class ExtORTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.secret = os.urandom(32)
        self.inner = InnerFactory()
        self.factory = x.ExtORFactory(self.clock, self.inner, self.secret)
        self.proto = self.factory.buildProtocol(None)
        self.t = StringTransport()
        self.proto.makeConnection(self.t)

    def authenticate(self, secret=None):
        self.assertEqual(self.t.value(), b"\x01\x00")  # SAFE_COOKIE offered
        self.t.clear()
        nonce = os.urandom(32)
        self.proto.dataReceived(b"\x01" + nonce)
        reply = self.t.value()
        self.t.clear()
        serverHash, serverNonce = reply[:32], reply[32:]
        self.assertEqual(serverHash, x.serverHash(self.secret, nonce, serverNonce))  # the transport can check us
        self.proto.dataReceived(x.clientHash(secret or self.secret, nonce, serverNonce))
        status = self.t.value()
        self.t.clear()
        return status

    def test_cookieFile(self):
        path = self.mktemp()
        secret = x.writeCookie(path)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), x.COOKIE_HEADER + secret)
        self.assertEqual(len(x.COOKIE_HEADER), 32)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)

    def test_userAddressReachesTheLink(self):
        self.assertEqual(self.authenticate(), b"\x01")
        self.proto.dataReceived(command(x.CMD_USERADDR, b"203.0.113.9:40001") + command(x.CMD_TRANSPORT, b"obfs4")
                                + command(0x7777, b"ignored") + command(x.CMD_DONE) + b"\x16\x03TLS")
        self.assertEqual(self.t.value(), struct.pack(">HH", x.REPLY_OKAY, 0))
        [inner] = self.inner.built
        self.assertEqual((inner.addr.host, inner.addr.port), ("203.0.113.9", 40001))
        self.assertEqual(inner.got, b"\x16\x03TLS")
        self.assertEqual(self.proto.transportName, "obfs4")
        self.assertEqual(self.factory.counters["opened"], 1)

    def test_wrongCookieRefused(self):
        self.assertEqual(self.authenticate(os.urandom(32)), b"\x00")
        self.assertTrue(self.t.disconnecting)
        self.assertEqual(self.inner.built, [])
        self.assertEqual(self.factory.counters["refused"], 1)

    def refused(self, *chunks):
        self.assertEqual(self.authenticate(), b"\x01")
        for c in chunks:
            self.proto.dataReceived(c)
        self.assertTrue(self.t.disconnecting)
        self.assertIs(self.proto.state, x.ExtState.FAILED)
        self.assertEqual(self.inner.built, [])

    def test_badCommands(self):
        self.refused(command(x.CMD_USERADDR, b"not-an-address"))

    def test_oversizedCommand(self):
        self.refused(struct.pack(">HH", x.CMD_TRANSPORT, 5000))

    def test_tooManyCommands(self):
        self.refused(command(x.CMD_TRANSPORT, b"obfs4") * 20)

    def test_otherAuthType(self):
        self.proto.dataReceived(b"\x02")
        self.assertTrue(self.t.disconnecting)

    def test_timeout(self):
        self.clock.advance(x.PREAMBLE_TIMEOUT + 1)
        self.assertTrue(self.t.disconnecting)

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=400))
    def test_garbageNeverOpens(self, data):
        factory = x.ExtORFactory(task.Clock(), InnerFactory(), os.urandom(32))
        proto = factory.buildProtocol(None)
        proto.makeConnection(StringTransport())
        for i in range(0, len(data), 13):
            proto.dataReceived(data[i:i + 13])
        self.assertEqual(factory.wrapped.built, [])
        self.assertLessEqual(len(proto._buf), 4 + x.MAX_COMMAND + 13)
