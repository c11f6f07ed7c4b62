"""DNS at the exit: clients never resolve names themselves, the exit does it here.

Names are looked up (A and AAAA together) with C{twisted.names} against a
configurable upstream server, answers are cached for their TTL (clamped, in
a bounded LRU table, timed by C{IReactorTime}), and concurrent lookups of
one name share one query.  Failures come back as L{ResolveFailed} with
C{transient} set the way Tor's RESOLVED errors are (try later vs. never).
Answers the exit policy rejects for every port (private and local
addresses, the exit's own) are dropped, so a public name cannot be used to
reach the exit's own network.
"""

import collections
import ipaddress
import socket

from twisted.internet import defer, error
from twisted.logger import Logger
from twisted.names import client, dns
from twisted.names import error as dnserror
from zope.interface import implementer

from meshvpn.errors import ResolveFailed
from meshvpn.interfaces import IExitResolver

MAX_CACHE = 4096
MAX_PENDING = 256
MAX_ANSWERS = 16
MIN_TTL = 30
MAX_TTL = 1800
NEGATIVE_TTL = 60
QUERY_TIMEOUTS = (2, 4)  # seconds per try, twisted.names style

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-._")


def checkName(name):
    """
    @return: C{name} lower-cased without a trailing dot.
    @raise ResolveFailed: not something a DNS host name can be.
    """
    if not isinstance(name, str):
        raise ResolveFailed(repr(name), False, "not a name")
    n = name.lower().rstrip(".") if name.endswith(".") and not name.endswith("..") else name.lower()
    labels = n.split(".")
    if not n or len(n) > 253 or not _NAME_CHARS.issuperset(n) or any(not l or len(l) > 63 for l in labels):
        raise ResolveFailed(name[:255], False, "not a valid host name")
    return n


def _literal(name):
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return None


def makeUpstream(reactor, upstream, timeouts=QUERY_TIMEOUTS):
    """@return: a C{twisted.names} resolver asking only C{upstream} C{(host, port)}."""
    return client.Resolver(servers=[tuple(upstream)], reactor=reactor, timeout=tuple(timeouts))


