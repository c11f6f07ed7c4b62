"""The client's DNS server on its TUN address: every name is resolved at an exit.

While the VPN is up the system resolver points here (L{meshvpn.client.capture}),
so no query leaves the machine outside the tunnel: A and AAAA queries become
RESOLVE cells on a circuit (L{IStreamOpener.resolve}; the exit looks both
up); while IPv6 is blocked AAAA gets an empty answer (apps fall back to
IPv4 at once); other types are answered "not implemented" rather than
forwarded anywhere.
"""

from twisted.internet import defer
from twisted.logger import Logger
from twisted.names import common, dns, error, server

from meshvpn.errors import MeshVPNError

ISOLATION = ("tun-dns",)
TTL = 60


class ExitResolverClient(common.ResolverBase):
    """An C{IResolver} whose answers come from the exit through C{opener}."""

    log = Logger()

    def __init__(self, opener, ipv6=False):
        super().__init__()
        self.opener = opener
        self.ipv6 = ipv6
        self.queries = 0

    def _lookup(self, name, cls, type, timeout):
        self.queries += 1
        if cls != dns.IN:
            return defer.fail(error.DNSQueryRefusedError(name))
        if type == dns.AAAA and not self.ipv6:
            return defer.succeed(([], [], []))
        if type not in (dns.A, dns.AAAA):
            return defer.fail(error.DNSNotImplementedError(name))
        text = name.decode("ascii", "replace") if isinstance(name, bytes) else name
        d = defer.maybeDeferred(self.opener.resolve, text, ISOLATION)

        def answer(addresses):
            if type == dns.AAAA:
                records = [dns.RRHeader(name, dns.AAAA, dns.IN, TTL, dns.Record_AAAA(a, TTL)) for a in addresses if ":" in a]
            else:
                records = [dns.RRHeader(name, dns.A, dns.IN, TTL, dns.Record_A(a, TTL)) for a in addresses if ":" not in a]
            return records, [], []

        def failed(f):
            f.trap(MeshVPNError)
            raise error.DNSNameError(name)

        return d.addCallbacks(answer, failed)


def listenDNS(reactor, address, opener, port=53, ipv6=False):
    """
    Serve DNS (UDP and TCP) on C{address}:C{port}; AAAA answered when C{ipv6}.
    @return: C{(resolverClient, [listening ports])}.
    """
    client = ExitResolverClient(opener, ipv6)
    factory = server.DNSServerFactory(clients=[client])
    udp = reactor.listenUDP(port, dns.DNSDatagramProtocol(factory), interface=address)
    tcp = reactor.listenTCP(port, factory, interface=address)
    return client, [udp, tcp]
