"""At most one link per peer, shared by every circuit to it (Arti's channel manager).

The manager owns link settings, the process's TLS contexts and the table of
open links by node id.  Concurrent L{LinkManager.getLink} calls for the same
peer at the same addresses share one connection attempt (keyed by node id
*and* addresses: an EXTEND2 naming a black hole for relay X must not make
honest extends to X wait on that attempt).  Incoming links whose initiator
authenticated are entered in the same table, so two relays keep one link
between them whoever dialled.  Every link's cells go to the one registered
L{meshvpn.interfaces.ICellHandler} (the onion layer) unless a caller sets its
own receiver on a link.  In VPN mode an egress gate
(L{meshvpn.interfaces.IDirectEgress}) is awaited before each dial, so the
peer's host route and kill-switch exception exist before its first SYN.

Incoming links are bounded the way Tor's DoS subsystem bounds connections
(L{LinkLimits}): per source address, links open at once and new links per
second; and incoming links never take the last C{outgoingReserve} places
of C{maxLinks}, so a relay whose table strangers filled can still open the
links its own circuits extend over.

A capacity probe gets a link of its own (L{LinkManager.openLink}): a fresh,
authenticated, probe-only link (L{meshvpn.link.protocol}) that is never
entered in the table, never announced to the cell handler and so never paused
by a read limiter or backpressure; a responder takes one only from a peer its
probe handler lets it echo now, for as long as the handler says (the slot),
and at most L{LinkLimits.probeLinksPerPeer} per peer and
L{LinkLimits.probeLinks} in all.
"""

import attrs
from twisted.application import service
from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from meshvpn.errors import LinkError, LinkSilent
from meshvpn.interfaces import ILinkManager, IStatusSource
from meshvpn.link.protocol import LinkProtocol, LinkSettings, State
from meshvpn.link.tlsctx import sharedLinkTLS
from meshvpn.link.tlsturn import LinkTLSProtocol
from meshvpn.link.transports import availableTransports, splitHostPort
from meshvpn.ratelimit import BucketTable, sourceKey


@attrs.frozen
class LinkLimits:
    """Bounds on incoming links, per source address and overall (Tor: DoSConnection*)."""

    maxPerAddress: int = 50         # incoming links from one address at once
    connectRate: float = 20.0       # new incoming links per second from one address
    connectBurst: int = 40
    maxAddresses: int = 16384       # addresses whose connect rate is remembered
    outgoingReserve: int = 512      # places of maxLinks incoming links never take (at most a quarter)
    # Incoming probe-only links: an honest measurer opens one per target and
    # slot; the second covers one being replaced (a drop, a slot's end racing
    # the next), so more is abuse.  A target's measurers are at most a team
    # of 9 and its slack, so 64 in all leaves room for plans that disagree.
    probeLinksPerPeer: int = 2
    probeLinks: int = 64


@attrs.frozen
class LinkTarget:
    """
    Where a peer is: its node id and the transports it accepts links on,
    as C{(transportName, address)} pairs in order of preference.
    """

    nodeId: bytes
    addresses: tuple

    @classmethod
    def of(cls, descriptor):
        """
        Accepts a L{LinkTarget}, or any descriptor with C{nodeId} (32 bytes)
        and C{linkAddresses} (sequence of C{(transportName, address)}).
        """
        if isinstance(descriptor, cls):
            return descriptor
        try:
            nodeId = bytes(descriptor.nodeId)
            addresses = tuple((str(t), str(a)) for t, a in descriptor.linkAddresses)
        except (AttributeError, TypeError, ValueError):
            raise LinkError("descriptor has no nodeId/linkAddresses") from None
        if len(nodeId) != 32 or not addresses:
            raise LinkError("descriptor has a bad node id or no link addresses")
        return cls(nodeId, addresses)


class _BoundedTLSFactory(TLSMemoryBIOFactory):
    """Refuses connections (closes them at once) while the manager is full or the source over its limits."""

    noisy = False  # no log line per outgoing link
    protocol = LinkTLSProtocol  # writes leave in their turn (meshvpn.link.tlsturn)

    def __init__(self, manager, *args, incoming=False, **kwargs):
        super().__init__(*args, **kwargs)
        self._manager = manager
        self._incoming = incoming

    def buildProtocol(self, addr):
        refused = self._manager._admit(self._incoming, _hostOf(addr))
        if refused:
            self._manager.counters[refused] += 1
            return None
        return super().buildProtocol(addr)


def _hostOf(addr):
    """
    Where a connection came from, as per-source limits count it: its IP,
    an IPv6 one's /64 (L{sourceKey}); C{None} for transports without one
    (e.g. in-memory).
    """
    return sourceKey(getattr(addr, "host", None) or None)


