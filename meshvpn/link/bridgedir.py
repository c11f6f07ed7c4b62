"""The directory over links: a bridge answers, a bridged client asks (no UDP, no DHT of its own).

L{DirectoryChannel} is the link manager's DIRECTORY handler on both sides:
it hands requests to a responder (a bridge: its own descriptor and the
relays its finder sampled) and matches answers to the client's pending
requests.  Requests are rate-limited per link and answers bounded, so a
client cannot make a bridge do unbounded work nor a bridge make a client
hold unbounded bytes.

L{BridgeDirectory} is a bridged client's relay finder: the same surface
the circuit manager's relay source reads (C{relays}, C{refreshSoon},
C{usable}) as the DHT's finder, filled only through its bridges.  What it
lists is shaped so circuits enter only through bridges: a bridge's entry
is flagged C{guard} only and is dialled at its bridge line's address (with
the transport's arguments); every other relay loses its C{guard} flag.
"""

import random

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from meshvpn.dht.descriptor import DescriptorError, encodeDescriptor, parseDescriptor
from meshvpn.errors import LinkError
from meshvpn.interfaces import IStatusSource
from meshvpn.link import dirwire, wire
from meshvpn.link.manager import LinkTarget
from meshvpn.ratelimit import BucketTable

REQUEST_TIMEOUT = 30.0


class DirectoryChannel:
    """
    @param responder: C{None} (a client: requests are refused), or an object with
        C{ownDescriptor()} and C{relays(count)} returning descriptors.
    """

    log = Logger()

    def __init__(self, reactor, responder=None, rate=0.5, burst=20, maxLinks=4096):
        self.reactor = reactor
        self.responder = responder
        self._buckets = BucketTable(reactor, rate, burst, maxLinks)
        self._pending = {}  # (link, requestId) -> [Deferred, chunks, size]
        self._nextId = random.getrandbits(31)
        self.counters = {"requests": 0, "refused": 0, "bad_records": 0}

    # ---- both sides

    def directoryReceived(self, link, payload):
        try:
            record = dirwire.decodeRecord(payload)
            if isinstance(record, dirwire.Request):
                self._request(link, record)
            else:
                self._chunk(link, record)
        except dirwire.DirectoryWireError as e:
            self.counters["bad_records"] += 1
            self.log.info("closing a link that sent a bad DIRECTORY record: {e}", e=e)
            link.close(e)

    # ---- answering (a bridge)

    def _request(self, link, request):
        self.counters["requests"] += 1
        status, entries = dirwire.OK, []
        if self.responder is None:
            status = dirwire.REFUSED
        elif not self._buckets.tryConsume(id(link)):
            self.counters["refused"] += 1
            status = dirwire.REFUSED
        elif request.what == dirwire.WHAT_SELF:
            own = self.responder.ownDescriptor()
            entries = [encodeDescriptor(own)] if own is not None else []
            status = dirwire.OK if own is not None else dirwire.UNAVAILABLE
        else:
            relays = self.responder.relays(min(request.count or 64, dirwire.MAX_COUNT))
            entries = [encodeDescriptor(d) for d in relays]
            size = 0
            for i, e in enumerate(entries):
                size += 2 + len(e)
                if size > dirwire.MAX_RESPONSE:
                    entries = entries[:i]
                    break
        for record in dirwire.encodeResponse(request.requestId, status, entries):
            link.sendDirectory(record)

    # ---- asking (a bridged client)

    def ask(self, link, what, count=0, timeout=REQUEST_TIMEOUT):
        """@return: a Deferred list of entry bytes; fails with L{LinkError} naming what went wrong."""
        self._nextId = (self._nextId + 1) & 0xFFFFFFFF
        key = (link, self._nextId)
        d = defer.Deferred(lambda _: self._pending.pop(key, None))
        self._pending[key] = [d, [], 0]
        d.addTimeout(timeout, self.reactor)
        version = getattr(link, "version", None)
        if version is not None and version < wire.DIRECTORY_LINK_VERSION:
            self._pending.pop(key, None)
            d.errback(LinkError(f"the bridge speaks link version {version}, which has no directory requests "
                                f"(version {wire.DIRECTORY_LINK_VERSION} and later): upgrade the bridge"))
            return d
        link.whenClosed().addBoth(lambda r: self._linkGone(key))
        if not link.sendDirectory(dirwire.encodeRequest(self._nextId, what, count)):
            self._pending.pop(key, None)
            d.errback(LinkError("the link closed before the directory request went out"))
        return d

    def _linkGone(self, key):
        entry = self._pending.pop(key, None)
        if entry is not None and not entry[0].called:
            entry[0].errback(LinkError("the link closed before the directory answered"))

    def _chunk(self, link, chunk):
        key = (link, chunk.requestId)
        entry = self._pending.get(key)
        if entry is None:
            return  # late (timed out) or never asked: dropped, bounded
        d, chunks, size = entry
        size += len(chunk.chunk)
        if size > dirwire.MAX_RESPONSE:
            del self._pending[key]
            e = dirwire.DirectoryWireError(f"DIRECTORY answer over {dirwire.MAX_RESPONSE} bytes")
            d.errback(e)
            raise e
        chunks.append(chunk.chunk)
        entry[2] = size
        if not chunk.last:
            return
        del self._pending[key]
        if chunk.status != dirwire.OK:
            why = {dirwire.REFUSED: "refused (rate limit, or not a bridge)", dirwire.UNAVAILABLE: "has nothing yet"}
            d.errback(LinkError(f"the directory {why[chunk.status]}"))
            return
        try:
            d.callback(dirwire.splitEntries(b"".join(chunks)))
        except dirwire.DirectoryWireError as e:
            d.errback(e)
            raise


