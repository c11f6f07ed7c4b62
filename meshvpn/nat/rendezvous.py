"""Rendezvous through the DHT: two peers need no pre-agreed relay to start hole punching.

A peer registered with a NAT relay publishes, in the DHT, a short-lived
record saying where it can be signalled: that relay's node id and
address(es).  The record is an ordinary owned DHT record (BEP 44 model,
L{meshvpn.dht.records}): signed by the peer's identity key and stored
under C{SHA-256(0x00 || node id || SALT)}, a key only that node can fill.
A peer that wants a link looks the record up by the other's node id,
registers with that relay too, and sends its OFFER there; the ANSWER comes
back the way the offer came.

Why it cannot be redirected: the storing nodes and the reader both check
the signature and that the record belongs to the key asked for, and the
reader also checks that its publisher is the peer it asked about; a hostile
DHT node can withhold the record (we then signal through our own relay, as
before) but not forge or swap it.  The relay named could itself be hostile
-- it is the one the peer chose; the signalling it carries was already
bounded (PeerConnector acts only on configured peers).

What the record does not say: no candidate addresses (LAN or public).
Those travel only inside OFFER/ANSWER to a configured peer, so looking a
node up tells a stranger which relay it uses and nothing more.

Value layout (at most 1 + 32 + 1 + 2 * 19 bytes):

    version (1, = 1) | relay node id (32) | count (1, 1..2) | addresses (signal_wire layout)

This module does not import the DHT (a sibling plane): the role hands it an
L{meshvpn.interfaces.IDHT} and the record functions (C{makeRecord},
C{ownedKey}, C{verifyRecord}, C{RecordError}: the L{meshvpn.dht.records} module).
"""

import collections

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from meshvpn.errors import MeshVPNError
from meshvpn.interfaces import ISignallingChannel
from meshvpn.nat import signal_wire as sw

VERSION = 1
SALT = b"nat-rendezvous"
LIFETIME = 600  # seconds a record lives; republished at half of it
MAX_RELAY_ADDRESSES = 2
MAX_VALUE = 1 + 32 + 1 + MAX_RELAY_ADDRESSES * 19


class RendezvousError(MeshVPNError):
    """A rendezvous value is malformed; the text says how."""


def encodeRendezvous(relayId, addresses):
    addresses = list(addresses)
    if len(relayId) != sw.NODE_ID_LEN or not 1 <= len(addresses) <= MAX_RELAY_ADDRESSES:
        raise ValueError("a relay id of 32 bytes and 1 or 2 addresses")
    return bytes((VERSION,)) + relayId + bytes((len(addresses),)) + b"".join(sw.encodeAddress(a) for a in addresses)


def parseRendezvous(value):
    """@return: C{(relayId, [address])}.  @raise RendezvousError: anything malformed."""
    if len(value) > MAX_VALUE:
        raise RendezvousError(f"rendezvous of {len(value)} bytes (at most {MAX_VALUE})")
    if len(value) < 34:
        raise RendezvousError("rendezvous truncated")
    if value[0] != VERSION:
        raise RendezvousError(f"unknown rendezvous version {value[0]}")
    relayId, count = bytes(value[1:33]), value[33]
    if not 1 <= count <= MAX_RELAY_ADDRESSES:
        raise RendezvousError(f"{count} relay addresses (1..{MAX_RELAY_ADDRESSES})")
    offset, out = 34, []
    try:
        for _ in range(count):
            addr, offset = sw.decodeAddress(value, offset)
            out.append(addr)
    except sw.SignalParseError as e:
        raise RendezvousError(str(e)) from None
    if offset != len(value):
        raise RendezvousError(f"{len(value) - offset} trailing bytes")
    for host, port in out:
        if port == 0:
            raise RendezvousError("relay address with port 0")
    return relayId, out