class _LinkFactory(Factory):
    """Builds LinkProtocols for one direction; wrapped in TLS by the manager."""

    noisy = False

    def __init__(self, manager, initiator, expectedId=None, transportName="tls", probeOnly=False):
        self._manager = manager
        self._initiator = initiator
        self._expectedId = expectedId
        self._transportName = transportName
        self._probeOnly = probeOnly
        self.built = None

    def buildProtocol(self, addr):
        m = self._manager
        link = LinkProtocol(m.reactor, m.identity, m.settings, self._initiator, self._expectedId, self._transportName,
                            probeOnly=self._probeOnly)
        m._linkBuilt(link, _hostOf(addr))
        self.built = link
        return link


@implementer(ILinkManager, IStatusSource)
class LinkManager(service.Service):
    """
    @param transports: C{{name: IPluggableTransport}}; default: every
        plugin found by L{availableTransports}.
    @param transportOptions: C{{name: dict}} passed to each transport.
    """

    log = Logger()

    def __init__(self, reactor, identity, settings=None, transports=None, transportOptions=None, tls=None, limits=None):
        self.reactor = reactor
        self.identity = identity
        self.settings = settings or LinkSettings()
        self.limits = limits or LinkLimits()
        self._connectRates = BucketTable(reactor, self.limits.connectRate, self.limits.connectBurst, self.limits.maxAddresses)
        self._incoming = 0
        self._incomingByHost = {}
        self._transports = transports
        self._transportOptions = transportOptions or {}
        self._tls = tls or sharedLinkTLS()
        self._byPeer = {}
        self._pending = {}
        self._all = set()
        self._handler = None
        self._directory = None  # where DIRECTORY records go (meshvpn/link/bridgedir.py)
        self._probe = None  # where PROBE records go (meshvpn/measure/probeecho.py)
        self._egress = None  # an IDirectEgress while a --tun client captures the machine
        self._announced = set()
        self._livenessObservers = []
        self._probeLinks = {}  # peer id -> its open probe-only links (both directions)
        self._probeLinksIn = 0
        self._probeLinkEnds = {}  # incoming probe-only link -> the call that closes it when its slot ends
        self.counters = {"opened_out": 0, "opened_in": 0, "failed": 0, "refused_full": 0, "refused_address": 0,
                         "refused_rate": 0, "cells_unhandled": 0, "closed_silent": 0, "suspected": 0,
                         "probe_links_out": 0, "probe_links_in": 0, "probe_links_failed": 0,
                         "probe_links_refused": 0, "probe_links_unassigned": 0, "probe_links_expired": 0}

    # ---- ILinkManager

    def _targetOf(self, descriptor):
        """@return: the L{LinkTarget} to dial; @raise LinkError: none, or ourselves."""
        target = LinkTarget.of(descriptor)
        if target.nodeId == self.identity.nodeId:
            raise LinkError("refusing a link to ourselves")
        return target

    def getLink(self, descriptor):
        try:
            target = self._targetOf(descriptor)
        except LinkError:
            return defer.fail()
        link = self._byPeer.get(target.nodeId)
        if link is not None and link.state is State.OPEN:
            return defer.succeed(link)
        key = (target.nodeId, target.addresses)
        waiters = self._pending.get(key)
        d = defer.Deferred()
        if waiters is None:
            self._pending[key] = waiters = [d]
            defer.Deferred.fromCoroutine(self._connect(target)).addBoth(self._attemptDone, key)
        else:
            waiters.append(d)
        return d

    def openLink(self, descriptor, purpose="probe"):
        if purpose != "probe":
            return defer.fail(LinkError(f"unknown link purpose {purpose!r}"))
        try:
            target = self._targetOf(descriptor)
        except LinkError:
            return defer.fail()
        d = defer.Deferred.fromCoroutine(self._connect(target, probeOnly=True))
        d.addErrback(self._probeLinkFailed)
        return d

    def _probeLinkFailed(self, failure):
        self.counters["probe_links_failed"] += 1
        return failure

    def setCellHandler(self, handler):
        self._handler = handler

    def setDirectoryHandler(self, handler):
        """C{handler.directoryReceived(link, payload)} gets every DIRECTORY record; C{None}: ignored."""
        self._directory = handler

    def _directoryReceived(self, link, payload):
        if self._directory is not None:
            self._directory.directoryReceived(link, payload)

    def setProbeHandler(self, handler):
        """
        C{handler.probeReceived(link, seq, data, echo)} gets every PROBE
        record; C{None}: ignored.  C{handler.probeLinkUntil(peerId)}, if
        the handler has it, admits incoming probe-only links (else none is).
        """
        self._probe = handler

    def _probeReceived(self, link, seq, data, echo):
        if self._probe is not None:
            self._probe.probeReceived(link, seq, data, echo)

    def setEgressGate(self, gate):
        self._egress = gate

    def addLivenessObserver(self, observer):
        self._livenessObservers.append(observer)

    def _suspicion(self, link, suspected):
        if link.peerId is None or self._byPeer.get(link.peerId) is not link:
            return  # an anonymous peer, or a second link to a peer: nobody routes through it
        if suspected:
            self.counters["suspected"] += 1
        if suspected and self._livenessObservers:  # a relay's many links: only counted
            self.log.info("link to {peer} suspected: a PING is unanswered after {t:.2f}s",
                          peer=link.peerId.hex()[:16], t=link.suspectTimeout())
        self._tellSuspicion(link.peerId, suspected)

    def _tellSuspicion(self, peerId, suspected):
        for observer in list(self._livenessObservers):
            try:
                observer.peerSuspected(peerId, suspected)
            except Exception:
                self.log.failure("liveness observer failed")

    def serverFactory(self, transportName="tls"):
        """The protocol factory to listen with on a server endpoint of C{transportName}."""
        return _BoundedTLSFactory(
            self, self._tls, False, _LinkFactory(self, False, transportName=transportName), clock=self.reactor,
            incoming=True,
        )

    def links(self):
        """Every link not yet closed (including handshaking and anonymous ones)."""
        return [l for l in self._all if l.state is not State.CLOSED]

    def linkTo(self, nodeId):
        """The open link registered for C{nodeId}, or C{None}."""
        link = self._byPeer.get(nodeId)
        return link if link is not None and link.state is State.OPEN else None

    def status(self):
        return {
            "links_open": sum(1 for l in self._all if l.state is State.OPEN),
            "links_in": self._incoming,
            "addresses_in": len(self._incomingByHost),
            "links_handshaking": sum(1 for l in self._all if l.state not in (State.OPEN, State.CLOSED)),
            "peers": len(self._byPeer),
            # liveness (link version 3): the slowest recent PONG over every open link
            "ping_rtt_max_ms": round(1000 * max((max(l.pingRtts, default=0.0) for l in self._all
                                                 if getattr(l, "pingRtts", None)), default=0.0), 1),
            "probe_links_open": sum(len(v) for v in self._probeLinks.values()),
            **self.counters,
        }

    def stopService(self):
        super().stopService()
        waits = []
        for link in list(self._all):
            if link.state is not State.CLOSED:
                waits.append(link.whenClosed())
                link.close(LinkError("node stopping"))
        return defer.DeferredList(waits)

    # ---- connecting

    def _transport(self, name):
        if self._transports is None:
            self._transports = availableTransports()
        return self._transports.get(name)

    async def _connect(self, target, probeOnly=False):
        errors = []
        for name, address in target.addresses:
            transport = self._transport(name)
            if transport is None or transport.kind != "stream":
                errors.append(f"{name}: transport not installed")
                continue
            try:
                await self._allowEgress(address)
                endpoint = transport.clientEndpoint(self.reactor, address, self._transportOptions.get(name, {}))
                links = _LinkFactory(self, True, target.nodeId, name, probeOnly)
                connecting = endpoint.connect(_BoundedTLSFactory(self, self._tls, True, links, clock=self.reactor))
                connecting.addTimeout(self.settings.connectTimeout, self.reactor)
                await connecting
                if links.built is None:
                    raise LinkError("too many links")
                # Whatever the transport wraps around it, the link is the
                # protocol our factory built; its own handshake timer bounds
                # the rest.
                return await links.built.whenOpen()
            except defer.TimeoutError:
                errors.append(f"{name}: timed out after {self.settings.connectTimeout:g}s")
            except Exception as e:
                errors.append(f"{name}: {e or type(e).__name__}")
        raise LinkError(f"no link to {target.nodeId.hex()[:16]}: " + "; ".join(errors))

    async def _allowEgress(self, address):
        """With an egress gate (VPN mode), wait until C{address} may be dialled outside the tunnel."""
        gate = self._egress
        if gate is None:
            return
        try:
            # a managed transport's address carries its arguments after the HOST:PORT
            host, port = splitHostPort(address.split(" ", 1)[0])
        except LinkError:
            return  # not an IP address: the transport reaches it some other way
        allowing = gate.allow([("tcp", host, port)])
        await allowing.addTimeout(self.settings.connectTimeout, self.reactor)

    def _attemptDone(self, result, key):
        waiters = self._pending.pop(key, [])
        if isinstance(result, Failure):
            self.counters["failed"] += 1
            for d in waiters:
                if not d.called:  # a caller may have cancelled its wait
                    d.errback(result.value)
            return None
        for d in waiters:
            if not d.called:
                d.callback(result)
        return None

    # ---- admission

    def _admit(self, incoming, host):
        """@return: C{None} to take a new connection, else the counter naming why not."""
        maxLinks = self.settings.maxLinks
        if len(self._all) >= maxLinks:
            return "refused_full"
        if not incoming:
            return None
        if self._incoming >= maxLinks - min(self.limits.outgoingReserve, maxLinks // 4):
            return "refused_full"
        if host is not None:
            if self._incomingByHost.get(host, 0) >= self.limits.maxPerAddress:
                return "refused_address"
            if not self._connectRates.tryConsume(host):
                return "refused_rate"
        return None

    # ---- link lifecycle

    def _linkBuilt(self, link, host=None):
        # Where the link came from: the switch counts CREATE2 limits by it
        # (L{meshvpn.onion.switch.peerKey}), so many links from one address share them.
        link.remoteHost = host
        link.onDirectory = self._directoryReceived
        link.onProbe = self._probeReceived
        link.onSuspicion = self._suspicion
        if not link.isInitiator:
            self._incoming += 1
            if host is not None:
                self._incomingByHost[host] = self._incomingByHost.get(host, 0) + 1
        self._all.add(link)
        link.whenOpen().addCallbacks(self._linkOpened, lambda f: None)
        link.whenClosed().addCallback(self._linkClosed, link)

    def _linkOpened(self, link):
        self.counters["opened_out" if link.isInitiator else "opened_in"] += 1
        if link.probeOnly:
            self._probeLinkOpened(link)
            return
        if link._receiver is None:
            link.setCellReceiver(self._receiverFor(link))
        if link.peerId is not None:
            current = self._byPeer.get(link.peerId)
            if current is None or current.state is State.CLOSED:
                self._byPeer[link.peerId] = link
        if self._handler is not None:
            self._announced.add(link)
            self._handler.linkOpened(link)

    def _probeLinkOpened(self, link):
        """A probe-only link: never in the table nor the cell handler's; an incoming one only within the bounds."""
        peer = link.peerId
        if not link.isInitiator:
            refused, until = self._refuseProbeLink(peer)
            if refused:
                self.counters[refused] += 1
                self.log.info("probe-only link from {peer} refused ({why})", peer=(peer or b"").hex()[:16], why=refused)
                link.close(LinkError("probe-only link refused"))
                return
            self._probeLinksIn += 1
            self._probeLinkEnds[link] = self.reactor.callLater(max(0.0, until - self.reactor.seconds()),
                                                               self._probeLinkExpired, link)
        self._probeLinks.setdefault(peer, set()).add(link)
        self.counters["probe_links_out" if link.isInitiator else "probe_links_in"] += 1

    def _refuseProbeLink(self, peer):
        """@return: C{(None, until)} to take an incoming probe-only link from C{peer}, else C{(counter, None)}."""
        if peer is None:
            return "probe_links_unassigned", None  # anonymous: nobody's measurer
        incoming = sum(1 for l in self._probeLinks.get(peer, ()) if not l.isInitiator)
        if incoming >= self.limits.probeLinksPerPeer \
                or self._probeLinksIn >= self.limits.probeLinks:
            return "probe_links_refused", None
        until = getattr(self._probe, "probeLinkUntil", None)
        until = until(peer) if until is not None else None
        if until is None:
            return "probe_links_unassigned", None
        return None, until

    def _probeLinkExpired(self, link):
        self._probeLinkEnds.pop(link, None)
        if link.state is not State.CLOSED:
            self.counters["probe_links_expired"] += 1
            link.close(LinkError("probe slot over"))

    def _receiverFor(self, link):
        def receive(cells):
            if self._handler is None:
                self.counters["cells_unhandled"] += len(cells)
            else:
                self._handler.cellsReceived(link, cells)

        return receive

    def _linkClosed(self, reason, link):
        if isinstance(reason, LinkSilent):
            self.counters["closed_silent"] += 1
            self.log.info("link to {peer} closed: {why}", peer=(link.peerId or b"").hex()[:16], why=str(reason))
        if link in self._all and not link.isInitiator:
            self._incoming -= 1
            host = link.remoteHost
            if host is not None:
                left = self._incomingByHost[host] - 1
                if left:
                    self._incomingByHost[host] = left
                else:
                    del self._incomingByHost[host]
        self._all.discard(link)
        probeLinks = self._probeLinks.get(link.peerId)
        if probeLinks is not None and link in probeLinks:
            probeLinks.discard(link)
            if not probeLinks:
                del self._probeLinks[link.peerId]
            if not link.isInitiator:
                self._probeLinksIn -= 1
        end = self._probeLinkEnds.pop(link, None)
        if end is not None and end.active():
            end.cancel()
        if link.peerId is not None and self._byPeer.get(link.peerId) is link:
            del self._byPeer[link.peerId]
            if link.suspected:  # gone (closed as silent, or otherwise): the next link starts clean
                self._tellSuspicion(link.peerId, False)
        if link in self._announced:
            self._announced.discard(link)
            if self._handler is not None:
                self._handler.linkClosed(link, reason)
