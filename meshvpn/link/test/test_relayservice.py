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
    def test_listensOnTlsAndStops(self):
        """
        --turn-tcp: the TURN server also listens, TLS under the stream; a real
        client pinned to the relay's id allocates there, one pinned to another
        id is refused before it proves anything; its own link socket is a peer.
        """
        from twisted.internet import defer, reactor
        from twisted.internet.protocol import DatagramProtocol

        from meshvpn.errors import RelayError
        from meshvpn.identity import NodeIdentity
        from meshvpn.link.relayservice import NatRelayService
        from meshvpn.link.tlsctx import sharedLinkTLS
        from meshvpn.nat.turn_stream_client import openRelayedSocket, tlsEndpoint

        class Links:
            def setLinkAcceptor(self, acceptor):
                pass

        relayIdentity = NodeIdentity.generate()
        svc = NatRelayService(reactor, Links(), ("127.0.0.1", 0), lambda: {"udp": "127.0.0.1:7000"},
                              turnStreamAddress=("127.0.0.1", 0), identity=relayIdentity)
        svc.startService()
        self.addCleanup(svc.stopService)
        port = svc._turnStreamPort.getHost().port
        self.assertEqual(svc.turn._internal()[0], {("127.0.0.1", 7000)})

        async def go():
            server = ("127.0.0.1", port)
            endpoint = lambda: tlsEndpoint(reactor, "127.0.0.1", port, sharedLinkTLS())  # noqa: E731
            with self.assertRaises(RelayError) as e:
                await openRelayedSocket(reactor, endpoint(), NodeIdentity.generate(), server, DatagramProtocol(),
                                        relayId=b"\x01" * 32)
            self.assertIn("not the", str(e.exception))
            sock = await openRelayedSocket(reactor, endpoint(), NodeIdentity.generate(), server, DatagramProtocol(),
                                           relayId=relayIdentity.nodeId)
            self.assertEqual(sock.stream.relayNodeId, relayIdentity.nodeId)
            self.assertEqual(svc.turnStream.counters["proved"], 1)
            self.assertEqual(len(svc.turn.allocations), 1)
            await sock.stopListening()

        return defer.Deferred.fromCoroutine(go())
