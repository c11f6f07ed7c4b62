"""The node's datagram socket for a host whose UDP is blocked: a TURN allocation over TCP that comes back.

L{meshvpn.nat.turn_stream_client.openRelayedSocket} gives one allocation on
one stream; when that TCP connection drops (a middlebox timing it out, the
relay restarting, a censor resetting it), the allocation dies with it.  A
node cannot live on that: its multiplexer is bound once, for the node's
lifetime.  L{TurnStreamSocketService} is that lifetime's socket.  It stands
as the multiplexer's transport, opens a stream and an allocation, and when
the stream ends it opens another one (the next relay of its list, after a
backoff), so the multiplexer never sees its transport change.

While no allocation is up, what the node writes is dropped and counted
(C{dropped_down}): UDP is blocked here, there is no other way out.  DHT
queries then time out as they would on a lossy network, and datagram links
stall.  The new allocation has a new relayed address, so peers that knew
the old one (a datagram link's other end, a DHT node that stored our
contact) must learn it again: link and punch code does that as after a NAT
rebinding.
"""

from twisted.application import service
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.logger import Logger
from zope.interface import implementer

from meshvpn.hostport import formatHostPort
from meshvpn.interfaces import IStatusSource


class TurnStreamBackoff:
    """
    Seconds to wait before the next attempt: C{initial}, doubling per
    failure up to C{maximum}.  A stream that stayed up C{stableAfter}
    seconds resets it; one cut sooner counts as a failure, so a relay that
    accepts and drops at once is not hammered.
    """

    def __init__(self, initial=1.0, maximum=60.0, stableAfter=30.0):
        self.initial, self.maximum, self.stableAfter = initial, maximum, stableAfter
        self.failures = 0

    def failed(self):
        delay = min(self.initial * 2**self.failures, self.maximum)
        self.failures += 1
        return delay

    def lasted(self, seconds):
        """A stream that was up for C{seconds} ended.  @return: the delay before the next attempt."""
        if seconds >= self.stableAfter:
            self.failures = 0
        return self.failed()


@implementer(IStatusSource)
class TurnStreamSocketService(service.Service):
    """
    The multiplexer's UDP transport, carried by TURN allocations over
    streams to C{relays} (tried in turn), reopened with backoff when one ends.

    @param relays: a non-empty list of C{(nodeId, (host, port))}, each a
        relay's TURN stream port (C{--turn-tcp} on that relay).
    @param opener: C{opener(relay, protocol)} -> Deferred firing with a
        L{RelayedSocket} whose protocol is C{protocol} (the stream client
        by default; tests give their own).
    @ivar port: C{self} while running (the node reads its address there).
    """

    log = Logger()
    port = None

    def __init__(self, reactor, mux, relays, opener, backoff=None):
        if not relays:
            raise ValueError("TURN over TCP needs at least one relay")
        self.reactor, self.mux, self.relays, self.opener = reactor, mux, list(relays), opener
        self.backoff = backoff or TurnStreamBackoff()
        self.current = None  # the RelayedSocket while an allocation is up
        self._index = 0  # the relay tried next
        self._upSince = None
        self._retry = None
        self._opening = None
        self.counters = {"opened": 0, "lost": 0, "failed": 0, "dropped_down": 0}
        self.lastError = None
        mux.makeConnection(self)

    # -- the node's view: a bound port

    def privilegedStartService(self):
        pass  # nothing to bind: the socket is a relay's

    def startService(self):
        super().startService()
        self.port = self
        self._open()

    def stopService(self):
        super().stopService()
        self.port = None
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._opening is not None:
            self._opening.cancel()
        current, self.current = self.current, None
        if current is None:
            return None
        return current.stopListening().addErrback(lambda f: None)

    def address(self):
        host = self.getHost()
        return formatHostPort(host.host, host.port)

    # -- the multiplexer's transport

    def write(self, data, addr):
        if self.current is None:
            self.counters["dropped_down"] += 1
            return
        self.current.write(data, addr)

    def getHost(self):
        """The relayed address while up; C{0.0.0.0:0} (of the relays' family) while down."""
        if self.current is not None:
            return self.current.getHost()
        host = self.relays[self._index][1][0]
        return IPv6Address("UDP", "::", 0) if ":" in host else IPv4Address("UDP", "0.0.0.0", 0)

    def stopListening(self):
        return self.stopService()

    # -- what the current RelayedSocket delivers (we are its protocol)

    def makeConnection(self, transport):
        pass  # the multiplexer stays connected to us, whichever allocation carries it

    def datagramReceived(self, data, addr):
        self.mux.datagramReceived(data, addr)

    # -- opening, losing, reopening

    def _relay(self):
        return self.relays[self._index]

    def _open(self):
        self._retry = None
        relayId, server = self._relay()
        self._opening = self.opener((relayId, server), self)
        self._opening.addCallbacks(self._opened, self._openFailed, callbackArgs=(server,), errbackArgs=(server,))

    def _opened(self, relayed, server):
        self._opening = None
        if not self.running:
            relayed.stopListening().addErrback(lambda f: None)
            return
        self.current, self._upSince = relayed, self.reactor.seconds()
        self.counters["opened"] += 1
        self.lastError = None
        self.log.info("TURN over TCP: node socket up, relayed address {relayed} at {server}",
                      relayed=formatHostPort(*relayed.relayedAddress), server=formatHostPort(*server))
        stream = getattr(relayed, "stream", None)
        if stream is not None:
            stream.closed.addCallback(lambda _: self._lost(relayed, server))

    def _openFailed(self, failure, server):
        self._opening = None
        if failure.check(defer.CancelledError) or not self.running:
            return
        self.counters["failed"] += 1
        self.lastError = failure.getErrorMessage()
        self._next(f"could not allocate at {formatHostPort(*server)}: {self.lastError}", self.backoff.failed())

    def _lost(self, relayed, server):
        if relayed is not self.current:
            return  # stopped, or already replaced
        self.current = None
        self.counters["lost"] += 1
        self.lastError = "stream closed"
        # Its timers must not refresh over a dead stream; the release times out quietly.
        relayed.allocation.release().addErrback(lambda f: None)
        lasted = self.reactor.seconds() - self._upSince
        self._next(f"stream to {formatHostPort(*server)} lost after {lasted:.0f} s; node socket down "
                   f"(datagrams dropped, DHT queries time out, datagram links stall)",
                   self.backoff.lasted(lasted))

    def _next(self, why, delay):
        if not self.running:
            return
        self._index = (self._index + 1) % len(self.relays)
        self.log.warn("TURN over TCP: {why}; next attempt at {server} in {delay:.0f} s",
                      why=why, server=formatHostPort(*self._relay()[1]), delay=delay)
        self._retry = self.reactor.callLater(delay, self._open)

    # -- IStatusSource

    def status(self):
        current = self.current
        return {
            "state": "up" if current is not None else ("down" if self.running else "stopped"),
            "relay": formatHostPort(*self._relay()[1]),
            "relayed": formatHostPort(*current.relayedAddress) if current is not None else None,
            "last_error": self.lastError,
            **self.counters,
            **({"socket": dict(current.counters)} if current is not None else {}),
        }
