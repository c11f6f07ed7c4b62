"""What the roles build keeps the promises it declares: verifyObject on every provider.

The relay role (exit, packet exit, NAT relay with TURN, STUN server) and the
client role (SOCKS, VPN with mesh links) are built with makeService; then
every object reachable from the node (its service tree and every
collaborator the role handed a service, found by walking attributes,
containers, bound methods and closures) is checked with
C{zope.interface.verify.verifyObject} against each interface it declares.
Some providers exist only while a node runs (the DHT and relay directory,
links, circuits), so a relay is also started on loopback, and the built
client links to it and builds a one-hop circuit through it with its own
link manager and switch.

Where the roles plug an object in as an interface's provider (a status
source, the switch's edge), it must provide that interface.  What fails
today and is not the roles' to fix is named below with the reason; the
test fails as soon as an entry is no longer needed.
"""

import functools
import itertools
import types

from twisted.internet import defer, reactor, task
from twisted.internet.address import IPv4Address
from twisted.trial import unittest
from zope.interface import providedBy
from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyObject

from meshvpn import interfaces as I
from meshvpn.roles import client, relay

# Declared, but not kept: (class name, interface name) -> why.  Empty is the goal.
BROKEN = {}

# Kept, but not declared: (class name, interface name) -> where to declare it.
UNDECLARED = {}

_SCALARS = (type(None), bool, int, float, complex, str, bytes, bytearray, memoryview, range, type, types.ModuleType)


def reachable(*roots):
    """
    Every MeshVPN object reachable from C{roots}: through MeshVPN objects'
    attributes, containers, bound methods' C{__self__}, and the closures
    and partials of MeshVPN functions.  Twisted's own objects (the reactor,
    ports, Deferreds) are not entered: they hold nothing a role built.
    """
    seen, found, todo = set(), [], list(roots)
    while todo:
        obj = todo.pop()
        if isinstance(obj, _SCALARS) or id(obj) in seen or obj is reactor:
            continue
        seen.add(id(obj))
        if isinstance(obj, dict):
            todo.extend(itertools.chain(obj.keys(), obj.values()))
        elif isinstance(obj, (list, tuple, set, frozenset)) or type(obj).__name__ == "deque":
            todo.extend(obj)
        elif isinstance(obj, types.MethodType):
            todo.append(obj.__self__)
        elif isinstance(obj, functools.partial):
            todo.extend((obj.func, obj.args, obj.keywords))
        elif isinstance(obj, types.FunctionType):
            if obj.__module__.startswith("meshvpn.") and obj.__closure__:
                for cell in obj.__closure__:
                    try:
                        todo.append(cell.cell_contents)
                    except ValueError:  # an empty cell
                        pass
        elif type(obj).__module__.startswith("meshvpn."):
            found.append(obj)
            todo.extend(getattr(obj, "__dict__", {}).values())
            for name in getattr(type(obj), "__slots__", ()):
                todo.append(getattr(obj, name, None))
    return found


def brokenPromises(objects):
    """@return: C{({interface names provided}, {(class, interface): error})} over C{objects}."""
    provided, broken = set(), {}
    for obj in objects:
        provided.update(iface.__name__ for iface in providedBy(obj).flattened())
        for iface in providedBy(obj):
            try:
                verifyObject(iface, obj)
            except Invalid as e:
                broken[(type(obj).__name__, iface.__name__)] = str(e)
    return provided, broken


def buildRelay(test, *extra):
    options = relay.Options()
    # An explicit exit DNS server: the system resolver would schedule a
    # re-read of resolv.conf as soon as it is made.
    options.parseOptions(["--data-dir", test.mktemp(), "--udp", "127.0.0.1:0", "--listen", "tcp:0:interface=127.0.0.1",
                          "--exit-dns", "127.0.0.1:53", *extra])
    return relay.makeService(options)


def buildClient(test, *extra):
    options = client.Options()
    options.parseOptions(["--data-dir", test.mktemp(), "--udp", "127.0.0.1:0", "--socks-listen", "127.0.0.1:0", *extra])
    return client.makeService(options)


def withoutRoot(test):
    """The TUN of the VPN client and of the packet exit opens on start: building them needs no root."""
    from meshvpn.exit import packetexit
    from meshvpn.tun import privileges

    test.patch(packetexit, "privilegeProblem", lambda: None)
    test.patch(privileges, "privilegeProblem", lambda: None)


class RoleProvidersMixin:
    def assertPromisesKept(self, objects, expected):
        """
        Every provider in C{objects} keeps what it declares (but for
        L{BROKEN}), and C{expected} interfaces are among those provided.
        @return: the broken promises found (all of them in L{BROKEN}).
        """
        provided, broken = brokenPromises(objects)
        self.assertEqual({k: v for k, v in broken.items() if k not in BROKEN}, {},
                         "providers that do not keep their interface")
        self.assertEqual(set(expected) - provided, set(), "interfaces the roles no longer provide")
        return broken

    def assertProvides(self, iface, obj):
        """C{obj}, plugged in by a role as an C{iface}, provides it (declared, unless L{UNDECLARED})."""
        key = (type(obj).__name__, iface.__name__)
        if key in BROKEN:
            self.assertRaises(Invalid, verifyObject, iface, obj)
        elif key in UNDECLARED:
            self.assertFalse(iface.providedBy(obj), f"{type(obj).__name__} declares {iface.__name__} now: "
                                                    "remove it from UNDECLARED")
            verifyObject(iface, obj, tentative=True)
        else:
            verifyObject(iface, obj)

    def assertPluggedInProvide(self, node):
        for source in node.status.sources.values():
            self.assertProvides(I.IStatusSource, source)
        switch = node.getServiceNamed("onion").switch
        self.assertProvides(I.ICellHandler, switch)
        self.assertProvides(I.ICircuitEdge, switch.edge)


