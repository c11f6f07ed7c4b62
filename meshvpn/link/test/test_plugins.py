"""Pluggable transports: discovery with getPlugins, and a third-party plugin carrying a real link."""

import os
import shutil
import sys

import twisted.plugins
from twisted.internet import defer, reactor
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from meshvpn.errors import LinkError
from meshvpn.identity import NodeIdentity
from meshvpn.interfaces import IPluggableTransport
from meshvpn.link.manager import LinkManager, LinkTarget
from meshvpn.link.transports import TCPTransport, availableTransports, findTransport
from meshvpn.tools.processes import NodeProcess
from meshvpn.link.test.helpers import cell

FIXTURE = os.path.join(os.path.dirname(__file__), "xorlink_plugin.txt")
MODULE = "xorlink_thirdparty"


class BuiltinTests(unittest.TestCase):
    def test_builtinIsAPlugin(self):
        tls = findTransport("tls")
        self.assertIsInstance(tls, TCPTransport)
        verifyObject(IPluggableTransport, tls)
        self.assertEqual(tls.kind, "stream")

    def test_unknownNameListsInstalled(self):
        e = self.assertRaises(LinkError, findTransport, "carrier-pigeon")
        self.assertIn("tls", str(e))

    def test_badAddress(self):
        for bad in ("nohost", "1.2.3.4:0", "example.com:80", "[::1]", "1.2.3.4:99999"):
            self.assertRaises(LinkError, TCPTransport().clientEndpoint, reactor, bad, {})

    def test_relayRefusesUnknownTransport(self):
        from meshvpn.roles import relay

        opts = relay.Options()
        opts.parseOptions(["--data-dir", self.mktemp(), "--udp", "127.0.0.1:0", "--link-transport", "nope"])
        e = self.assertRaises(SystemExit, relay.makeService, opts)
        self.assertIn("no link transport 'nope'", str(e))


class ThirdPartyPluginTests(unittest.TestCase):
    """A temp dir with its own twisted/plugins/ module, on sys.path, found by name."""

    timeout = 60

    def setUp(self):
        self.root = os.path.abspath(self.mktemp())
        pluginDir = os.path.join(self.root, "twisted", "plugins")
        os.makedirs(pluginDir)  # no __init__.py: Twisted's drop-in rule
        shutil.copy(FIXTURE, os.path.join(pluginDir, MODULE + ".py"))
        sys.path.insert(0, self.root)
        # A fresh process computes twisted.plugins.__path__ from sys.path at
        # import; this one already imported it, so add the directory the
        # same way Twisted would have.
        twisted.plugins.__path__.append(pluginDir)

        def undo():
            sys.path.remove(self.root)
            twisted.plugins.__path__.remove(pluginDir)
            sys.modules.pop("twisted.plugins." + MODULE, None)

        self.addCleanup(undo)

    @defer.inlineCallbacks
    def test_linkOverThirdPartyTransport(self):
        found = availableTransports()
        self.assertIn("xor-demo", found)
        self.assertIn("tls", found)
        xor = found["xor-demo"]
        verifyObject(IPluggableTransport, xor)
        stats = sys.modules["twisted.plugins." + MODULE].stats

        relayId = NodeIdentity.generate()
        relay = LinkManager(reactor, relayId)  # transports from getPlugins
        got = []
        all100 = defer.Deferred()

        class Handler:
            def linkOpened(self, link):
                pass

            def cellsReceived(self, link, cells):
                got.extend(cells)
                if len(got) >= 100 and not all100.called:
                    all100.callback(None)

            def linkClosed(self, link, reason):
                pass

        relay.setCellHandler(Handler())
        port = yield xor.serverEndpoint(reactor, {"listen": "tcp:0:interface=127.0.0.1"}).listen(
            relay.serverFactory("xor-demo")
        )
        self.addCleanup(port.stopListening)
        self.addCleanup(relay.stopService)
        client = LinkManager(reactor, NodeIdentity.generate())
        self.addCleanup(client.stopService)
        address = xor.describeAddress(port)

        link = yield client.getLink(LinkTarget(relayId.nodeId, (("xor-demo", address),)))
        self.assertEqual(link.peerId, relayId.nodeId)
        self.assertEqual(link.transportName, "xor-demo")
        link.sendCells([cell(i) for i in range(100)])
        yield all100
        self.assertEqual(got, [cell(i) for i in range(100)])
        self.assertGreater(stats["bytes_out"], 100 * 514)

        # identity is still checked over the third-party transport
        wrong = LinkTarget(NodeIdentity.generate().nodeId, (("xor-demo", address),))
        e = yield self.assertFailure(client.getLink(wrong), LinkError)
        self.assertIn("not the expected node id", str(e))

    @defer.inlineCallbacks
    def test_relayProcessChoosesTransportByName(self):
        """A real twistd relay configured with --link-transport xor-demo finds the plugin and serves links over it."""
        proc = NodeProcess(
            "relay", os.path.join(self.root, "relay"), extraArgs=["--link-transport", "xor-demo"], name="xor-relay"
        )
        self.addCleanup(proc.stop)
        old = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = self.root + (os.pathsep + old if old else "")
        try:
            proc.start()
        finally:
            if old is None:
                del os.environ["PYTHONPATH"]
            else:
                os.environ["PYTHONPATH"] = old
        info = proc.waitReady()
        client = LinkManager(reactor, NodeIdentity.generate())
        self.addCleanup(client.stopService)
        nodeId = bytes.fromhex(info["node_id"])
        link = yield client.getLink(LinkTarget(nodeId, (("xor-demo", info["stream"]),)))
        self.assertEqual(link.peerId, nodeId)
        # the same port does not speak plain TLS links: the bytes are XORed
        # (a second manager: the first would reuse its open link to this peer)
        plain = LinkManager(reactor, NodeIdentity.generate())
        self.addCleanup(plain.stopService)
        yield self.assertFailure(plain.getLink(LinkTarget(nodeId, (("tls", info["stream"]),))), LinkError)


