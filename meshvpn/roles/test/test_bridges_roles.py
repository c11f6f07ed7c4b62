"""Managed transports and bridges in the roles: options, TOML lists, one-line errors, what each role builds."""

import os
import sys

from twisted.trial import unittest
from zope.interface.verify import verifyObject

from meshvpn.interfaces import IPluggableTransport
from meshvpn.roles.test.clientoptions import parseClientOptions

FAKE = os.path.join(os.path.dirname(__file__), "..", "..", "link", "pt", "test", "fakept.py")
NODE = "ab" * 32
LINE = f"obfs4 198.18.6.2:443 {NODE} cert=abc iat-mode=0"
TRANSPORT = f"obfs4 exec {sys.executable} {os.path.abspath(FAKE)} good"


class ClientBridgeOptionsTests(unittest.TestCase):
    def options(self, *argv, config=None):
        return parseClientOptions(self, *argv, config=config)

    def test_repeatableOnTheCommandLine(self):
        opts = self.options("--transport", TRANSPORT, "--bridge", LINE, "--bridge", LINE.replace("443", "444"))
        self.assertEqual([b.address.port for b in opts.settings["bridge"]], [443, 444])
        self.assertEqual(opts.settings["transport"][0].names, ("obfs4",))

    def test_tomlLists(self):
        opts = self.options(config=f'transport = ["{TRANSPORT}"]\nbridge = ["{LINE}"]\n')
        self.assertEqual(len(opts.settings["bridge"]), 1)

    def test_badBridgeLineIsOneLine(self):
        e = self.assertRaises(SystemExit, self.options, "--bridge", "obfs4 198.18.6.2:443 nothex")
        self.assertIn("--bridge: expected a 64-hex-digit node id", str(e))
        self.assertNotIn("\n", str(e))

    def test_bridgeWithoutItsTransport(self):
        from meshvpn.roles import client

        e = self.assertRaises(SystemExit, client.makeService, self.options("--bridge", LINE))
        self.assertIn("--bridge uses transport 'obfs4'", str(e))
        self.assertIn('--transport "obfs4 exec', str(e))

    def test_bridgedClientRunsNoDHT(self):
        from meshvpn.roles import client

        node = client.makeService(self.options("--transport", TRANSPORT, "--bridge", LINE))
        names = {s.name for s in node}
        self.assertNotIn("dht", names)
        self.assertIn("bridges", names)
        self.assertIn("transports", names)
        links = node.getServiceNamed("links")
        verifyObject(IPluggableTransport, links._transport("obfs4"))
        self.assertIsNotNone(links._directory)
        # the transports start before the links that dial through them, and stop after them
        order = [s.name for s in node]
        self.assertLess(order.index("transports"), order.index("links"))

    def test_paymentsWithBridgesRefused(self):
        from meshvpn.roles import client

        opts = self.options("--transport", TRANSPORT, "--bridge", LINE)
        opts.settings["payment_wallet"] = self.mktemp()
        e = self.assertRaises(SystemExit, client.makeService, opts)
        self.assertIn("not supported yet", str(e))


class RelayBridgeOptionsTests(unittest.TestCase):
    def options(self, *argv):
        from meshvpn.roles import relay

        opts = relay.Options()
        opts.parseOptions(["--data-dir", self.mktemp(), "--udp", "127.0.0.1:0", "--listen", "tcp:0:interface=127.0.0.1",
                           *argv])
        return opts

    def test_unconfiguredManagedTransport(self):
        from meshvpn.roles import relay

        e = self.assertRaises(SystemExit, relay.makeService, self.options("--link-transport", "obfs4"))
        self.assertIn("no link transport 'obfs4'", str(e))
        self.assertIn("--transport", str(e))

    def test_bridgeModePublishesNothing(self):
        from meshvpn.roles import relay

        node = relay.makeService(self.options("--transport", TRANSPORT, "--link-transport", "obfs4", "--bridge-mode"))
        dht = node.getServiceNamed("dht")
        names = {s.name for s in dht}
        self.assertNotIn("publisher", names)
        self.assertIn("finder", names)
        self.assertIsNotNone(node.getServiceNamed("links")._directory)

    def test_publicRelayAnswersNoDirectoryQuestions(self):
        from meshvpn.roles import relay

        node = relay.makeService(self.options())
        self.assertIsNone(node.getServiceNamed("links")._directory)
        self.assertIn("publisher", {s.name for s in node.getServiceNamed("dht")})


class UnreachableHintTests(unittest.TestCase):
    def hint(self):
        from twisted.internet import defer, task
        from twisted.logger import globalLogPublisher

        from meshvpn.roles.transports import UnreachableHint

        clock = task.Clock()

        class DHT:
            joined = defer.Deferred()

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        hint = UnreachableHint(clock, DHT, [("198.18.1.2", 9000), ("198.18.1.3", 9000)])
        hint.startService()
        self.addCleanup(hint.stopService)
        return clock, DHT, events

    def messages(self, events):
        from twisted.logger import formatEvent

        return [m for m in (formatEvent(e) for e in events) if "cannot reach the network" in m]

    def test_namesWhatDidNotAnswer(self):
        clock, _, events = self.hint()
        clock.advance(19)
        self.assertEqual(self.messages(events), [])
        clock.advance(2)
        [message] = self.messages(events)
        self.assertIn("no DHT bootstrap node answered over UDP (198.18.1.2:9000, 198.18.1.3:9000)", message)
        self.assertIn("--bridge", message)

    def test_quietOnceJoined(self):
        clock, dht, events = self.hint()
        dht.joined.callback(5)
        clock.advance(60)
        self.assertEqual(self.messages(events), [])
