"""The in-memory hostile relay: a 3-hop network whose guard (or middle) follows a hostile plan.

L{HostileNet} is the harness of the attack tests: a client, a guard, a
middle and an exit on in-memory links (L{meshvpn.tools.onionfakes}), any of
the relays made hostile with a plan (L{meshvpn.onion.hostile}), the
stream layer at both ends (the exit accepts streams to an echo target and
resolves names), and a packet echo at the exit.  What the hostile relay
could read is in its C{view}.
"""

from twisted.internet import defer, task

from meshvpn.errors import StreamRefused
from meshvpn.onion.destroy import CircuitDestroyed
from meshvpn.onion.hostile import installHostile
from meshvpn.onion.origin import OriginCircuit
from meshvpn.onion.relaycircuit import RelayCircuit
from meshvpn.onion.streammsgs import AnswerType
from meshvpn.streams.edge import StreamExitEdge, attachStreams
from meshvpn.streams.test.test_mux import Collect, FarEnd
from meshvpn.tools.onionfakes import MemoryNetwork, TestRelay

# What the client's traffic holds that no relay but the exit may read.
TARGET_HOST = "bank.example"
TARGET_PORT = 443
REQUEST = b"GET /account HTTP/1.1\r\nHost: bank.example\r\nCookie: session=SECRET-COOKIE-0123\r\n\r\n"
TRUE_ADDRESS = bytes([198, 18, 0, 77])


class HostileRelay(TestRelay):
    """A L{TestRelay} whose switch follows C{plan} (text or L{meshvpn.onion.hostile.Plan})."""

    def __init__(self, network, clock, name, plan, edge=None, directory=None):
        super().__init__(network, clock, name, edge=edge, directory=directory)
        self.hostility = installHostile(self.switch, plan, clock)

    @property
    def view(self):
        return self.hostility.view.read()


class _Echo(FarEnd):
    """The exit's far end of a stream: keeps what it gets (in the net's C{exitReceived}), answers upper-cased."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def write(self, data):
        self.net.exitReceived.append(data)
        if self.receiver is not None:
            self.receiver.streamDataReceived(data.upper())


class HostileNet:
    """
    Client -> guard -> middle -> exit in memory; C{guard=} / C{middle=} /
    C{exit=} give a relay a hostile plan.
    """

    def __init__(self, guard=None, middle=None, exit=None, timeout=10.0):
        self.clock = task.Clock()
        self.net = MemoryNetwork(self.clock)
        self.dir = {}
        self.timeout = timeout
        self.exitReceived = []
        self.exitPackets = []
        self.resolved = []
        edge = StreamExitEdge(self._accept, self._resolve, self._packets)

        def relay(name, plan, edge=None):
            if plan is None:
                return TestRelay(self.net, self.clock, name, edge=edge, directory=self.dir)
            return HostileRelay(self.net, self.clock, name, plan, edge=edge, directory=self.dir)

        self.guard = relay("guard", guard)
        self.middle = relay("middle", middle)
        self.exit = relay("exit", exit, edge)
        self.client = TestRelay(self.net, self.clock, "client", directory=self.dir)
        self.client.switch.keyRing = None

    # -- the exit's side

    def _accept(self, circuit, host, port):
        if port != TARGET_PORT:
            raise StreamRefused(4)
        return _Echo(self)

    def _resolve(self, circuit, name):
        self.resolved.append(name)
        return defer.succeed([(AnswerType.IPV4, TRUE_ADDRESS, 60)])

    def _packets(self, circuit, packets):
        self.exitPackets.extend(packets)

    # -- the client's side

    def build(self, path=None):
        """Start building a circuit through guard, middle and exit. @return: C{(circuit, Deferred)}."""
        path = path or [r.hopSpec() for r in (self.guard, self.middle, self.exit)]
        self.guardLink = self.client.linkTo(path[0].nodeId, anonymous=True)
        circ = OriginCircuit(self.client.switch, self.guardLink, path, buildTimeout=self.timeout)
        self.mux = attachStreams(circ)
        d = circ.build()
        self.pump()
        return circ, d

    def pump(self):
        self.net.pump()

    def openStream(self, circ, host=TARGET_HOST, port=TARGET_PORT):
        """BEGIN a stream. @return: C{(Deferred stream, collector of what comes back)}."""
        app = Collect()
        d = circ.openStream(host, port, protocol=app)
        self.pump()
        return d, app

    def hops(self, relay):
        """C{relay}'s hops of circuits (RelayCircuits) still open."""
        return [e for ch in relay.switch.channels() for e in ch.circuits.values() if isinstance(e, RelayCircuit)]

    def closedReason(self, circ):
        """The L{CircuitDestroyed} C{circ} closed with, or C{None} if it is open."""
        result = []
        circ.whenClosed().addBoth(result.append)
        return result[0] if result and isinstance(result[0], CircuitDestroyed) else None
