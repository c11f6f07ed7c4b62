"""Debian's obfs4proxy on both ends of a link, run through the managed-transport protocol."""

import os
import shutil

from twisted.internet import defer, reactor
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from meshvpn.errors import LinkError
from meshvpn.identity import NodeIdentity
from meshvpn.interfaces import IPluggableTransport
from meshvpn.link.manager import LinkManager, LinkTarget
from meshvpn.link.pt.args import parseTransportLine
from meshvpn.link.pt.transport import ManagedClientTransport, ManagedServerTransport, clientSupervisor
from meshvpn.link.test.helpers import cell

OBFS4PROXY = shutil.which("obfs4proxy") or "/usr/bin/obfs4proxy"


def requireObfs4(test):
    if not os.access(OBFS4PROXY, os.X_OK):
        if os.environ.get("CI") == "true":
            test.fail("obfs4proxy is not installed (bin/install installs it)")
        raise unittest.SkipTest("obfs4proxy is not installed")


class _Cells:
    def __init__(self, want):
        self.got, self.want, self.done = [], want, defer.Deferred()

    def linkOpened(self, link):
        pass

    def cellsReceived(self, link, cells):
        self.got.extend(cells)
        if len(self.got) >= self.want and not self.done.called:
            self.done.callback(None)

    def linkClosed(self, link, reason):
        pass


class Obfs4LinkTests(unittest.TestCase):
    timeout = 60

    def setUp(self):
        requireObfs4(self)
        self.line = parseTransportLine(f"obfs4 exec {OBFS4PROXY}")

    @defer.inlineCallbacks
    def serve(self):
        """A relay's link manager listening through obfs4; @return: (identity, transport, port)."""
        relayId = NodeIdentity.generate()
        server = ManagedServerTransport("obfs4", self.line, os.path.abspath(self.mktemp()))
        verifyObject(IPluggableTransport, server)
        relay = LinkManager(reactor, relayId, transports={"obfs4": server})
        self.addCleanup(relay.stopService)
        port = yield server.serverEndpoint(reactor, {"listen": "tcp:0:interface=127.0.0.1"}).listen(
            relay.serverFactory("obfs4"))
        self.addCleanup(port.stopListening)
        return relayId, relay, server, port

    def client(self):
        sup = clientSupervisor(reactor, self.line, os.path.abspath(self.mktemp()))
        sup.startService()
        self.addCleanup(sup.stopService)
        transport = ManagedClientTransport("obfs4", sup)
        verifyObject(IPluggableTransport, transport)
        manager = LinkManager(reactor, NodeIdentity.generate(), transports={"obfs4": transport})
        self.addCleanup(manager.stopService)
        return sup, manager

    @defer.inlineCallbacks
    def test_cellsCrossAnObfs4Link(self):
        relayId, relay, server, port = yield self.serve()
        handler = _Cells(200)
        relay.setCellHandler(handler)
        address = server.describeAddress(port)
        self.assertRegex(address, r"^127\.0\.0\.1:\d+ cert=[A-Za-z0-9+/]+ iat-mode=0$")
        # the program's own bridge line in its state dir says the same
        self.assertEqual(server.bridgeLineArgs(), port.method.args)

        _, client = self.client()
        link = yield client.getLink(LinkTarget(relayId.nodeId, (("obfs4", address),)))
        self.assertEqual(link.peerId, relayId.nodeId)
        link.sendCells([cell(i) for i in range(200)])
        yield handler.done
        self.assertEqual(handler.got, [cell(i) for i in range(200)])
        # obfs4proxy came in through the Extended ORPort and named the client's address
        self.assertEqual(port.orPort.factory.counters, {"opened": 1, "refused": 0})
        [incoming] = [l for l in relay.links() if not l.isInitiator]
        self.assertEqual(incoming.remoteHost, "127.0.0.1")
        self.assertEqual(os.stat(port.orPort.cookiePath).st_mode & 0o777, 0o600)

    @defer.inlineCallbacks
    def test_wrongCertIsRefused(self):
        relayId, relay, server, port = yield self.serve()
        address = server.describeAddress(port)
        host = address.split()[0]
        _, client = self.client()
        bad = f"{host} cert={'A' * 70} iat-mode=0"
        client.settings.connectTimeout = 10
        e = yield self.assertFailure(client.getLink(LinkTarget(relayId.nodeId, (("obfs4", bad),))), LinkError)
        self.assertIn("obfs4", str(e))

    @defer.inlineCallbacks
    def test_serverRestartKeepsItsBridgeLine(self):
        relayId, relay, server, port = yield self.serve()
        before = server.describeAddress(port)
        sup = port.supervisor
        sup.backoff = (0.1, 1.0)
        os.kill(sup.current.pid, 9)
        while sup.launches < 2 or sup.methods is None:
            yield deferLater(0.1)
        self.assertEqual(server.describeAddress(port), before)
        _, client = self.client()
        link = yield client.getLink(LinkTarget(relayId.nodeId, (("obfs4", before),)))
        self.assertEqual(link.peerId, relayId.nodeId)


def deferLater(seconds):
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)