@implementer(IExitResolver)
class ExitResolver:
    """
    @param upstream: an C{IResolver} (C{lookupAddress}, C{lookupIPV6Address},
        C{lookupPointer}), e.g. from L{makeUpstream}.
    @param policy: the exit's L{meshvpn.exit.policy.ExitPolicy} (its
        C{allowsAddress} filters answers), or C{None} to keep every answer.
    """

    log = Logger()

    def __init__(
        self,
        reactor,
        upstream,
        policy=None,
        maxCache=MAX_CACHE,
        minTTL=MIN_TTL,
        maxTTL=MAX_TTL,
        negativeTTL=NEGATIVE_TTL,
        maxPending=MAX_PENDING,
    ):
        self.reactor = reactor
        self.upstream = upstream
        self.policy = policy
        self.maxCache = maxCache
        self.minTTL, self.maxTTL, self.negativeTTL = minTTL, maxTTL, negativeTTL
        self.maxPending = maxPending
        self._cache = collections.OrderedDict()  # key -> (expiry, answers | ResolveFailed)
        self._pending = {}  # key -> [waiting Deferreds]
        self.counters = collections.Counter()

    # ---- public

    def resolve(self, name):
        literal = _literal(name) if isinstance(name, str) else None
        if literal is not None:
            return defer.maybeDeferred(self._filter, literal, [literal])
        try:
            key = checkName(name)
        except ResolveFailed as e:
            return defer.fail(e)
        return self._cached(("A", key), self._lookupAddresses).addCallback(lambda answers: self._filter(key, answers))

    def resolvePTR(self, address):
        literal = _literal(address) if isinstance(address, str) else None
        if literal is None:
            return defer.fail(ResolveFailed(str(address)[:64], False, "not an IP address"))
        if self.policy is not None and not self.policy.allowsAddress(literal):
            return defer.fail(ResolveFailed(literal, False, "address refused by the exit policy", refused=True))
        return self._cached(("PTR", literal), self._lookupPointer)

    def status(self):
        return {"cache_entries": len(self._cache), "pending": len(self._pending), **self.counters}

    # ---- policy

    def _filter(self, name, answers):
        if self.policy is None:
            return list(answers)
        kept = [a for a in answers if self.policy.allowsAddress(a)]
        if not kept:
            self.counters["refused_by_policy"] += 1
            raise ResolveFailed(name, False, f"{name!r} resolves only to addresses the exit refuses", refused=True)
        return kept

    # ---- cache

    def _cached(self, key, lookup):
        now = self.reactor.seconds()
        hit = self._cache.get(key)
        if hit is not None:
            expiry, value = hit
            if expiry > now:
                self._cache.move_to_end(key)
                self.counters["cache_hits"] += 1
                if isinstance(value, ResolveFailed):
                    return defer.fail(value)
                return defer.succeed(list(value))
            del self._cache[key]
        d = defer.Deferred()
        waiting = self._pending.get(key)
        if waiting is not None:
            waiting.append(d)
            return d
        if len(self._pending) >= self.maxPending:
            self.counters["refused_busy"] += 1
            return defer.fail(ResolveFailed(key[1], True, "too many lookups in progress"))
        self._pending[key] = [d]
        self.counters["queries"] += 1
        # May answer at once (a cache or a fake upstream): d is already waiting.
        lookup(key[1]).addBoth(self._answered, key)
        return d

    def _answered(self, result, key):
        if isinstance(result, tuple):
            answers, ttl = result
            self._store(key, answers, ttl)
            value = answers
        else:
            value = result.value if result.check(ResolveFailed) else self._translate(key[1], result)
            if not value.transient:
                self._store(key, value, self.negativeTTL)
        for d in self._pending.pop(key, []):
            if isinstance(value, ResolveFailed):
                d.errback(value)
            else:
                d.callback(list(value))

    def _store(self, key, value, ttl):
        ttl = min(max(ttl, self.minTTL), self.maxTTL)
        self._cache[key] = (self.reactor.seconds() + ttl, value)
        self._cache.move_to_end(key)
        while len(self._cache) > self.maxCache:
            self._cache.popitem(last=False)

    def _translate(self, name, failure):
        if failure.check(dnserror.DNSNameError):
            return ResolveFailed(name, False, f"{name!r}: no such name")
        if failure.check(dnserror.DNSServerError, dnserror.DNSQueryRefusedError, defer.TimeoutError, error.TimeoutError, dnserror.DNSQueryTimeoutError):
            return ResolveFailed(name, True, f"{name!r}: upstream DNS did not answer ({failure.type.__name__})")
        if failure.check(dnserror.DomainError, dnserror.DNSFormatError, dnserror.DNSNotImplementedError, dnserror.DNSUnknownError):
            return ResolveFailed(name, True, f"{name!r}: upstream DNS error ({failure.type.__name__})")
        self.log.failure("unexpected DNS failure", failure)
        return ResolveFailed(name, True, f"{name!r}: lookup failed")

    # ---- the lookups: each fires with (answers, ttl) or fails

    def _lookupAddresses(self, name):
        d4 = defer.maybeDeferred(self.upstream.lookupAddress, name)
        d6 = defer.maybeDeferred(self.upstream.lookupIPV6Address, name)
        return defer.DeferredList([d4, d6], consumeErrors=True).addCallback(self._combine, name)

    def _combine(self, results, name):
        answers, ttls, failures = [], [], []
        for ok, value in results:
            if not ok:
                failures.append(value)
                continue
            for rr in value[0]:
                if rr.type == dns.A:
                    answers.append(socket.inet_ntop(socket.AF_INET, rr.payload.address))
                elif rr.type == dns.AAAA:
                    answers.append(socket.inet_ntop(socket.AF_INET6, rr.payload.address))
                else:
                    continue
                ttls.append(rr.ttl)
        if answers:
            # One copy of each, A answers first, bounded.
            return list(dict.fromkeys(answers))[:MAX_ANSWERS], min(ttls)
        if failures:
            # NXDOMAIN on either family means the name does not exist.
            for f in failures:
                if f.check(dnserror.DNSNameError):
                    return f
            return failures[0]
        raise ResolveFailed(name, False, f"{name!r} has no A or AAAA records")

    def _lookupPointer(self, address):
        rev = dns.Name(ipaddress.ip_address(address).reverse_pointer).name.decode("ascii")
        return defer.maybeDeferred(self.upstream.lookupPointer, rev).addCallback(self._pointers, address)

    def _pointers(self, result, address):
        names = [rr.payload.name.name.decode("ascii", "replace") for rr in result[0] if rr.type == dns.PTR]
        if not names:
            raise ResolveFailed(address, False, f"{address} has no PTR records")
        return names[:MAX_ANSWERS], min(rr.ttl for rr in result[0] if rr.type == dns.PTR)
