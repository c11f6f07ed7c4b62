"""The wallet's HTTP through a SOCKS5 proxy: a small proxy here relays to the issuer's API on loopback."""

import struct

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.trial import unittest

from meshvpn.payments.issuerclient import IssuerClient, IssuerError
from meshvpn.payments.issuerhttp import IssuerAPI, QuietSite
from meshvpn.payments.socksagent import SOCKSError, socksAgent
from meshvpn.payments.test.test_issuer import ISSUER_ID, makeIssuer


class _Relay(protocol.Protocol):
    def __init__(self, peer):
        self.peer = peer

    def connectionMade(self):
        self.peer.outbound = self
        self.peer.transport.write(b"\x05\x00\x00\x01" + bytes(4) + b"\x00\x00")
        if self.peer.pending:
            self.transport.write(self.peer.pending)

    def dataReceived(self, data):
        self.peer.transport.write(data)

    def connectionLost(self, reason):
        self.peer.transport.loseConnection()


class MiniSOCKS(protocol.Protocol):
    """Enough of a SOCKS5 server: no auth, CONNECT to a domain name or IPv4, then a relay."""

    seen = []
    refuse = False

    def connectionMade(self):
        self.buffer, self.state, self.outbound, self.pending = b"", "greeting", None, b""

    def dataReceived(self, data):
        if self.outbound is not None:
            return self.outbound.transport.write(data)
        if self.state == "connecting":
            self.pending += data
            return
        self.buffer += data
        if self.state == "greeting" and len(self.buffer) >= 3:
            self.buffer = self.buffer[3:]
            self.transport.write(b"\x05\x00")
            self.state = "request"
        if self.state == "request" and len(self.buffer) >= 5:
            kind = self.buffer[3]
            if kind == 3:
                n = self.buffer[4]
                if len(self.buffer) < 5 + n + 2:
                    return
                host = self.buffer[5:5 + n].decode()
                port = struct.unpack("!H", self.buffer[5 + n:7 + n])[0]
                rest = self.buffer[7 + n:]
            else:
                host = ".".join(str(b) for b in self.buffer[4:8])
                port = struct.unpack("!H", self.buffer[8:10])[0]
                rest = self.buffer[10:]
            MiniSOCKS.seen.append((host, port))
            if MiniSOCKS.refuse:
                self.transport.write(b"\x05\x05\x00\x01" + bytes(6))
                return self.transport.loseConnection()
            self.state, self.pending = "connecting", rest
            TCP4ClientEndpoint(reactor, host, port).connect(protocol.Factory.forProtocol(lambda: _Relay(self)))


class SOCKSAgentTests(unittest.TestCase):
    def setUp(self):
        self.issuer, _, self.clock = makeIssuer(self)
        site = reactor.listenTCP(0, QuietSite(IssuerAPI(self.clock, self.issuer)), interface="127.0.0.1")
        self.addCleanup(site.stopListening)
        self.issuerPort = site.getHost().port
        proxy = reactor.listenTCP(0, protocol.Factory.forProtocol(MiniSOCKS), interface="127.0.0.1")
        self.addCleanup(proxy.stopListening)
        self.agent = socksAgent(reactor, "127.0.0.1", proxy.getHost().port)
        MiniSOCKS.seen, MiniSOCKS.refuse = [], False

    @defer.inlineCallbacks
    def test_issuerThroughTheProxy(self):
        client = IssuerClient(reactor, f"http://127.0.0.1:{self.issuerPort}", agent=self.agent, timeout=10)
        offer = yield defer.Deferred.fromCoroutine(client.offer())
        self.assertEqual(offer.issuerId, ISSUER_ID)
        self.assertEqual(MiniSOCKS.seen, [("127.0.0.1", self.issuerPort)])

    @defer.inlineCallbacks
    def test_namesGoToTheProxy(self):
        """A host name is resolved by the proxy (address type 3), never here."""
        client = IssuerClient(reactor, f"http://localhost:{self.issuerPort}", agent=self.agent, timeout=10)
        yield defer.Deferred.fromCoroutine(client.offer())
        self.assertEqual(MiniSOCKS.seen, [("localhost", self.issuerPort)])

    @defer.inlineCallbacks
    def test_refusalIsAnIssuerError(self):
        MiniSOCKS.refuse = True
        client = IssuerClient(reactor, f"http://127.0.0.1:{self.issuerPort}", agent=self.agent, timeout=10)
        e = yield self.assertFailure(defer.Deferred.fromCoroutine(client.offer()), IssuerError)
        self.assertIn("connection refused", str(e))
        SOCKSError  # what the endpoint raises; IssuerClient names it in its error
