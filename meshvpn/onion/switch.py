"""The circuit switch: a node's channels and the circuits they carry.

Every link the node uses for circuits gets a L{Channel} (its circuit map and
outbound queue).  The switch is what the link plane talks to (an
L{ICellHandler}), what answers CREATE2 (ntor with the node's onion keys),
and what finds the link an EXTEND2 asks for.  Cells themselves are switched
by the channels and the circuits (L{meshvpn.onion.relaycircuit}).

CREATE2 is answered with whichever handshake it asks for that the relay
speaks (L{meshvpn.onion.circhandshake}: ntor, ntor v3, or ntor v3 with
ML-KEM-768), and the reply goes out in as many cells as it takes
(L{meshvpn.onion.fragments}).

CREATE2 is the one cell that costs a relay real CPU (three X25519
operations, about 0.1 ms; the hybrid handshake adds an ML-KEM
encapsulation, about 0.06 ms), so it is admitted in three steps, after Tor's
DoS subsystem:

 1. per peer address (all of its links together, so a new link brings no
    new burst): a token bucket and a cap on circuits per link;
 2. a node-wide budget of handshakes per second, which keeps the CPU for
    moving cells whoever floods;
 3. when that budget is spent, CREATE2s wait in a short queue per peer
    address and are answered round-robin, one per peer in turn, so a
    flooding peer gets one share like everyone else instead of the whole
    budget; a full queue or a wait past C{createMaxDelay} is refused with
    DESTROY RESOURCELIMIT.

A peer over its rate or with a full queue is also held: the switch stops
reading its links (Twisted push producers, as for full queues) until it has
a token again.  Refusing cell by cell would still cost a TLS decryption and
a DESTROY per cell at whatever rate the peer can write; held, its flood
waits in its own socket buffers and costs the relay nothing.

EXTEND2 targets are checked before any dial (L{checkExtendTarget}): a
client must not make a relay connect to its own host or its private
network, nor learn which of their ports are open from the answer or its
timing.

An EXTEND2 to a peer whose link is suspected (a PING unanswered: the peer
hung, or the path to it cut) is answered TRUNCATED at once rather than sent
into that link: the CREATE2 would wait there until the client's build
timeout (10 s under load), where a quick refusal lets it build around the
peer now.  A client learns nothing it could not see by trying.
"""

import collections
import ipaddress

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IConsumer
from zope.interface import implementer

from meshvpn.errors import LinkError
from meshvpn.interfaces import ICellHandler, IStatusSource
from meshvpn.hostport import splitHostPort
from meshvpn.localaddrs import isInternal
from meshvpn.link.protocol import CIRCUIT_VERSIONS
from meshvpn.onion import circhandshake, circversions, ntor
from meshvpn.onion.cells import Create2, DestroyReason
from meshvpn.onion.channel import Channel
from meshvpn.onion.fragments import HalfOpenBudget, created2Cells
from meshvpn.onion.flusher import ChannelFlusher
from meshvpn.onion.nulledge import NullEdge
from meshvpn.onion.cgohops import CgoRelayHop
from meshvpn.onion.cgorelaycircuit import CgoRelayCircuit
from meshvpn.onion.relaycircuit import RelayCircuit
from meshvpn.onion.relaycrypto import RelayLayer
from meshvpn.ratelimit import TokenBucket


@attrs.define
class SwitchLimits:
    """Per-peer and node-wide limits, and queue bounds (cells) applied to each channel."""

    maxCircuitsPerPeer: int = 1024  # circuits a peer created on one link
    createRate: float = 50.0        # CREATE2 per second per peer address (all its links), sustained
    createBurst: int = 100
    # The node's handshake budget: about a quarter of one core at ~0.12 ms each.
    createGlobalRate: float = 2000.0
    createGlobalBurst: int = 200
    createQueuePerPeer: int = 16    # CREATE2s of one peer address waiting for the budget
    createMaxDelay: float = 2.0     # a CREATE2 that waited longer is refused (Tor: MaxOnionQueueDelay)
    maxPeerStates: int = 8192       # peer addresses remembered (their buckets outlive their links)
    # EXTEND2 to loopback, private, link-local or this host's addresses:
    # only for a test network where every relay is on one machine.
    extendAllowPrivate: bool = False
    queueHigh: int = 1024           # pause feeding links above this many queued cells
    queueLow: int = 256             # resume them below this
    queueLimit: int = 4096          # hard cap: the circuit that overfills is destroyed
    # CREATE2/CREATED2 bodies longer than a cell, half received (meshvpn.onion.fragments):
    halfOpenPerLink: int = 8        # per link
    maxHalfOpen: int = 256          # per node, all links together
    halfOpenMaxAge: float = 5.0     # seconds before an unfinished one is dropped (DESTROY TIMEOUT)