class RendezvousDirectory:
    """
    Publishes this node's rendezvous and looks up other nodes'.

    @param dht: an L{meshvpn.interfaces.IDHT} (C{get}, C{put}).
    @param records: the DHT record functions (see the module docstring).
    @param identity: this node's identity (signs what it publishes); None to only look up.
    """

    log = Logger()

    def __init__(self, reactor, dht, records, identity=None, lifetime=LIFETIME, cacheSize=256, cacheFor=30.0):
        self.reactor, self.dht, self.records, self.identity = reactor, dht, records, identity
        self.lifetime = lifetime
        self._cache = collections.OrderedDict()  # node id -> (until, result)
        self._cacheSize, self._cacheFor = cacheSize, cacheFor
        self._seq = 0
        self._timer = None
        self._published = None
        self.counters = {"published": 0, "publish_failed": 0, "found": 0, "missing": 0, "rejected": 0}

    # -- our own record
    def publish(self, relayId, relayAddresses):
        """
        Publish (and keep republishing, at half its lifetime) that we are
        signalled through C{relayId} at C{relayAddresses}.
        @return: a Deferred firing with the number of nodes that stored it.
        """
        self._published = encodeRendezvous(relayId, relayAddresses)
        return self._put()

    def _put(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self.reactor.callLater(self.lifetime / 2, self._republish)
        now = self.reactor.seconds()
        self._seq = max(self._seq + 1, int(now * 1000))
        record = self.records.makeRecord(self.identity, SALT, self._published, self._seq, int(now + self.lifetime))
        d = self.dht.put(record)

        def stored(count):
            self.counters["published"] += 1
            return count

        def failed(f):
            self.counters["publish_failed"] += 1
            return f

        return d.addCallbacks(stored, failed)

    def _republish(self):
        self._put().addErrback(lambda f: self.log.info("rendezvous republish failed: {e}", e=f.getErrorMessage()))

    def stop(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    # -- other nodes' records
    def lookup(self, nodeId):
        """@return: a Deferred firing with C{(relayId, [address])} for C{nodeId}, or None."""
        now = self.reactor.seconds()
        hit = self._cache.get(nodeId)
        if hit is not None and hit[0] > now:
            return defer.succeed(hit[1])
        key = self.records.ownedKey(nodeId, SALT)
        d = self.dht.get(key)
        d.addCallback(self._check, nodeId, key)
        d.addCallback(self._remember, nodeId)
        return d

    def _check(self, record, nodeId, key):
        if record is None:
            self.counters["missing"] += 1
            return None
        try:
            # The DHT verified it already; a reader checks again: the answer came from strangers.
            self.records.verifyRecord(record, self.reactor.seconds(), key)
            if record.publisherId != nodeId:
                raise RendezvousError("record published by another node")
            result = parseRendezvous(record.value)
        except (self.records.RecordError, RendezvousError) as e:
            self.counters["rejected"] += 1
            self.log.info("rendezvous of {node} rejected: {why}", node=nodeId.hex()[:12], why=e)
            return None
        self.counters["found"] += 1
        return result

    def _remember(self, result, nodeId):
        self._cache[nodeId] = (self.reactor.seconds() + self._cacheFor, result)
        self._cache.move_to_end(nodeId)
        while len(self._cache) > self._cacheSize:
            self._cache.popitem(last=False)
        return result


@implementer(ISignallingChannel)
class RendezvousSignalling:
    """
    Signalling through our own relay and through the relays other peers
    publish: a signal to a peer goes through the relay its rendezvous
    record names (found in the DHT on first use), else through ours; a
    signal from a peer is answered through the relay it came by.

    @param home: our started L{meshvpn.nat.signal.RelaySignalling}.
    @param directory: a L{RendezvousDirectory}.
    @param openRelay: C{callable(relayId, address) -> Deferred} firing with
        a started signalling channel to that relay.
    @param maxRelays: relays we register with besides our own, at most.
    """

    log = Logger()

    def __init__(self, home, directory, openRelay, maxRelays=4, maxRoutes=256):
        self.home, self.directory, self.openRelay = home, directory, openRelay
        self.maxRelays, self.maxRoutes = maxRelays, maxRoutes
        self._relays = {home.relayNodeId: defer.succeed(home)}  # relay id -> Deferred(channel)
        self._routes = collections.OrderedDict()  # peer id -> channel
        self._resolving = {}  # peer id -> the latest payload waiting for its route
        self._receiver = None
        self.counters = {"via_home": 0, "via_other": 0, "resolving": 0, "relay_failed": 0, "too_many_relays": 0}
        home.setSignalReceiver(lambda peer, payload, observed: self._received(home, peer, payload, observed))

    @property
    def observedAddress(self):
        return self.home.observedAddress

    def setSignalReceiver(self, receiver):
        self._receiver = receiver

    def _route(self, peerId, channel):
        self._routes[peerId] = channel
        self._routes.move_to_end(peerId)
        while len(self._routes) > self.maxRoutes:
            self._routes.popitem(last=False)

    def _received(self, channel, peerId, payload, observed):
        if peerId not in self._routes:
            self._route(peerId, channel)
        if self._receiver is not None:
            self._receiver(peerId, payload, observed)

    def sendSignal(self, peerId, payload):
        channel = self._routes.get(peerId)
        if channel is not None:
            self.counters["via_home" if channel is self.home else "via_other"] += 1
            channel.sendSignal(peerId, payload)
            return
        waiting = peerId in self._resolving
        self._resolving[peerId] = payload
        if waiting:
            return
        if len(self._resolving) > self.maxRoutes:
            self._resolving.pop(peerId)
            return
        self.counters["resolving"] += 1
        d = self.directory.lookup(peerId)
        d.addCallback(self._channelFor)
        d.addErrback(lambda f: self.home)
        d.addCallback(self._resolved, peerId)

    def _channelFor(self, found):
        if found is None:
            return self.home
        relayId, addresses = found
        pending = self._relays.get(relayId)
        if pending is None:
            if len(self._relays) > self.maxRelays:
                self.counters["too_many_relays"] += 1
                return self.home
            pending = self._relays[relayId] = self._open(relayId, addresses[0])
        out = defer.Deferred()
        pending.addBoth(lambda r: (out.callback(r), r)[1])
        return out

    def _open(self, relayId, address):
        d = self.openRelay(relayId, address)

        def opened(channel):
            channel.setSignalReceiver(lambda peer, payload, observed: self._received(channel, peer, payload, observed))
            return channel

        def failed(f):
            self.counters["relay_failed"] += 1
            self.log.info("signalling relay {relay} unreachable: {e}", relay=relayId.hex()[:12], e=f.getErrorMessage())
            self._relays.pop(relayId, None)
            return self.home

        return d.addCallbacks(opened, failed)

    def _resolved(self, channel, peerId):
        self._route(peerId, channel)
        payload = self._resolving.pop(peerId, None)
        if payload is not None:
            self.sendSignal(peerId, payload)