class BuiltRolesTests(RoleProvidersMixin, unittest.TestCase):
    def test_relay(self):
        withoutRoot(self)
        node = buildRelay(self, "--flags", "guard,middle,exit", "--packet-exit", "--nat-relay", "true",
                          "--turn", "127.0.0.1:0", "--bandwidth-rate", "1000000")
        self.assertPromisesKept(reachable(node), {
            "INode", "INodeIdentity", "IDatagramMultiplexer", "ILinkManager", "ICellHandler", "ICircuitEdge",
            "IExitPolicy", "IExitResolver", "ITokenBucket", "IStunEndpoint", "IDatagramLinkEndpoint",
            "IDatagramHandler", "IStatusSource",
        })
        self.assertPluggedInProvide(node)
        for name in ("links", "stream", "stun-server", "onion", "dht", "datagram-links", "nat-relay"):
            node.getServiceNamed(name)

    def test_plainRelay(self):
        """A relay that is no exit: its switch's edge refuses streams."""
        node = buildRelay(self)
        broken = self.assertPromisesKept(reachable(node), {"INode", "ILinkManager", "ICellHandler", "IStunEndpoint"})
        self.assertEqual(set(broken), set(BROKEN), "a BROKEN entry is fixed: remove it")
        self.assertPluggedInProvide(node)

    def test_client(self):
        withoutRoot(self)
        node = buildClient(self, "--tun", "--mesh-relay", "00" * 32 + "@127.0.0.1:9", "--mesh-turn", "127.0.0.1:9")
        socks = node.getServiceNamed("socks").factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        self.assertPromisesKept(reachable(node, socks), {
            "INode", "INodeIdentity", "IDatagramMultiplexer", "ILinkManager", "ICellHandler", "ICircuitManager",
            "IStreamOpener", "IStreamReceiver", "IStatusSource", "IStunEndpoint", "IDatagramLinkEndpoint",
            "IHolePuncher", "IRouteController",
        })
        self.assertPluggedInProvide(node)
        for name in ("links", "dht", "onion", "circuits", "socks", "datagram-links", "mesh"):
            node.getServiceNamed(name)

    def test_transports(self):
        from meshvpn.link.transports import availableTransports

        for transport in availableTransports().values():
            verifyObject(I.IPluggableTransport, transport)


class RunningRolesTests(RoleProvidersMixin, unittest.TestCase):
    """Providers made at run time: the DHT and relay directory, links both ways (TLS and datagram), a circuit."""

    timeout = 60

    @defer.inlineCallbacks
    def test_relayAndClient(self):
        from meshvpn.circuits.builder import CircuitBuilder
        from meshvpn.circuits.relayinfo import relayInfo
        from meshvpn.link.manager import LinkTarget
        from meshvpn.streams.edge import attachStreams

        relayNode = buildRelay(self, "--nat-relay", "true", "--turn", "127.0.0.1:0")
        relayNode.startService()
        self.addCleanup(relayNode.stopService)
        yield relayNode.whenStarted
        relayUdp = relayNode.addresses()["udp"]
        # The client is built, not started (its circuit manager would look
        # for a directory): its own link manager, switch and datagram links
        # do the work.
        clientNode = buildClient(self, "--mesh-relay", f"{relayNode.identity.nodeIdHex}@{relayUdp}")
        for name in ("udp", "datagram-links"):
            clientNode.getServiceNamed(name).startService()
            self.addCleanup(clientNode.getServiceNamed(name).stopService)
        host, port = relayUdp.rsplit(":", 1)
        datagramLink = yield clientNode.getServiceNamed("datagram-links").endpoint.connect(
            relayNode.identity.nodeId, (host, int(port)))
        # FINISH is resent on a timer the endpoint does not keep (so stopping
        # cannot cancel it) until the relay confirms: wait for it to run out.
        def finishPending():
            return any(getattr(c.func, "__name__", "") == "_sendFinish" for c in reactor.getDelayedCalls())

        while finishPending():
            yield task.deferLater(reactor, 0.05, lambda: None)
        links = clientNode.getServiceNamed("links")
        self.addCleanup(links.stopService)
        descriptor = relayNode.getServiceNamed("dht").getServiceNamed("publisher").makeDescriptor()
        link = yield links.getLink(LinkTarget.of(descriptor))
        build = CircuitBuilder(reactor, clientNode.getServiceNamed("onion").switch, links, onCircuit=attachStreams)
        circuit = yield build([relayInfo(descriptor)])  # one hop: the relay
        self.addCleanup(circuit.close)

        self.assertPromisesKept(reachable(relayNode, clientNode, link, circuit, datagramLink), {
            "IDHT", "IRelayDirectory", "ILink", "ICircuit", "IDatagramLinkEndpoint", "IDatagramLink", "IStunEndpoint",
            "ICellHandler",
        })
        verifyObject(I.IDatagramLink, datagramLink)
        relayDatagramLinks = relayNode.getServiceNamed("datagram-links").endpoint
        verifyObject(I.IDatagramLink, relayDatagramLinks.linkTo(clientNode.identity.nodeId))
        self.assertEqual(link.peerId, relayNode.identity.nodeId)
        self.assertEqual([hop.nodeId for hop in circuit.path], [relayNode.identity.nodeId])
        verifyObject(I.ILink, link)
        verifyObject(I.ICircuit, circuit)
        [relaySide] = relayNode.getServiceNamed("links").links()
        verifyObject(I.ILink, relaySide)
