"""The node's NAT class and public address, learned from its own socket, for the control plane.

`meshvpn netcheck` probes from a fresh socket; a running node needs the
answer for the socket it really uses (the mapping hole punching and the DHT
see).  So once the node has joined the DHT, and again every
C{every} seconds or when the user asks, this runs the RFC 5780 probe
(L{NATProbe}) from the node's socket against STUN servers it already
talks to: its DHT bootstrap nodes and, for more answers, relays from the
directory (relays answer STUN on their DHT port).  The report goes to the
control API and the metrics; a change of NAT class is published as a
C{nat} event.

Nothing is probed that the node would not contact anyway.
"""

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from meshvpn.hostport import HostPortError, parseIPPort

CHECK_EVERY = 1800.0
MAX_SERVERS = 3


class ConnectivityCheck(service.Service):
    """
    @param probe: an L{INATProbe} on the node's socket.
    @param servers: C{callable() -> [(host, port)]} STUN servers to ask.
    @param ready: a Deferred firing when probing makes sense (the DHT joined).
    """

    log = Logger()

    def __init__(self, reactor, probe, servers, ready=None, bus=None, every=CHECK_EVERY):
        self.reactor = reactor
        self.probe = probe
        self.servers = servers
        self.ready = ready
        self.bus = bus
        self.every = every
        self.report = None
        self.checkedAt = None
        self._running = None
        self._next = None

    def startService(self):
        super().startService()
        ready = self.ready if self.ready is not None else defer.succeed(None)
        ready.addCallback(self._firstCheck)

    def _firstCheck(self, passThrough):
        if self.running:
            self.check()
        return passThrough

    def stopService(self):
        super().stopService()
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None

    def check(self):
        """Probe now (unless a probe runs). @return: a Deferred firing with the report."""
        if self._running is None:
            servers = self._servers()
            if not servers:
                self.report = {"type": "unknown", "detail": "no STUN server known yet"}
                return defer.succeed(self.report)
            running = self._running = defer.maybeDeferred(self.probe.probe, servers)
            running.addCallbacks(self._done, self._failed)
            if self._running is None:  # answered at once
                return defer.succeed(self.report)
        # each caller gets its own Deferred: nobody's callbacks change what the others get
        d = defer.Deferred()
        self._running.addBoth(lambda r: (d.callback(self.report), r)[1])
        return d

    def _servers(self):
        out = []
        for address in self.servers():
            try:
                host, port = parseIPPort(address) if isinstance(address, str) else address
            except HostPortError:
                continue
            if (host, port) not in out:
                out.append((host, port))
        return out[:MAX_SERVERS]

    def _done(self, report):
        self._running = None
        before = (self.report or {}).get("type")
        self.report = {k: report.get(k) for k in ("type", "udp", "nat", "mapping", "filtering", "hairpinning",
                                                 "mapped_address", "rfc5780_server")}
        self.report["servers_answered"] = sum(1 for s in report.get("servers", []) if s.get("answered"))
        self.checkedAt = self.reactor.seconds()
        self.report["checked_at"] = self.checkedAt
        if report.get("type") != before:
            self.log.info("NAT: {type}, public address {addr}", type=report.get("type"),
                          addr=report.get("mapped_address") or "-")
            if self.bus is not None:
                self.bus.publish("nat", self.report)
        self._schedule()
        return self.report

    def _failed(self, failure):
        self._running = None
        self.log.failure("NAT check failed", failure)
        self._schedule()
        return self.report

    def _schedule(self):
        if self.running and (self._next is None or not self._next.active()):
            self._next = self.reactor.callLater(self.every, self.check)

    def status(self):
        return dict(self.report) if self.report is not None else {"type": "unknown", "detail": "not checked yet"}
