"""An exit's resources cannot be held by one client: circuit throttles are
released when their circuit closes, sockets and DNS lookups are capped per
circuit, per peer and for the node (a share of the descriptor limit)."""

from twisted.internet import defer, task
from twisted.trial import unittest

from meshvpn.errors import StreamRefused
from meshvpn.exit.budget import LOOKUP, SOCKET, ExitBudget, ExitLimits, socketBudget
from meshvpn.onion.cells import RelayCommand
from meshvpn.onion.endreasons import EndReason
from meshvpn.onion.streammsgs import AnswerType, Begin, End


class FakeLink:
    def __init__(self, host):
        self.remoteHost = host


class FakeChannel:
    def __init__(self, host):
        self.link = FakeLink(host)


class FakeCircuit:
    """A relay circuit as the exit edge sees it: it records what the mux sends back."""

    def __init__(self, peerHost="198.18.0.1"):
        self.prev = FakeChannel(peerHost)
        self.edgeState = None
        self.flowFlags = 0  # no XON/XOFF negotiated
        self.maxData = 494  # the original relay crypto's DATA size
        self.sent = []

    def sendRelay(self, command, streamId, data):
        self.sent.append((command, streamId, data))
        return True

    def circuitRoom(self):
        return 1000

    def ends(self):
        return [End.decode(d).reason for c, s, d in self.sent if c == RelayCommand.END]


def roleExit(test, *extra):
    """The exit edge and parts exactly as the relay role builds them."""
    from meshvpn.roles import relay

    options = relay.Options()
    options.parseOptions(["--data-dir", test.mktemp(), "--udp", "127.0.0.1:0", "--listen", "tcp:0:interface=127.0.0.1",
                          "--exit-dns", "127.0.0.1:53", "--flags", "exit", *extra])
    node = relay.makeService(options)
    return node.getServiceNamed("onion").switch.edge, node.status.sources["exit"]


class CircuitThrottles(unittest.TestCase):
    def test_throttleReleasedWhenTheCircuitCloses(self):
        """
        Every circuit that BEGINs gets a throttle; closing the circuit must
        release it (the old exit kept them forever, keyed by id(circuit),
        and after 65,536 circuits every BEGIN failed).
        """
        edge, parts = roleExit(self, "--circuit-rate", "1M")
        parts.limiter.maxCircuits = 50
        reasons = []
        for i in range(200):
            circuit = FakeCircuit()
            edge.relayReceived(circuit, RelayCommand.BEGIN, 1, Begin("192.0.2.80", 25).encode())  # refused by policy
            reasons.extend(circuit.ends())
            edge.circuitClosed(circuit, 0)
        self.assertEqual(set(reasons), {EndReason.EXITPOLICY})
        self.assertEqual(len(reasons), 200)
        self.assertEqual(len(parts.limiter._circuits), 0)

    def test_throttleIsTheCircuitsOwn(self):
        """Two live circuits never share a throttle, whatever id() says."""
        from meshvpn.ratelimit import BandwidthLimiter

        limiter = BandwidthLimiter(task.Clock(), circuitRate=1000)
        a, b = FakeCircuit(), FakeCircuit()
        self.assertIsNot(limiter.circuit(a), limiter.circuit(b))
        limiter.release(a)
        self.assertEqual(limiter.tracked(), 1)


class _Hanging:
    """A connector whose connections never complete (a black-holed target); cancelling fails them."""

    def __init__(self):
        self.pending = []

    def connect(self, host, port, factory):
        d = defer.Deferred()
        self.pending.append(d)
        return d


class Sockets(unittest.TestCase):
    def test_perCircuitPerPeerAndNode(self):
        budget = ExitBudget(ExitLimits(socketsPerCircuit=3, socketsPerPeer=5), maxSockets=7)
        a, b, c = FakeCircuit("198.18.0.1"), FakeCircuit("198.18.0.1"), FakeCircuit("198.18.0.2")
        slots = [budget.acquire(SOCKET, a) for _ in range(3)]
        e = self.assertRaises(StreamRefused, budget.acquire, SOCKET, a)
        self.assertEqual(e.reason, EndReason.RESOURCELIMIT)
        slots += [budget.acquire(SOCKET, b) for _ in range(2)]
        self.assertRaises(StreamRefused, budget.acquire, SOCKET, b)  # the peer's five are used
        slots += [budget.acquire(SOCKET, c) for _ in range(2)]
        self.assertRaises(StreamRefused, budget.acquire, SOCKET, c)  # the node's seven are used
        self.assertEqual(budget.refused, {"circuit": 1, "peer": 1, "node": 1})
        for slot in slots:
            slot.release()
            slot.release()  # twice is once
        self.assertEqual(budget.held(SOCKET), 0)
        self.assertEqual(budget.tracked(), (0, 0))

    def test_descriptorBudget(self):
        self.assertEqual(socketBudget(ExitLimits(), fdLimit=1024), 384)
        self.assertEqual(socketBudget(ExitLimits(), fdLimit=100), 16)
        self.assertGreater(ExitBudget().maxTotal[SOCKET], 0)

    def test_oneCircuitCannotTakeEverySocket(self):
        """
        One circuit opening streams to a target that never answers gets its
        share and no more (the old exit let 1024 streams x 1024 circuits
        exhaust the descriptors); failed connects give their socket back.
        """
        from meshvpn.exit.streams import exitAcceptor

        connector = _Hanging()
        budget = ExitBudget(ExitLimits(socketsPerCircuit=4))
        accept = exitAcceptor(connector, None, budget)
        circuit = FakeCircuit()
        opening = [accept(circuit, "192.0.2.80", 80) for _ in range(6)]
        refused = [self.failureResultOf(d, StreamRefused) for d in opening[4:]]
        self.assertEqual([f.value.reason for f in refused], [EndReason.RESOURCELIMIT] * 2)
        self.assertEqual(len(connector.pending), 4)
        connector.pending[0].errback(StreamRefused(EndReason.TIMEOUT))
        self.failureResultOf(opening[0], StreamRefused)
        self.assertEqual(budget.held(SOCKET, circuit), 3)
        self.assertEqual(len(connector.pending), 4)
        accept(circuit, "192.0.2.80", 80)
        self.assertEqual(len(connector.pending), 5)

    def test_roleExitHasABudget(self):
        edge, parts = roleExit(self)
        self.assertIsInstance(parts.budget, ExitBudget)
        self.assertIn("budget", parts.status())


