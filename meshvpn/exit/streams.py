"""The exit's side of streams: BEGIN becomes an outgoing TCP connection, RESOLVE a DNS lookup.

These are the C{accept} and C{resolve} callables the exit's per-circuit
L{meshvpn.streams.mux.StreamMux} is given (through
L{meshvpn.streams.edge.StreamExitEdge}; L{ExitStreamEdge} is that edge with
the exit's resources).  The connector decides policy and the END reason;
the connection is a L{meshvpn.exit.direct.TCPStream}, which the mux splices
to the circuit stream, and the circuit's bandwidth throttle rides on it.

Every socket and lookup is held against the exit's budget
(L{meshvpn.exit.budget}) per circuit, per peer and for the node, and given
back when the connection ends or the lookup answers; a circuit's throttle
is keyed by the circuit itself (never by C{id()}, which Python reuses) and
released when the circuit closes.
"""

import ipaddress

from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

from meshvpn.errors import ResolveFailed, StreamRefused
from meshvpn.exit.budget import LOOKUP, SOCKET
from meshvpn.exit.direct import TCPStream
from meshvpn.onion.endreasons import EndReason
from meshvpn.onion.streammsgs import AnswerType
from meshvpn.streams.edge import StreamExitEdge

_REVERSE_SUFFIXES = (".in-addr.arpa", ".ip6.arpa")
MAX_TTL = 3600


class _HeldTCPStream(TCPStream):
    """A TCPStream that gives its socket back to the exit's budget when the connection ends."""

    def __init__(self, throttle, slot):
        super().__init__(throttle)
        self._slot = slot

    def connectionLost(self, reason):
        self._slot.release()
        super().connectionLost(reason)


def quietFactory(build):
    """
    A factory for one stream's connection: without C{noisy}, Twisted logs
    "Starting factory" and "Stopping factory" at info for every stream, a
    line of CPU and a timestamp per stream in the exit's log.
    """
    factory = Factory.forProtocol(build)
    factory.noisy = False
    return factory


def _isLiteral(host):
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def exitAcceptor(connector, limiter=None, budget=None):
    """
    @param limiter: the exit's L{meshvpn.ratelimit.BandwidthLimiter}, or C{None}.
    @param budget: the exit's L{meshvpn.exit.budget.ExitBudget}, or C{None}.
    @return: C{accept(circuit, host, port)} for L{StreamExitEdge}: a Deferred L{TCPStream}.
    """

    def accept(circuit, host, port):
        try:
            throttle = limiter.circuit(circuit) if limiter is not None else None
        except OverflowError as e:
            return defer.fail(StreamRefused(EndReason.RESOURCELIMIT, str(e)))
        if budget is None:
            return connector.connect(host, port, quietFactory(lambda: TCPStream(throttle)))
        try:
            socket = budget.acquire(SOCKET, circuit)
        except StreamRefused as e:
            return defer.fail(e)
        lookup = None
        if not _isLiteral(host):
            try:
                lookup = budget.acquire(LOOKUP, circuit)
            except StreamRefused as e:
                socket.release()
                return defer.fail(e)
        d = connector.connect(host, port, quietFactory(lambda: _HeldTCPStream(throttle, socket)))

        def settled(result):
            if lookup is not None:
                lookup.release()
            if isinstance(result, Failure):
                socket.release()  # no connection: nothing else will give it back
            return result

        return d.addBoth(settled)

    return accept


def _fromReverse(name):
    """The address a reverse name stands for, or C{None}."""
    labels = name.lower().rstrip(".").split(".")
    try:
        if name.lower().endswith(".in-addr.arpa") and len(labels) == 6:
            return str(ipaddress.IPv4Address(".".join(reversed(labels[:4]))))
        if name.lower().endswith(".ip6.arpa") and len(labels) == 34:
            nibbles = "".join(reversed(labels[:32]))
            return str(ipaddress.IPv6Address(int(nibbles, 16)))
    except ValueError:
        return None
    return None


def exitResolver(resolver, ttl=60):
    """@return: C{resolve(name)} answering in RESOLVED's C{(type, value, ttl)} form."""

    def resolve(name):
        if name.lower().endswith(_REVERSE_SUFFIXES):
            address = _fromReverse(name)
            if address is None:
                return defer.succeed([(AnswerType.ERROR_NONTRANSIENT, b"", 0)])
            d = resolver.resolvePTR(address)
            d.addCallback(lambda names: [(AnswerType.HOSTNAME, n.encode("ascii", "replace")[:255], ttl) for n in names])
            return d.addErrback(_failed)
        d = resolver.resolve(name)
        d.addCallback(lambda addresses: [_packed(a, ttl) for a in addresses])
        return d.addErrback(_failed)

    return resolve


def circuitResolver(resolve, budget=None):
    """
    @param resolve: C{resolve(name)} from L{exitResolver}.
    @return: C{resolve(circuit, name)} for L{StreamExitEdge}, holding one
        lookup of C{budget} while it runs (over a cap: a transient error).
    """

    def resolveOnCircuit(circuit, name):
        if budget is None:
            return resolve(name)
        try:
            slot = budget.acquire(LOOKUP, circuit)
        except StreamRefused:
            return defer.succeed([(AnswerType.ERROR_TRANSIENT, b"", 0)])
        return resolve(name).addBoth(lambda result: (slot.release(), result)[1])

    return resolveOnCircuit


class ExitStreamEdge(StreamExitEdge):
    """
    The exit's stream edge: BEGIN and RESOLVE within the exit's budget, and
    each circuit's throttle released when the circuit closes.

    @param parts: the exit's L{meshvpn.exit.settings.ExitParts}.
    """

    def __init__(self, parts, packetSink=None):
        super().__init__(exitAcceptor(parts.connector, parts.limiter, parts.budget),
                         circuitResolver(exitResolver(parts.resolver), parts.budget), packetSink)
        self._limiter = parts.limiter

    def circuitClosed(self, circuit, reason):
        super().circuitClosed(circuit, reason)
        if self._limiter is not None:
            self._limiter.release(circuit)


def _packed(address, ttl):
    ip = ipaddress.ip_address(address)
    return (AnswerType.IPV4 if ip.version == 4 else AnswerType.IPV6, ip.packed, min(ttl, MAX_TTL))


def _failed(failure):
    transient = failure.value.transient if failure.check(ResolveFailed) else True
    return [(AnswerType.ERROR_TRANSIENT if transient else AnswerType.ERROR_NONTRANSIENT, b"", 0)]