class RoleWiringTests(unittest.TestCase):
    def test_relayListensWithLinks(self):
        from meshvpn.interfaces import ILinkManager
        from meshvpn.roles import relay

        opts = relay.Options()
        opts.parseOptions(["--data-dir", self.mktemp(), "--udp", "127.0.0.1:0", "--listen", "tcp:0:interface=127.0.0.1"])
        node = relay.makeService(opts)
        links = node.getServiceNamed("links")
        verifyObject(ILinkManager, links)
        self.assertTrue(links.settings.authenticate)
        self.assertIs(node.streamListener.factory.wrappedFactory._manager, links)

    def test_clientIsAnonymous(self):
        from meshvpn.roles import client

        opts = client.Options()
        opts.parseOptions(["--data-dir", self.mktemp(), "--udp", "127.0.0.1:0"])
        node = client.makeService(opts)
        self.assertFalse(node.getServiceNamed("links").settings.authenticate)
        self.assertIsNone(node.streamListener)


class DatagramTransportPluginTests(unittest.TestCase):
    """The datagram link is itself a transport plugin; its links run on the node's one UDP socket."""

    def test_foundByName(self):
        from meshvpn.errors import LinkError
        from meshvpn.link.transports import availableTransports

        udp = availableTransports()["udp"]
        verifyObject(IPluggableTransport, udp)
        self.assertEqual(udp.kind, "datagram")
        self.assertRaises(LinkError, udp.serverEndpoint, None, {})
        self.assertRaises(LinkError, udp.clientEndpoint, None, "127.0.0.1:1", {})

    def test_meshClientRunsThemOnItsSocket(self):
        from meshvpn.interfaces import IDatagramLinkEndpoint
        from meshvpn.roles import client

        options = client.Options()
        options.parseOptions(["--data-dir", self.mktemp(), "--udp", "127.0.0.1:0", "--socks-listen", "127.0.0.1:0",
                              "--mesh-relay", "00" * 32 + "@127.0.0.1:9"])
        node = client.makeService(options)
        links = node.getServiceNamed("datagram-links")
        verifyObject(IDatagramLinkEndpoint, links.endpoint)
        self.assertIs(node.getServiceNamed("mesh").datagramLinks, links.endpoint)
        self.assertNotIn("link", node.udp._names)
        links.startService()
        self.assertIn("link", node.udp._names)  # routed by first byte on the node's one socket
        links.stopService()
        self.assertNotIn("link", node.udp._names)