class _SlowUpstream:
    """A DNS upstream that never answers."""

    def __init__(self):
        self.asked = 0

    def lookupAddress(self, name):
        self.asked += 1
        return defer.Deferred()

    lookupIPV6Address = lookupAddress


class Lookups(unittest.TestCase):
    def test_slowNamesFromOneCircuitLeaveTheRestResolving(self):
        """
        One circuit RESOLVEs hundreds of names that never answer: it holds
        at most its share of lookups, and another client still resolves
        (the old exit's 256 lookups in flight were anyone's to take).
        """
        from meshvpn.exit.dns import ExitResolver
        from meshvpn.exit.streams import circuitResolver, exitResolver

        clock = task.Clock()
        upstream = _SlowUpstream()
        resolver = ExitResolver(clock, upstream)
        budget = ExitBudget(ExitLimits(lookupsPerCircuit=16, lookupsPerPeer=64), maxLookups=resolver.maxPending)
        resolve = circuitResolver(exitResolver(resolver), budget)
        hostile = FakeCircuit("198.18.0.66")
        answers = [resolve(hostile, f"slow{i}.example") for i in range(300)]
        self.assertEqual(len(resolver._pending), 16)
        for d in answers[16:]:
            self.assertEqual(self.successResultOf(d), [(AnswerType.ERROR_TRANSIENT, b"", 0)])
        # many circuits through one peer: that peer's share, no more
        for i in range(20):
            for j in range(16):
                resolve(FakeCircuit("198.18.0.66"), f"slow-{i}-{j}.example")
        self.assertEqual(budget.held(LOOKUP), 64)
        honest = FakeCircuit("198.18.0.7")
        d = resolve(honest, "www.example")
        self.assertNoResult(d)  # it went to the upstream, not refused
        self.assertEqual(budget.held(LOOKUP, honest), 1)

    def test_roleExitKeepsResolvingForOthers(self):
        """
        The exit as the relay role builds it: one circuit RESOLVEs 300 names
        its upstream never answers; another client's RESOLVE must still be
        looked up, not refused (the old exit refused it: the hostile circuit
        held all 256 of the exit's lookups).
        """
        from meshvpn.onion.streammsgs import Resolve, Resolved

        edge, parts = roleExit(self)
        parts.resolver.upstream = _SlowUpstream()
        hostile = FakeCircuit("198.18.0.66")
        for sid in range(1, 301):
            edge.relayReceived(hostile, RelayCommand.RESOLVE, sid, Resolve(f"slow{sid}.example").encode())
        honest = FakeCircuit("198.18.0.7")
        edge.relayReceived(honest, RelayCommand.RESOLVE, 1, Resolve("www.example").encode())
        answered = [Resolved.decode(d).answers for c, s, d in honest.sent if c == RelayCommand.RESOLVED]
        self.assertEqual(answered, [], "the honest RESOLVE was refused at once")
        self.assertLessEqual(len(parts.resolver._pending), 17)

    def test_lookupSlotsComeBack(self):
        from meshvpn.exit.streams import circuitResolver

        budget = ExitBudget(ExitLimits(lookupsPerCircuit=1))
        pending = []
        resolve = circuitResolver(lambda name: pending.append(defer.Deferred()) or pending[-1], budget)
        circuit = FakeCircuit()
        d = resolve(circuit, "a.example")
        self.assertEqual(self.successResultOf(resolve(circuit, "b.example")), [(AnswerType.ERROR_TRANSIENT, b"", 0)])
        pending[0].callback([(AnswerType.IPV4, b"\x01\x02\x03\x04", 60)])
        self.successResultOf(d)
        self.assertEqual(budget.held(LOOKUP), 0)
        self.assertNoResult(resolve(circuit, "c.example"))