class _BridgeEntry:
    """A bridge's own descriptor, listed as guard only and dialled at its bridge line."""

    def __init__(self, descriptor, bridge):
        self._d = descriptor
        self.linkAddresses = ((bridge.transport, str(bridge.address)),)
        self.flags = frozenset({"guard"})

    def __getattr__(self, name):
        return getattr(self._d, name)


class _NotAGuard:
    """A relay learned through a bridge: usable as middle or exit, never as first hop."""

    def __init__(self, descriptor):
        self._d = descriptor
        self.flags = frozenset(descriptor.flags) - {"guard"}

    def __getattr__(self, name):
        return getattr(self._d, name)


@implementer(IStatusSource)
class BridgeDirectory(service.Service):
    """
    A bridged client's relay finder.  Samples through one reachable bridge
    every C{interval} seconds (sooner while C{enough} says no path can be
    built); the relays of the last good sampling, and every bridge that
    answered, are L{relays}.
    """

    log = Logger()
    FAST_DELAYS = (1.0, 2.0, 4.0, 8.0)

    def __init__(self, reactor, links, channel, bridges, interval=300.0, perRequest=128, enough=None):
        self.reactor = reactor
        self.links = links
        self.channel = channel
        self.bridges = list(bridges)
        self.interval = interval
        self.perRequest = perRequest
        self.enough = enough or (lambda ds: len(ds) >= 3)
        self.relays = {}
        self.bridgeDescriptors = {}
        self.errors = {}
        self._call = None
        self._fast = 0

    @property
    def bridgeIds(self):
        return frozenset(b.nodeId for b in self.bridges)

    def startService(self):
        super().startService()
        self._schedule(0)

    def stopService(self):
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()

    def refreshSoon(self):
        if self._call is not None and self._call.active():
            self._call.reset(0)

    def usable(self):
        now = self.reactor.seconds()
        return [d for d in self.relays.values() if d.expires > now]

    def status(self):
        return {"bridges": len(self.bridges), "bridges_up": len(self.bridgeDescriptors), "relays": len(self.relays),
                "errors": dict(self.errors)}

    def _schedule(self, delay):
        if self.running:
            self._call = self.reactor.callLater(delay, lambda: defer.ensureDeferred(self.refresh()))

    async def refresh(self):
        order = list(self.bridges)
        random.shuffle(order)
        sampled = None
        for bridge in order:
            try:
                sampled = await self._through(bridge)
                self.errors.pop(bridge.nodeId.hex(), None)
                break
            except Exception as e:
                why = str(e) or type(e).__name__
                self.errors[bridge.nodeId.hex()] = why
                self.log.error("bridge {addr} ({id}) unusable: {why}", addr=f"{bridge.address.host}:{bridge.address.port}",
                               id=bridge.nodeId.hex()[:16], why=why)
        if sampled is not None:
            now = self.reactor.seconds()
            relays = {d.nodeId: _NotAGuard(d) for d in sampled if d.expires > now and d.nodeId not in self.bridgeIds}
            for nodeId, entry in self.bridgeDescriptors.items():
                relays[nodeId] = entry
            self.relays = relays
        elif self.bridges:
            self.log.error("no bridge answered ({n} tried): this client cannot reach the network", n=len(order))
        if self.enough(self.usable()):
            self._fast = 0
            self._schedule(self.interval)
        else:
            self._schedule(self.FAST_DELAYS[min(self._fast, len(self.FAST_DELAYS) - 1)])
            self._fast += 1

    async def _through(self, bridge):
        target = LinkTarget(bridge.nodeId, ((bridge.transport, str(bridge.address)),))
        link = await self.links.getLink(target)
        now = self.reactor.seconds()
        [own] = await self._ask(link, dirwire.WHAT_SELF, 0, expect=1)
        descriptor = self._verify(own, now)
        if descriptor.nodeId != bridge.nodeId:
            raise LinkError("answered with another relay's descriptor")
        self.bridgeDescriptors[bridge.nodeId] = _BridgeEntry(descriptor, bridge)
        entries = await self._ask(link, dirwire.WHAT_RELAYS, self.perRequest)
        good = []
        for raw in entries:
            try:
                good.append(self._verify(raw, now))
            except DescriptorError as e:
                self.log.warn("bridge {id} sent a bad descriptor: {e}", id=bridge.nodeId.hex()[:16], e=e)
        self.log.info("bridge {id}: {n} relays", id=bridge.nodeId.hex()[:16], n=len(good))
        return good

    async def _ask(self, link, what, count, expect=None):
        entries = await self.channel.ask(link, what, count)
        if expect is not None and len(entries) != expect:
            raise LinkError(f"answered {len(entries)} descriptors where {expect} was asked for")
        return entries

    @staticmethod
    def _verify(raw, now):
        return parseDescriptor(raw, now=now)
