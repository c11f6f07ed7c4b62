"""The wallet's HTTP through a SOCKS5 proxy: a small proxy here relays to the issuer's API on loopback."""

import struct

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.trial import unittest

from meshvpn.payments.issuerclient import IssuerClient, IssuerError
from meshvpn.payments.issuerhttp import IssuerAPI, QuietSite
from meshvpn.payments.socksagent import SOCKSError, socksAgent
from meshvpn.cli import buildParser
from meshvpn.errors import MeshVPNError
from meshvpn.payments import buy, walletcli
from meshvpn.payments.records import PaymentRecords
from meshvpn.payments.test import test_issuer
from meshvpn.payments.test.test_issuer import ISSUER_ID, makeIssuer, publishIssuer
from meshvpn.payments.wallet import TokenWallet


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
    bindAddress = None  # where the proxy's own connections come from (a relay's address)

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
            TCP4ClientEndpoint(reactor, host, port, bindAddress=MiniSOCKS.bindAddress).connect(protocol.Factory.forProtocol(lambda: _Relay(self)))


class SOCKSAgentTests(unittest.TestCase):
    def setUp(self):
        self.issuer, _, self.clock = makeIssuer(self)
        MiniSOCKS.bindAddress = None
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


class PurchaseThroughACircuitTests(unittest.TestCase):
    """
    ``meshvpn wallet buy`` reaches the issuer through the MeshVPN client's
    SOCKS port unless told ``--direct``: the issuer sees the connection of
    the proxy's far side (here bound to 127.0.0.2, as an exit's would be
    its own address), never the buyer's (127.0.0.1).
    """

    def setUp(self):
        self.issuer, _, self.clock = makeIssuer(self)
        self.peers = peers = []

        class Recording(IssuerAPI):
            def render(self, request):
                peers.append(request.getClientAddress().host)
                return super().render(request)

        site = reactor.listenTCP(0, QuietSite(Recording(self.clock, self.issuer)), interface="127.0.0.1")
        self.addCleanup(site.stopListening)
        self.url = f"http://127.0.0.1:{site.getHost().port}"
        self.dht = publishIssuer(self.issuer, self.clock, self.url[7:])
        proxy = reactor.listenTCP(0, protocol.Factory.forProtocol(MiniSOCKS), interface="127.0.0.1")
        self.addCleanup(proxy.stopListening)
        self.proxy = f"127.0.0.1:{proxy.getHost().port}"
        MiniSOCKS.seen, MiniSOCKS.refuse, MiniSOCKS.bindAddress = [], False, ("127.0.0.2", 0)
        self.addCleanup(setattr, MiniSOCKS, "bindAddress", None)
        self.walletDir = self.mktemp()

    payer = test_issuer.HTTPTests.payer

    def args(self, *extra):
        return buildParser().parse_args(["wallet", "--wallet-dir", self.walletDir, "buy", "3", "--issuer", self.url, *extra])

    def test_defaults(self):
        args = self.args()
        self.assertEqual((args.socks, args.direct), (walletcli.DEFAULT_SOCKS, False))

    @defer.inlineCallbacks
    def test_issuerSeesTheRelayNotTheBuyer(self):
        lines = []
        agent = yield defer.Deferred.fromCoroutine(walletcli._agent(reactor, self.args("--socks", self.proxy), lines.append))
        self.assertIsNotNone(agent)
        wallet = TokenWallet(self.walletDir)
        check = buy.OfferCheck(self.clock, buy.RecordsKeySource(PaymentRecords(self.dht)))
        got = yield defer.Deferred.fromCoroutine(buy.buy(
            self.clock, IssuerClient(reactor, self.url, agent=agent, timeout=10), wallet, 3, lines.append,
            payer=self.payer(), pollInterval=0, spendDelay=0, check=check))
        self.assertEqual(got, 3)
        self.assertGreaterEqual(len(self.peers), 4)  # info, purchase, status, tokens
        self.assertEqual(set(self.peers), {"127.0.0.2"})  # every request came from the relay's side
        self.assertIn("through the SOCKS5 proxy", "\n".join(lines))

    @defer.inlineCallbacks
    def test_noProxyIsAClearErrorNotADirectConnection(self):
        closed = reactor.listenTCP(0, protocol.Factory.forProtocol(protocol.Protocol), interface="127.0.0.1")
        port = closed.getHost().port
        yield closed.stopListening()
        e = yield self.assertFailure(defer.Deferred.fromCoroutine(
            walletcli._agent(reactor, self.args("--socks", f"127.0.0.1:{port}"), lambda line: None)), MeshVPNError)
        self.assertIn("no SOCKS5 proxy at", str(e))
        self.assertIn("--direct", str(e))
        self.assertEqual(self.peers, [])

    @defer.inlineCallbacks
    def test_directOnlyWhenAsked(self):
        lines = []
        agent = yield defer.Deferred.fromCoroutine(walletcli._agent(reactor, self.args("--direct"), lines.append))
        self.assertIsNone(agent)
        self.assertIn("the issuer sees this machine's network address", lines[0])

    @defer.inlineCallbacks
    def test_issuerNamedByItsNodeId(self):
        """--issuer ID: the API address comes from the issuer's DHT record (read by the client node)."""
        from twisted.internet import task

        from meshvpn.client.paying import PaidExitDirectory

        wallet = TokenWallet(self.walletDir)
        directory = PaidExitDirectory(self.clock, PaymentRecords(self.dht), wallet, ready=None)
        node = task.LoopingCall(directory._lookForAsks)
        node.start(0.02)
        self.addCleanup(node.stop)
        args = buildParser().parse_args(["wallet", "--wallet-dir", self.walletDir, "buy", "3", "--issuer", ISSUER_ID.hex()])
        lines = []
        url, pinned = yield defer.Deferred.fromCoroutine(walletcli._issuer(reactor, wallet, args, lines.append))
        self.assertEqual((url, pinned), (self.url, ISSUER_ID))
        self.assertIn("(from its record in the DHT)", lines[0])
