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
