"""The relay role's --nat-relay / --turn settings start the NAT relay service."""

from twisted.trial import unittest

from meshvpn.roles import relay


class RelayRoleTests(unittest.TestCase):
    def _options(self, *argv):
        options = relay.Options()
        options.parseOptions(["--data-dir", self.mktemp(), "--udp", "127.0.0.1:0", "--listen", "tcp:0:interface=127.0.0.1", *argv])
        return options

    def test_natRelayService(self):
        from meshvpn.link.relayservice import NatRelayService

        node = relay.makeService(self._options("--nat-relay", "true", "--turn", "127.0.0.1:0"))
        services = [s for s in node if isinstance(s, NatRelayService)]
        self.assertEqual(len(services), 1)
        self.assertEqual(services[0].turnAddress, ("127.0.0.1", 0))

    def test_offByDefault(self):
        from meshvpn.link.relayservice import NatRelayService

        node = relay.makeService(self._options())
        self.assertEqual([s for s in node if isinstance(s, NatRelayService)], [])

    def test_turnNeedsNatRelay(self):
        self.assertRaises(SystemExit, relay.makeService, self._options("--turn", "127.0.0.1:3478"))

    def test_turnTcpNeedsTurn(self):
        self.assertRaises(SystemExit, relay.makeService, self._options("--nat-relay", "true", "--turn-tcp", "127.0.0.1:3478"))
        self.assertRaises(SystemExit, relay.makeService, self._options("--turn-tcp", "127.0.0.1:3478"))


class TurnOverTcpServiceTests(unittest.TestCase):
    def test_listensOnTcpAndStops(self):
        """--turn-tcp: the TURN server also listens on TCP, answers the hello, and lets its own link socket be a peer."""
        from twisted.internet import defer, protocol, reactor
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

        from meshvpn.link.relayservice import NatRelayService
        from meshvpn.nat import turn_stream as ts

        class Links:
            def setLinkAcceptor(self, acceptor):
                pass

        svc = NatRelayService(reactor, Links(), ("127.0.0.1", 0), lambda: {"udp": "127.0.0.1:7000"},
                              turnStreamAddress=("127.0.0.1", 0))
        svc.startService()
        self.addCleanup(svc.stopService)
        port = svc._turnStreamPort.getHost().port
        self.assertEqual(svc.turn._internal()[0], {("127.0.0.1", 7000)})

        class Hello(protocol.Protocol):
            def __init__(self):
                self.got, self.done = b"", defer.Deferred()

            def dataReceived(self, data):
                self.got += data
                if len(self.got) >= ts.HELLO_LEN and not self.done.called:
                    self.transport.loseConnection()
                    self.done.callback(self.got)

        async def go():
            proto = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Hello())
            got = await proto.done
            self.assertEqual(len(ts.parseHello(got[: ts.HELLO_LEN])), 32)

        return defer.Deferred.fromCoroutine(go())