class ExtendRefused(LinkError):
    """An EXTEND2 named no target this relay may dial."""


class NextHopSuspected(LinkError):
    """An EXTEND2 named a peer whose link is suspected of being hung or cut."""


def peerKey(link):
    """
    What CREATE2 limits are counted by: the address the link came from
    (C{link.remoteHost}, set by the link manager), or the link itself when
    it has none (in-memory links).
    """
    return getattr(link, "remoteHost", None) or link


def checkExtendTarget(pairs, ownAddresses=()):
    """
    The C{(transport, address)} pairs of an EXTEND2 this relay may dial: an
    address must be C{IP:PORT} with a public IP (not loopback, private,
    link-local, multicast or reserved: L{meshvpn.localaddrs.isInternal})
    that is not one of C{ownAddresses} (this host's, see
    L{meshvpn.localaddrs.LocalAddresses}).  Names are never resolved for a
    client, and transports whose address is not C{IP:PORT} are refused.

    @raise ExtendRefused: no pair is left.
    """
    kept = []
    for transport, address in pairs:
        try:
            host, port = splitHostPort(address)
            ip = ipaddress.ip_address(host)
        except ValueError:
            continue
        if not 1 <= port <= 65535:
            continue
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if isInternal(ip) or ip in ownAddresses:
            continue
        kept.append((transport, address))
    if not kept:
        raise ExtendRefused("EXTEND2 names no public address this relay may dial")
    return tuple(kept)


class _Peer:
    """
    One peer address's CREATE2 state: its bucket, the CREATE2s waiting for
    the node's budget, and the channels whose reading is paused for it.
    """

    __slots__ = ("bucket", "queue", "held", "releaseCall")

    def __init__(self, bucket):
        self.bucket = bucket
        self.queue = collections.deque()  # (arrival time, channel, circId, Create2)
        self.held = set()
        self.releaseCall = None


