"""Link fixtures shared by the link tests: real TLS over iosim pumps and task.Clock, or over TCP on loopback."""

from twisted.internet import defer, endpoints, reactor, task
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test import iosim
from zope.interface import implementer

from meshvpn.errors import LinkError
from meshvpn.identity import NodeIdentity
from meshvpn.interfaces import ICellHandler, IPluggableTransport
from meshvpn.link.manager import LinkManager, LinkTarget
from meshvpn.link.protocol import LinkProtocol, LinkSettings
from meshvpn.link.tlsctx import sharedLinkTLS
from meshvpn.link.cellsize import CELL_SIZE
from meshvpn.link.transports import TCPTransport


def cell(i):
    """A recognisable CELL_SIZE test cell."""
    return i.to_bytes(4, "big") + bytes([i % 251]) * (CELL_SIZE - 4)


def _factory(link):
    f = Factory()
    f.protocol = lambda: link
    return f


def connectLinks(clock, client, server, greet=True):
    """Wrap two LinkProtocols in TLS and connect them through an iosim pump."""
    tls = sharedLinkTLS()
    s = TLSMemoryBIOFactory(tls, False, _factory(server), clock=clock).buildProtocol(None)
    c = TLSMemoryBIOFactory(tls, True, _factory(client), clock=clock).buildProtocol(None)
    pump = iosim.connect(s, iosim.makeFakeServer(s), c, iosim.makeFakeClient(c), greet=False, clock=clock)
    if greet:
        pump.flush()
    return pump


def linkPair(clock=None, clientSettings=None, serverSettings=None, expected=None, clientId=None, serverId=None):
    """
    @return: C{(client, server, pump, clientIdentity, serverIdentity)}; the
        client expects C{expected} (default: the server's real node id).
    """
    clock = clock or task.Clock()
    cid, sid = clientId or NodeIdentity.generate(), serverId or NodeIdentity.generate()
    client = LinkProtocol(clock, cid, clientSettings or LinkSettings(), True, expected or sid.nodeId)
    server = LinkProtocol(clock, sid, serverSettings or LinkSettings(), False)
    pump = connectLinks(clock, client, server)
    return client, server, pump, cid, sid


class MemoryNet:
    """Relays 'listening' by address; connections are iosim pumps on one clock."""

    def __init__(self, clock):
        self.clock = clock
        self.servers = {}
        self.pumps = []
        self.connects = 0

    def flush(self):
        for _ in range(50):
            if not any([p.pump() for p in self.pumps]):
                self.clock.advance(0)
                if not any([p.pump() for p in self.pumps]):
                    return


@implementer(IStreamClientEndpoint)
class _MemoryEndpoint:
    def __init__(self, net, address):
        self._net, self._address = net, address

    def connect(self, factory):
        serverFactory = self._net.servers.get(self._address)
        if serverFactory is None:
            return defer.fail(ConnectionRefusedError(self._address))
        self._net.connects += 1
        c = factory.buildProtocol(None)
        s = serverFactory.buildProtocol(None)
        self._net.pumps.append(
            iosim.connect(s, iosim.makeFakeServer(s), c, iosim.makeFakeClient(c), greet=False, clock=self._net.clock)
        )
        return defer.succeed(c)


@implementer(IPluggableTransport)
class MemoryTransport:
    """A pluggable transport over iosim, for manager tests."""

    name = "tls"
    kind = "stream"

    def __init__(self, net):
        self._net = net

    def clientEndpoint(self, reactor, address, options):
        if not address.startswith("mem:"):
            raise LinkError("bad memory address")
        return _MemoryEndpoint(self._net, address)

    def serverEndpoint(self, reactor, options):
        raise NotImplementedError

    def describeAddress(self, port):
        raise NotImplementedError


@implementer(ICellHandler)
class IncomingEnd:
    """The listening manager's cell handler: hands over the first link opened to it and keeps every cell it gets."""

    def __init__(self, onOpened):
        self._onOpened = onOpened
        self.opened = defer.Deferred()
        self.cells = []

    def linkOpened(self, link):
        self._onOpened(link)
        self.opened.callback(link)

    def cellsReceived(self, link, cells):
        self.cells.extend(cells)

    def linkClosed(self, link, reason):
        pass


@defer.inlineCallbacks
def linkOnLoopback(testCase, onOpened=lambda link: None):
    """
    Two link managers, one listening on loopback, and a TLS link from the
    other to it; C{onOpened} sees the listening end before any cell arrives.
    Both managers and the port are cleaned up with C{testCase}.

    @return: a Deferred of (the dialling end, the listening end, the list
        the listening end's cells go to).
    """
    transports = {"tls": TCPTransport()}
    server = LinkManager(reactor, NodeIdentity.generate(), transports=transports)
    client = LinkManager(reactor, NodeIdentity.generate(), transports=transports)
    testCase.addCleanup(server.stopService)
    testCase.addCleanup(client.stopService)
    port = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(server.serverFactory("tls"))
    testCase.addCleanup(port.stopListening)
    handler = IncomingEnd(onOpened)
    server.setCellHandler(handler)
    link = yield client.getLink(LinkTarget(server.identity.nodeId, (("tls", f"127.0.0.1:{port.getHost().port}"),)))
    incoming = yield handler.opened
    return link, incoming, handler.cells
