"""The client's --turn-tcp: options, TOML lists, one-line errors, and the node socket it builds."""

from twisted.trial import unittest
from twisted.python.usage import UsageError
from zope.interface.verify import verifyObject

from meshvpn.interfaces import IStatusSource
from meshvpn.roles.test.clientoptions import parseClientOptions

NODE = "ab" * 32


class TurnTcpOptionsTests(unittest.TestCase):
    def options(self, *argv, config=None):
        return parseClientOptions(self, *argv, config=config, extra=("--control-listen", "127.0.0.1:0"))

    def test_repeatable(self):
        opts = self.options("--turn-tcp", f"{NODE}@198.18.0.5:3478", "--turn-tcp", f"{NODE}@198.18.0.6:443")
        self.assertEqual(opts.settings["turn_tcp"], [(bytes.fromhex(NODE), ("198.18.0.5", 3478)),
                                                     (bytes.fromhex(NODE), ("198.18.0.6", 443))])

    def test_tomlList(self):
        opts = self.options(config=f'turn-tcp = ["{NODE}@198.18.0.5:3478"]\n')
        self.assertEqual(opts.settings["turn_tcp"], [(bytes.fromhex(NODE), ("198.18.0.5", 3478))])

    def test_defaultIsOff(self):
        self.assertEqual(self.options().settings["turn_tcp"], [])

    def test_badValueIsOneLine(self):
        for bad in ("198.18.0.5:3478", "zz@198.18.0.5:3478", f"{NODE}@nohost"):
            with self.assertRaises((UsageError, SystemExit, ValueError)) as e:
                self.options("--turn-tcp", bad)
            self.assertNotIn("\n", str(e.exception))

    def test_nodeSocketIsTheRelayedOne(self):
        """makeService swaps the UDP socket for the TURN stream socket (nothing bound, nothing opened yet)."""
        from meshvpn.nat.turn_stream_socket import TurnStreamSocketService
        from meshvpn.roles import client

        node = client.makeService(self.options("--turn-tcp", f"{NODE}@198.18.0.5:3478"))
        self.assertIsInstance(node.udpService, TurnStreamSocketService)
        self.assertIs(node.getServiceNamed("udp"), node.udpService)
        self.assertIs(node.udp.transport, node.udpService)
        verifyObject(IStatusSource, node.udpService)
        self.assertEqual(node.udpService.status()["state"], "stopped")
