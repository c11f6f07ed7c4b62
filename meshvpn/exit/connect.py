"""The exit's side of BEGIN: resolve, check the policy, connect, or say why not.

L{ExitConnector.connect} is the whole decision in one place, so every way
to fail ends as exactly one END reason: RESOLVEFAILED (DNS), EXITPOLICY (the
policy rejects every resolved address for that port, including a name that
resolves to a private address), CONNECTREFUSED, TIMEOUT, NOROUTE, or MISC.
The policy check runs on resolved addresses only.
"""

import collections
import errno
import ipaddress

from twisted.internet import defer, endpoints, error
from twisted.internet.posixbase import PosixReactorBase
from twisted.logger import Logger
from twisted.python.failure import Failure

from meshvpn.errors import ResolveFailed, StreamRefused
from meshvpn.exit import connectnow
from meshvpn.onion.endreasons import EndReason

CONNECT_TIMEOUT = 30.0
MAX_ATTEMPTS = 2  # resolved addresses tried, in answer order

_NOROUTE_ERRNOS = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL, errno.ENETDOWN, errno.EHOSTDOWN}


def reasonForConnectError(failure):
    """@return: the L{EndReason} for a failed TCP connect."""
    if failure.check(error.ConnectionRefusedError):
        return EndReason.CONNECTREFUSED
    if failure.check(error.TimeoutError, error.TCPTimedOutError, defer.TimeoutError):
        return EndReason.TIMEOUT
    if failure.check(error.NoRouteError):
        return EndReason.NOROUTE
    if failure.check(error.ConnectError):
        os = failure.value.osError
        code = getattr(os, "errno", os if isinstance(os, int) else None)
        if code in _NOROUTE_ERRNOS:
            return EndReason.NOROUTE
        if code == errno.ECONNREFUSED:
            return EndReason.CONNECTREFUSED
        if code == errno.ETIMEDOUT:
            return EndReason.TIMEOUT
    if failure.check(error.ConnectionLost, error.ConnectionDone):
        return EndReason.CONNRESET
    return EndReason.MISC


class ExitConnector:
    """
    @param resolver: an L{meshvpn.interfaces.IExitResolver}.
    @param policy: an L{meshvpn.interfaces.IExitPolicy}.
    """

    log = Logger()

    def __init__(self, reactor, resolver, policy, connectTimeout=CONNECT_TIMEOUT, maxAttempts=MAX_ATTEMPTS):
        self.reactor = reactor
        self.resolver = resolver
        self.policy = policy
        self.connectTimeout = connectTimeout
        self.maxAttempts = maxAttempts
        # Outcomes of BEGINs, for status and metrics: counts only, never a target.
        self.counters = collections.Counter()

    def connect(self, host, port, protocolFactory):
        """
        Open a TCP connection for a stream's BEGIN.

        @return: a Deferred firing with the connected protocol built by
            C{protocolFactory}; fails with L{StreamRefused} whose C{reason}
            is the L{EndReason} to send.  Cancelling it cancels the connect.
        """
        self.counters["begun"] += 1
        d = defer.Deferred.fromCoroutine(self._connect(host, port, protocolFactory))
        d.addCallbacks(self._connected, self._refused)
        return d

    def _connected(self, protocol):
        self.counters["connected"] += 1
        return protocol

    def _refused(self, failure):
        reason = getattr(failure.value, "reason", None)
        self.counters["refused_policy" if reason == EndReason.EXITPOLICY else "failed"] += 1
        return failure

    def status(self):
        """BEGINs seen and how they ended (C{begun} - the rest = in progress)."""
        return {k: self.counters[k] for k in ("begun", "connected", "refused_policy", "failed")}

    async def _connect(self, host, port, protocolFactory):
        if not isinstance(port, int) or not 1 <= port <= 65535:
            raise StreamRefused(EndReason.EXITPOLICY, f"port {port!r} is not a TCP port")
        addresses = await self.resolveTarget(host)
        allowed = self.policy.allowsResolved(addresses, port)
        if not allowed:
            raise StreamRefused(EndReason.EXITPOLICY, "the exit policy rejects this target")
        reason = EndReason.MISC
        for address in allowed[: self.maxAttempts]:
            try:
                return await self._connectTCP(address, port, protocolFactory)
            except (error.ConnectError, error.ConnectionLost, error.ConnectionDone, defer.TimeoutError) as e:
                reason = reasonForConnectError(Failure(e))
        raise StreamRefused(reason)

    def _connectTCP(self, address, port, protocolFactory):
        if isinstance(self.reactor, PosixReactorBase):
            # A real reactor: connect in this turn (meshvpn.exit.connectnow).
            return connectnow.connectTCP(self.reactor, address, port, protocolFactory, self.connectTimeout)
        # Any other reactor (a test's memory reactor) gets Twisted's own connect.
        cls = endpoints.TCP6ClientEndpoint if ":" in address else endpoints.TCP4ClientEndpoint
        return cls(self.reactor, address, port, timeout=self.connectTimeout).connect(protocolFactory)

    async def resolveTarget(self, host):
        """
        @return: the list of addresses for C{host} (itself if a literal).
        @raise StreamRefused: RESOLVEFAILED.
        """
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            pass
        try:
            return await self.resolver.resolve(host)
        except ResolveFailed as e:
            # A name that resolves only to addresses the policy refuses (a
            # public name pointing inside) is a policy refusal, as in Tor.
            reason = EndReason.EXITPOLICY if e.refused else EndReason.RESOLVEFAILED
            raise StreamRefused(reason, str(e)) from None