@implementer(ICellHandler, IStatusSource)
class CircuitSwitch:
    """
    All circuits of one node: relay hops it carries and circuits it originates.

    @param nodeId: this node's 32-byte id (ntor's ID, and the circuit id bit).
    @param keyRing: an L{OnionKeyRing}, or C{None} for a node that relays nothing.
    @param connector: C{callable(Extend2) -> Deferred[ILink]} opening a link to
        an EXTEND2 target (the link manager); links already attached to that
        peer are reused first.  It is given the L{Extend2} with
        C{linkAddresses}: the C{(transport, address)} pairs that passed
        L{checkExtendTarget}.
    @param edge: the L{meshvpn.interfaces.ICircuitEdge} for cells that end here.
    @ivar localAddresses: this host's addresses (a container of
        L{ipaddress} objects, e.g. L{meshvpn.localaddrs.LocalAddresses}),
        never dialled for an EXTEND2; set by the role.
    """

    def __init__(self, clock, nodeId, keyRing=None, connector=None, edge=None, limits=None, readLimiter=None,
                 localAddresses=frozenset()):
        self.clock = clock
        self.nodeId = nodeId
        self.keyRing = keyRing
        self.connector = connector
        self.edge = edge or NullEdge()
        self.limits = limits or SwitchLimits()
        self.flusher = ChannelFlusher(clock)
        self._channels = {}  # link -> Channel
        self.readLimiter = readLimiter  # a LinkReadLimiter when the relay has a bandwidth limit
        self.localAddresses = localAddresses
        # DHT_SEND at the last hop (meshvpn.onion.dhtrelay.DHTDatagramRelay), set by the relay role; None: refused
        self.datagramRelay = None
        self.createBudget = TokenBucket(clock, self.limits.createGlobalRate, self.limits.createGlobalBurst)
        self.halfOpen = HalfOpenBudget(self.limits.maxHalfOpen)
        # Relay crypto schemes this relay offers (circhandshake.SCHEME_IDS), most preferred first.
        # CGO (tagging-resistant) first; the original scheme for clients that do not ask for CGO.
        self.relaySchemes = circhandshake.RELAY_SCHEMES
        self._peers = collections.OrderedDict()  # peerKey -> _Peer, least recently used first
        self._waiting = collections.deque()  # peers with queued CREATE2s, in round-robin order
        self._drainCall = None
        self.counters = {
            "circuits_created": 0, "circuits_destroyed": 0, "create_refused": 0,
            "create_queued": 0, "create_expired": 0, "extend_refused": 0, "extend_suspected": 0,
            "cells_unknown_circuit": 0, "protocol_errors": 0, "link_pauses": 0,
            "queue_overflows": 0, "handshakes_expired": 0, "created_ntor": 0, "created_ntor3": 0,
            "created_hybrid": 0, "created_cgo": 0, "cells_relayed_forward": 0, "cells_relayed_backward": 0,
        }

    # -- channels

    def attachLink(self, link):
        """Start switching cells of C{link} (idempotent); @return: its L{Channel}."""
        channel = self._channels.get(link)
        if channel is not None:
            return channel
        channel = Channel(self, link)
        self._channels[link] = channel
        link.setCellReceiver(channel.receive)
        setReadDone = getattr(link, "setReadDone", None)
        if setReadDone is not None:
            setReadDone(self.flusher.readDone)
        if IConsumer.providedBy(link):
            link.registerProducer(channel, True)
        link.whenClosed().addBoth(channel.linkClosed)
        return channel

    def channels(self):
        """@return: the open channels (a new list)."""
        return list(self._channels.values())

    def channelClosed(self, channel):
        """C{channel}'s link is gone: forget it."""
        self._channels.pop(channel.link, None)
        if self.readLimiter is not None:
            self.readLimiter.forget(channel)

    # ICellHandler: register the switch with linkManager.setCellHandler(switch).

    def linkOpened(self, link):
        self.attachLink(link)

    def cellsReceived(self, link, cells):
        self.attachLink(link).receive(cells)

    def linkClosed(self, link, reason):
        channel = self._channels.get(link)
        if channel is not None:
            channel.linkClosed(reason)

    def linkToPeer(self, peerId):
        for channel in self._channels.values():
            if channel.peerId == peerId and not channel.closed:
                return channel.link
        return None

    def connectTo(self, ext):
        """
        @return: a Deferred link to the target of the L{Extend2} C{ext},
            reusing an open one; fails at once with L{ExtendRefused} when
            it names no address this relay may dial, and with
            L{NextHopSuspected} when the open link to it is suspected.
        """
        existing = self.linkToPeer(ext.nodeId)
        if existing is not None:
            if getattr(existing, "suspected", False):
                self.counters["extend_suspected"] += 1
                return defer.fail(NextHopSuspected("the link to the next hop answers no PING"))
            return defer.succeed(existing)
        if self.connector is None:
            return defer.fail(LinkError("no link to the EXTEND2 target and no connector"))
        pairs = [(name, address) for name, sep, address in (t.partition(" ") for t in ext.transports) if sep and name]
        pairs += [("tls", f"[{host}]:{port}" if ":" in host else f"{host}:{port}") for host, port in ext.addresses]
        try:
            # The test-network opt-in dials whatever is named (every relay is on one machine).
            allowed = tuple(pairs) if self.limits.extendAllowPrivate else checkExtendTarget(pairs, self.localAddresses)
        except ExtendRefused as e:
            self.counters["extend_refused"] += 1
            return defer.fail(e)
        return defer.maybeDeferred(self.connector, _CheckedExtend(ext, allowed))

    # -- relay side

    def createBucket(self, link):
        """The CREATE2 bucket of C{link}'s peer address, shared by all of its links."""
        return self._peer(peerKey(link)).bucket

    def _peer(self, key):
        peer = self._peers.get(key)
        if peer is not None:
            self._peers.move_to_end(key)
            return peer
        if len(self._peers) >= self.limits.maxPeerStates:
            # Forget the least recently used idle peer (its bucket refilled long ago, most likely).
            for old, state in self._peers.items():
                if not state.queue and not state.held:
                    del self._peers[old]
                    break
        limits = self.limits
        peer = self._peers[key] = _Peer(TokenBucket(self.clock, limits.createRate, limits.createBurst))
        return peer

    def createReceived(self, channel, circId, payload):
        """
        A CREATE2 for the new circuit C{circId} (from the peer's half of the
        id space, not in use) arrived on C{channel}: answer it now, queue it
        for the node's budget, or refuse it with DESTROY RESOURCELIMIT (see
        the module docstring).
        """
        if self.keyRing is None:
            return self._refuse(channel, circId)
        if channel.peerCircuits >= self.limits.maxCircuitsPerPeer:
            return self._refuse(channel, circId)
        peer = self._peer(peerKey(channel.link))
        if not peer.bucket.tryConsume():
            self._hold(peer, channel, 1.0 / self.limits.createRate)
            return self._refuse(channel, circId)
        create = Create2.decode(payload)
        if not self._waiting and self.createBudget.tryConsume():
            self._answer(channel, circId, create)
            return
        if len(peer.queue) >= self.limits.createQueuePerPeer:
            self._hold(peer, channel, len(peer.queue) / self.limits.createGlobalRate)
            return self._refuse(channel, circId)
        if not peer.queue:
            self._waiting.append(peer)
        peer.queue.append((self.clock.seconds(), channel, circId, create))
        self.counters["create_queued"] += 1
        self._scheduleDrain()

    def _hold(self, peer, channel, seconds):
        """Stop reading C{channel} (one of C{peer}'s) for about C{seconds}: backpressure instead of work."""
        if channel not in peer.held and not channel.closed:
            peer.held.add(channel)
            channel.pauseReading(peer)
        if peer.releaseCall is None:
            peer.releaseCall = self.clock.callLater(max(0.01, seconds), self._release, peer)

    def _release(self, peer):
        peer.releaseCall = None
        held, peer.held = peer.held, set()
        for channel in held:
            channel.resumeReading(peer)

    def _refuse(self, channel, circId, counter="create_refused"):
        self.counters[counter] += 1
        channel.sendDestroy(circId, DestroyReason.RESOURCELIMIT)

    def advertisedHandshakes(self):
        """What this relay's descriptor lists (L{meshvpn.dht.descriptor.RelayDescriptor.handshakes})."""
        if self.keyRing is None:
            return ()
        names = set(circhandshake.supportedKinds()) | set(self.relaySchemes) - {circhandshake.TOR1}
        # the circuit versions it speaks, for clients that never link to it
        return tuple(sorted(names | set(circversions.descriptorNames(CIRCUIT_VERSIONS))))

    def _answer(self, channel, circId, create):
        hopKeys, reply = circhandshake.serverAnswer(create.htype, create.hdata, self.nodeId, self.keyRing.findKey,
                                                    self.relaySchemes)
        if hopKeys.scheme == circhandshake.CGO:
            circuit = CgoRelayCircuit(self, channel, circId, CgoRelayHop(hopKeys.material))
            self.counters["created_cgo"] += 1
        else:
            circuit = RelayCircuit(self, channel, circId, RelayLayer(hopKeys))
        channel.addCircuit(circId, circuit)
        channel.peerCircuits += 1
        self.counters["circuits_created"] += 1
        self.counters[_CREATED_COUNTER[hopKeys.kind]] += 1
        for cell in created2Cells(circId, reply):
            channel.send(cell)

    def _scheduleDrain(self):
        if self._drainCall is None and self._waiting:
            rate = self.createBudget.rate
            # Wait for a few tokens at a time: one reactor call per handshake would cost more than it saves.
            delay = 0.0 if rate is None else max(0.005, (1.0 - self.createBudget.available()) / rate)
            self._drainCall = self.clock.callLater(delay, self._drain)

    def _drain(self):
        """Answer waiting CREATE2s round-robin by peer while the budget lasts."""
        self._drainCall = None
        oldest = self.clock.seconds() - self.limits.createMaxDelay
        waiting, budget = self._waiting, self.createBudget
        while waiting:
            peer = waiting[0]
            arrived, channel, circId, create = peer.queue[0]
            stale = channel.closed or circId in channel.circuits
            if not stale and arrived >= oldest and not budget.tryConsume():
                break
            waiting.popleft()
            peer.queue.popleft()
            if peer.queue:
                waiting.append(peer)
            if stale:
                continue
            if arrived < oldest:
                self._refuse(channel, circId, "create_expired")
                continue
            try:
                self._answer(channel, circId, create)
            except ntor.HandshakeError:
                self.counters["protocol_errors"] += 1
                channel.sendDestroy(circId, DestroyReason.PROTOCOL)
        self._scheduleDrain()

    def createsWaiting(self):
        return sum(len(peer.queue) for peer in self._waiting)

    # -- status

    def circuitCount(self):
        return sum(len(channel.circuits) for channel in self._channels.values())

    def status(self):
        return {"links": len(self._channels), "circuit_ends": self.circuitCount(),
                "creates_waiting": self.createsWaiting(), **self.counters}


_CREATED_COUNTER = {circhandshake.NTOR: "created_ntor", circhandshake.NTOR3: "created_ntor3",
                    circhandshake.HYBRID: "created_hybrid"}


class _CheckedExtend:
    """An L{Extend2} as the connector sees it: its node id and the addresses that passed the check."""

    def __init__(self, ext, linkAddresses):
        self.ext = ext
        self.nodeId = ext.nodeId
        self.linkAddresses = linkAddresses
