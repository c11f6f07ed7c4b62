"""Tests for DNS at the exit (meshvpn.exit.dns): a fake resolver, then a real twisted.names server on loopback."""

from twisted.internet import defer, task
from twisted.names import dns, error as dnserror, server
from twisted.names.common import ResolverBase
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from meshvpn.errors import ResolveFailed
from meshvpn.exit.dns import ExitResolver, makeUpstream
from meshvpn.exit.policy import ExitPolicy, defaultExitPolicy
from meshvpn.interfaces import IExitResolver


def rr(name, type, value, ttl=300):
    payload = {
        dns.A: lambda: dns.Record_A(value, ttl),
        dns.AAAA: lambda: dns.Record_AAAA(value, ttl),
        dns.CNAME: lambda: dns.Record_CNAME(value, ttl),
        dns.PTR: lambda: dns.Record_PTR(value, ttl),
    }[type]()
    return dns.RRHeader(name, type, dns.IN, ttl, payload)


class FakeUpstream:
    """Answers from a table; a value may be an exception class to fail with."""

    def __init__(self, table):
        self.table = table
        self.calls = []
        self.held = None

    def _answer(self, kind, name):
        self.calls.append((kind, name))
        if self.held is not None:
            d = defer.Deferred()
            self.held.append(d)
            return d
        value = self.table.get((kind, name), [])
        if isinstance(value, type):
            return defer.fail(value())
        return defer.succeed((value, [], []))

    def lookupAddress(self, name):
        return self._answer("A", name)

    def lookupIPV6Address(self, name):
        return self._answer("AAAA", name)

    def lookupPointer(self, name):
        return self._answer("PTR", name)


TABLE = {
    ("A", "www.example.com"): [rr("www.example.com", dns.CNAME, "web.example.com"), rr("web.example.com", dns.A, "198.18.0.10", 120)],
    ("AAAA", "www.example.com"): [rr("web.example.com", dns.AAAA, "2001:db8::10", 60)],
    ("A", "v4only.example.com"): [rr("v4only.example.com", dns.A, "198.18.0.11")],
    ("A", "nx.example.com"): dnserror.DNSNameError,
    ("AAAA", "nx.example.com"): dnserror.DNSNameError,
    ("A", "broken.example.com"): dnserror.DNSServerError,
    ("AAAA", "broken.example.com"): dnserror.DNSServerError,
    ("A", "rebind.example.com"): [rr("rebind.example.com", dns.A, "127.0.0.1")],
    ("A", "mixed.example.com"): [rr("mixed.example.com", dns.A, "10.0.0.1"), rr("mixed.example.com", dns.A, "198.18.0.12")],
    ("PTR", "10.0.18.198.in-addr.arpa"): [rr("10.0.18.198.in-addr.arpa", dns.PTR, "web.example.com")],
}


class FakeResolverTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.upstream = FakeUpstream(TABLE)
        self.resolver = ExitResolver(self.clock, self.upstream, defaultExitPolicy(), minTTL=10, maxTTL=3600)

    def test_interface(self):
        self.assertTrue(verifyObject(IExitResolver, self.resolver))

    def test_aAndAAAA(self):
        answers = self.successResultOf(self.resolver.resolve("www.example.com"))
        self.assertEqual(answers, ["198.18.0.10", "2001:db8::10"])

    def test_caseAndTrailingDot(self):
        self.assertEqual(self.successResultOf(self.resolver.resolve("V4ONLY.Example.COM.")), ["198.18.0.11"])

    def test_cachedForMinTTL(self):
        self.successResultOf(self.resolver.resolve("www.example.com"))
        n = len(self.upstream.calls)
        self.clock.advance(59)
        self.successResultOf(self.resolver.resolve("www.example.com"))
        self.assertEqual(len(self.upstream.calls), n)
        # The shortest TTL among the answers (60 s) bounds the cache.
        self.clock.advance(1)
        self.successResultOf(self.resolver.resolve("www.example.com"))
        self.assertEqual(len(self.upstream.calls), 2 * n)

    def test_ttlClamped(self):
        r = ExitResolver(self.clock, self.upstream, None, minTTL=600)
        self.successResultOf(r.resolve("www.example.com"))
        self.clock.advance(599)
        self.successResultOf(r.resolve("www.example.com"))
        self.assertEqual(len(self.upstream.calls), 2)

    def test_cacheBounded(self):
        r = ExitResolver(self.clock, self.upstream, None, maxCache=1)
        self.successResultOf(r.resolve("www.example.com"))
        self.successResultOf(r.resolve("v4only.example.com"))
        self.assertEqual(r.status()["cache_entries"], 1)

    def test_concurrentLookupsShareOneQuery(self):
        self.upstream.held = []
        d1 = self.resolver.resolve("v4only.example.com")
        d2 = self.resolver.resolve("v4only.example.com")
        self.assertEqual(len(self.upstream.calls), 2)  # one A + one AAAA
        self.upstream.held[0].callback(([rr("v4only.example.com", dns.A, "198.18.0.11")], [], []))
        self.upstream.held[1].callback(([], [], []))
        self.assertEqual(self.successResultOf(d1), ["198.18.0.11"])
        self.assertEqual(self.successResultOf(d2), ["198.18.0.11"])

    def test_pendingBounded(self):
        self.upstream.held = []
        r = ExitResolver(self.clock, self.upstream, None, maxPending=1)
        r.resolve("a.example.com")
        f = self.failureResultOf(r.resolve("b.example.com"), ResolveFailed)
        self.assertTrue(f.value.transient)

    def test_nxdomainIsNonTransientAndNegativelyCached(self):
        f = self.failureResultOf(self.resolver.resolve("nx.example.com"), ResolveFailed)
        self.assertFalse(f.value.transient)
        n = len(self.upstream.calls)
        self.failureResultOf(self.resolver.resolve("nx.example.com"), ResolveFailed)
        self.assertEqual(len(self.upstream.calls), n)

    def test_servfailIsTransientAndNotCached(self):
        f = self.failureResultOf(self.resolver.resolve("broken.example.com"), ResolveFailed)
        self.assertTrue(f.value.transient)
        n = len(self.upstream.calls)
        self.failureResultOf(self.resolver.resolve("broken.example.com"), ResolveFailed)
        self.assertEqual(len(self.upstream.calls), 2 * n)

    def test_noRecords(self):
        f = self.failureResultOf(self.resolver.resolve("empty.example.com"), ResolveFailed)
        self.assertFalse(f.value.transient)

    def test_privateAnswersRefused(self):
        # No rebinding a public name to the exit's own network.
        f = self.failureResultOf(self.resolver.resolve("rebind.example.com"), ResolveFailed)
        self.assertIn("refuses", str(f.value))
        self.assertEqual(self.successResultOf(self.resolver.resolve("mixed.example.com")), ["198.18.0.12"])

    def test_literals(self):
        self.assertEqual(self.successResultOf(self.resolver.resolve("198.18.0.1")), ["198.18.0.1"])
        self.failureResultOf(self.resolver.resolve("127.0.0.1"), ResolveFailed)
        self.assertEqual(self.upstream.calls, [])

    def test_badNames(self):
        for name in ["", "a" * 300, "a..b", "bad name.com", "x\x00y.com", "-" * 64 + ".com", None, "ü.com"]:
            f = self.failureResultOf(self.resolver.resolve(name), ResolveFailed)
            self.assertFalse(f.value.transient, name)
        self.assertEqual(self.upstream.calls, [])

    def test_ptr(self):
        self.assertEqual(self.successResultOf(self.resolver.resolvePTR("198.18.0.10")), ["web.example.com"])
        self.failureResultOf(self.resolver.resolvePTR("10.0.0.1"), ResolveFailed)
        self.failureResultOf(self.resolver.resolvePTR("not-an-ip"), ResolveFailed)

    def test_timeoutIsTransient(self):
        self.upstream.held = []
        d = self.resolver.resolve("slow.example.com")
        for h in self.upstream.held:
            h.errback(Failure(dnserror.DNSQueryTimeoutError(None)))
        self.assertTrue(self.failureResultOf(d, ResolveFailed).value.transient)


class _Zone(ResolverBase):
    """A tiny authoritative answerer for the loopback DNS server."""

    def __init__(self, records):
        super().__init__()
        self.records = records

    def _lookup(self, name, cls, type, timeout):
        key = (name.decode("ascii").lower(), type)
        if key in self.records:
            return defer.succeed((self.records[key], [], []))
        if any(n == key[0] for n, _ in self.records):
            return defer.succeed(([], [], []))
        return defer.fail(dnserror.DomainError(name))


class LoopbackDNSServerTests(unittest.TestCase):
    """A real twisted.names server on 127.0.0.1, started by the test, as the upstream."""

    def setUp(self):
        from twisted.internet import reactor

        self.reactor = reactor
        zone = _Zone(
            {
                ("www.test.invalid", dns.A): [rr("www.test.invalid", dns.A, "198.18.5.5", 77)],
                ("www.test.invalid", dns.AAAA): [rr("www.test.invalid", dns.AAAA, "2001:db8::55", 77)],
                ("inside.test.invalid", dns.A): [rr("inside.test.invalid", dns.A, "192.168.1.1")],
            }
        )
        factory = server.DNSServerFactory(authorities=[zone])
        self.port = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.upstream = makeUpstream(reactor, ("127.0.0.1", self.port.getHost().port), timeouts=(2,))
        self.resolver = ExitResolver(reactor, self.upstream, defaultExitPolicy())


    @defer.inlineCallbacks
    def test_resolvesThroughRealServer(self):
        answers = yield self.resolver.resolve("www.test.invalid")
        self.assertEqual(sorted(answers), ["198.18.5.5", "2001:db8::55"])
        self.assertEqual(self.resolver.status()["queries"], 1)
        again = yield self.resolver.resolve("WWW.test.invalid")
        self.assertEqual(sorted(again), sorted(answers))
        self.assertEqual(self.resolver.status()["cache_hits"], 1)

    @defer.inlineCallbacks
    def test_nxdomainFromRealServer(self):
        with self.assertRaises(ResolveFailed) as cm:
            yield self.resolver.resolve("nothing.test.invalid")
        self.assertFalse(cm.exception.transient)

    @defer.inlineCallbacks
    def test_privateAnswerFromRealServerRefused(self):
        with self.assertRaises(ResolveFailed):
            yield self.resolver.resolve("inside.test.invalid")
        permissive = ExitResolver(self.reactor, self.upstream, ExitPolicy.fromText("accept *:*"))
        self.assertEqual((yield permissive.resolve("inside.test.invalid")), ["192.168.1.1"])
