"""The exit's side of streams: BEGIN becomes an outgoing TCP connection, RESOLVE a DNS lookup.

These are the C{accept} and C{resolve} callables the exit's per-circuit
L{meshvpn.streams.mux.StreamMux} is given (through
L{meshvpn.streams.edge.StreamExitEdge}).  The connector decides policy and the
END reason; the connection is a L{meshvpn.exit.direct.TCPStream}, which the
mux splices to the circuit stream, and the circuit's bandwidth throttle
rides on it.
"""

import ipaddress

from twisted.internet import defer
from twisted.internet.protocol import Factory

from meshvpn.errors import ResolveFailed
from meshvpn.exit.direct import TCPStream
from meshvpn.onion.streammsgs import AnswerType

_REVERSE_SUFFIXES = (".in-addr.arpa", ".ip6.arpa")
MAX_TTL = 3600


def exitAcceptor(connector, limiter=None):
    """@return: C{accept(circuit, host, port)} for L{StreamExitEdge}: a Deferred L{TCPStream}."""

    def accept(circuit, host, port):
        throttle = limiter.circuit(id(circuit)) if limiter is not None else None
        return connector.connect(host, port, Factory.forProtocol(lambda: TCPStream(throttle)))

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


def _packed(address, ttl):
    ip = ipaddress.ip_address(address)
    return (AnswerType.IPV4 if ip.version == 4 else AnswerType.IPV6, ip.packed, min(ttl, MAX_TTL))


def _failed(failure):
    transient = failure.value.transient if failure.check(ResolveFailed) else True
    return [(AnswerType.ERROR_TRANSIENT if transient else AnswerType.ERROR_NONTRANSIENT, b"", 0)]

