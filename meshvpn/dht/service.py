"""The DHT attached to a node: its lifetime, its bootstrap, its saved routing table.

L{DHTService} is a child service of a L{meshvpn.roles.node.Node}.  It registers the
DHT on the node's one UDP socket (first bytes 0x80-0x8F), loads (or, once
per identity, solves and caches) the node's proof of work, reloads the
contacts saved in the data dir (pinged for a fresh proof at join, so a
restarted node does not need its bootstrap nodes), joins through the
configured bootstrap addresses (retrying with backoff), and saves the table
periodically and on stop.

IPv4 and IPv6 are separate overlays (as BitTorrent's BEP 32 keeps them): a
contact carries one address, and an IPv6-only node can use none of an IPv4
table.  A dual-stack node (C{--udp6}) runs one L{DHTNode} per family with
the same identity, each with its own table, record store, bootstrap
addresses (those of its family) and saved table (C{dht-table6.json} for the
second); C{dht} and C{directory} are the first family's (C{--udp}), the
others are in C{overlays}.  A relay publishes its descriptor in every
overlay it has joined, announced under that family's address.

L{RelayPublisher} (relays) publishes the node's signed descriptor once the
node is listening and republishes it before it expires.  L{RelayFinder}
(clients) samples relays of every role and writes what it verified to
C{relays.json} in the data dir, which is how tools and tests read the
directory a client sees (see doc/dht.md).
"""

import base64
import json
import os

import attrs
from twisted.application import service
from twisted.internet import defer, task, threads
from twisted.logger import Logger

from meshvpn.config import parseHostPort
from meshvpn.hostport import formatHostPort
from meshvpn.dht.descriptor import FLAGS, DescriptorError, OnionKey, encodeDescriptor, makeDescriptor
from meshvpn.dht.directory import DirectoryPolicy, RelayDirectory
from meshvpn.dht.pow import WORK_FILE, checkWork, loadOrSolve
from meshvpn.dht.records import RecordError, RecordStore
from meshvpn.dht.rpc import DHTConfig, DHTNode
from meshvpn.errors import DHTError
from meshvpn.secretfile import writeSecretFile
from meshvpn.udpmux import DHT_BYTES

TABLE_FILE = "dht-table.json"
SECOND_TABLE_FILE = "dht-table{family}.json"  # a dual-stack node's other overlay
RELAYS_FILE = "relays.json"


def parseBootstrapList(raw):
    """C{"H:P,H:P"} (command line) or a TOML list of C{"H:P"}; empty means none."""
    if isinstance(raw, str):
        items = [x.strip() for x in raw.split(",") if x.strip()]
    elif isinstance(raw, list):
        items = raw
    else:
        raise ValueError("a list of HOST:PORT, e.g. 127.0.0.1:9000,[::1]:9000")
    if len(items) > 64:
        raise ValueError("at most 64 bootstrap addresses")
    return [parseHostPort(x) for x in items]


def parseFlags(raw):
    """C{"guard,middle"} or a list/set of role names; idempotent, so a string default works too."""
    if isinstance(raw, (list, set, frozenset, tuple)):
        items = list(raw)
    elif isinstance(raw, str):
        items = [x.strip() for x in raw.split(",") if x.strip()]
    else:
        raise ValueError(f"flags from {', '.join(FLAGS)}")
    bad = [x for x in items if x not in FLAGS]
    if bad:
        raise ValueError(f"flags from {', '.join(FLAGS)}")
    return frozenset(items)


def parseSeconds(raw):
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = -1
    if not 1 <= value <= 86400:
        raise ValueError("seconds between 1 and 86400")
    return value


def saveTable(table, path):
    contacts = [[c.nodeId.hex(), c.address[0], c.address[1]] for c in table.contacts()]
    writeSecretFile(path, json.dumps({"version": 1, "contacts": contacts}).encode())


def loadTable(path, log=None):
    """
    The contacts saved in C{path}, as C{[(nodeId, (host, port))]}: candidates
    to ping at join (each must prove its key again before it is listed).
    A missing or damaged file just gives none.
    """
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read(1 << 20))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        contacts = data["contacts"] if data.get("version") == 1 else []
        loaded = []
        for nodeHex, host, port in contacts[:2000]:
            nodeId = bytes.fromhex(nodeHex)
            if len(nodeId) == 32 and isinstance(port, int) and 0 < port < 65536:
                parseHostPort(formatHostPort(host, port))
                loaded.append((nodeId, (host, port)))
        return loaded
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:
        if log is not None:
            log.warn("ignoring damaged DHT table file {path}: {why}", path=path, why=str(e)[:100])
        return []


MIN_DESCRIPTOR_LIFETIME = 60  # seconds

class DHTService(service.MultiService):
    """
    The DHT of one node.  C{self.dht} is the L{DHTNode} (an L{IDHT}) and
    C{self.directory} the L{RelayDirectory} (an L{IRelayDirectory}); both
    exist once the service has started.  C{self.joined} fires after the first
    successful bootstrap (or at once for a first node with nothing to join).
    """

    log = Logger()

    def __init__(self, node, bootstrap=(), clientMode=False, config=None, saveInterval=300.0, transport=None):
        """
        @param transport: where the DHT's datagrams go instead of the node's
            socket, or C{None}: an object with C{send(data, addr)},
            C{setReceiver(handler)} (answers go to C{handler.datagramReceived}),
            C{reachable(addr)} (may a request go there now) and
            C{whenReady()}, a Deferred firing with extra bootstrap
            addresses once it can carry datagrams (the join waits for it);
            a client's circuits (doc/dht.md, "The directory through circuits").
        """
        super().__init__()
        self.transport = transport
        self.taps = []  # callables(data, addr) -> bool seeing socket datagrams first; True: consumed
        self.node = node
        self.bootstrapAddresses = list(bootstrap)
        self.clientMode = clientMode
        self.config = config or DHTConfig()
        self.saveInterval = saveInterval
        self.tablePath = os.path.join(node.dataDir, TABLE_FILE)
        self.dht = None
        self.directory = None
        self.joined = defer.Deferred()
        self.overlays = []  # _Overlay per address family, the primary first
        self._saveLoop = None

    def startService(self):
        reactor = self.node.reactor
        c = self.config
        identity = self.node.identity
        families = nodeFamilies(self.node)
        transport = self.transport
        for i, family in enumerate(families):
            dht = DHTNode(
                reactor,
                identity,
                self.node.udp.sendDatagram if transport is None else transport.send,
                RecordStore(c.maxRecords, c.maxPerKey, c.maxPerPublisher,
                            admit=DirectoryPolicy(c.exemptLoopback, family)),
                c,
                clientMode=self.clientMode,
                family=family if len(families) > 1 else None,
            )
            if transport is not None:
                dht.reachable = transport.reachable
            overlay = _Overlay(
                family, dht, RelayDirectory(dht, identity, family=family),
                self.joined if i == 0 else defer.Deferred(),
                os.path.join(self.node.dataDir, TABLE_FILE if i == 0 else SECOND_TABLE_FILE.format(family=family)),
                [a for a in self.bootstrapAddresses if len(families) == 1 or _familyOf(a[0]) == family],
            )
            self.overlays.append(overlay)
        primary = self.overlays[0]
        self.dht, self.directory = primary.dht, primary.directory
        self.workReady = self._loadWork()
        self.node.udp.register("dht", DHT_BYTES, _ByFamily(self.overlays, self.taps))
        if transport is not None:
            transport.setReceiver(_ByFamily(self.overlays, ()))
        for overlay in self.overlays:
            overlay.dht.savedContacts = loadTable(overlay.tablePath, self.log)
            self.log.info("DHT: {n} saved contacts to ask over IPv{family}; bootstrap {boot}", family=overlay.family,
                          n=len(overlay.dht.savedContacts),
                          boot=",".join(formatHostPort(*a) for a in overlay.bootstrap) or "-")
            overlay.dht.start()
        self._saveLoop = task.LoopingCall(self.save)
        self._saveLoop.clock = reactor
        self._saveLoop.start(self.saveInterval, now=False)
        super().startService()
        reactor.callWhenRunning(self._whenNodeStarted)

    def everyFamily(self):
        """
        One L{IDHT} over every family's DHT this node runs (its puts go to
        all, its gets ask all): for records every client must find, whatever
        its family (L{meshvpn.dht.everyfamily}).
        """
        from meshvpn.dht.everyfamily import EveryFamilyDHT

        return EveryFamilyDHT(lambda: [o.dht for o in self.overlays])

    def _loadWork(self):
        """
        Our proof of work: from the cache in the data dir, or solved once (about
        half a second of one core) in a thread, so the node starts listening
        at once; the DHT joins when it is done.  Clients need none.
        """
        if self.clientMode:
            return defer.succeed(None)
        key = self.node.identity.identityPublicKey
        try:
            with open(os.path.join(self.node.dataDir, WORK_FILE), "rb") as f:
                cached = json.loads(f.read(4096))
            nonce = bytes.fromhex(cached["nonce"])
            if bytes.fromhex(cached["key"]) == key and checkWork(key, nonce, self.config.powBits):
                self._setWork(nonce)
                return defer.succeed(None)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
        self.log.info("DHT: solving the proof of work for this identity ({bits} bits, once)", bits=self.config.powBits)
        d = threads.deferToThreadPool(
            self.node.reactor, self.node.reactor.getThreadPool(),
            loadOrSolve, self.node.dataDir, key, self.config.powBits,
        )

        return d.addCallback(self._setWork)

    def _setWork(self, nonce):
        for overlay in self.overlays:  # one identity, one proof, every overlay
            overlay.dht.work = nonce

    def _whenNodeStarted(self):
        def go(result):
            ready = self.workReady
            if self.transport is not None:
                ready.addCallback(lambda _: self.transport.whenReady()).addCallback(self._extraBootstrap)
            for overlay in self.overlays:
                joining = ready.addCallback(lambda _, o=overlay: self._join(o, 5.0))
                joining.addErrback(lambda f: self.log.failure("DHT could not start", f))
            return result

        self.node.whenStarted.addCallback(go)

    def _extraBootstrap(self, addresses):
        for overlay in self.overlays:
            for addr in addresses or ():
                if (len(self.overlays) == 1 or _familyOf(addr[0]) == overlay.family) and addr not in overlay.bootstrap:
                    overlay.bootstrap.append(addr)

    def _join(self, overlay, backoff):
        overlay.retry = None
        if not self.running:
            return
        dht = overlay.dht
        if not overlay.bootstrap and not len(dht.table) and not dht.savedContacts:
            self.log.info("DHT: no bootstrap addresses and no saved contacts over IPv{family}: first node, waiting to "
                          "be found", family=overlay.family)
            self._joined(0, overlay)
            return
        d = dht.bootstrap(overlay.bootstrap)

        def failed(f):
            f.trap(DHTError)
            self.log.warn("DHT bootstrap failed over IPv{family} ({why}); retrying in {s:.0f}s", family=overlay.family,
                          why=f.getErrorMessage(), s=backoff)
            if self.running:
                overlay.retry = self.node.reactor.callLater(backoff, self._join, overlay, min(backoff * 2, 300.0))

        d.addCallbacks(self._joined, failed, (overlay,))
        d.addErrback(lambda f: self.log.failure("DHT bootstrap crashed", f))

    def _joined(self, size, overlay):
        self.log.info("DHT joined: {n} contacts over IPv{family}", n=size, family=overlay.family)
        self.save()
        if not overlay.joined.called:
            overlay.joined.callback(size)

    def save(self):
        for overlay in self.overlays:
            try:
                saveTable(overlay.dht.table, overlay.tablePath)
            except OSError as e:
                self.log.warn("could not save the DHT table: {why}", why=e.strerror)

    def stopService(self):
        d = super().stopService()
        for overlay in self.overlays:
            if overlay.retry is not None and overlay.retry.active():
                overlay.retry.cancel()
        if self._saveLoop.running:
            self._saveLoop.stop()
        self.save()
        for overlay in self.overlays:
            overlay.dht.stop()
        self.node.udp.unregister("dht")
        self.overlays = []
        return d

    def status(self):
        status = {
            "contacts": len(self.dht.table),
            "buckets": len(self.dht.table.buckets),
            "records": self.dht.store.count,
            "counters": dict(self.dht.counters),
        }
        if len(self.overlays) > 1:
            status["overlays"] = {
                f"ipv{o.family}": {"contacts": len(o.dht.table), "records": o.dht.store.count} for o in self.overlays
            }
        return status


@attrs.define
class _Overlay:
    """One address family's DHT on a node: its node, directory, join and saved table."""

    family: int
    dht: DHTNode
    directory: RelayDirectory
    joined: defer.Deferred
    tablePath: str
    bootstrap: list
    retry: object = None


def _familyOf(host):
    return 6 if ":" in host else 4


def nodeFamilies(node):
    """The address families of the node's UDP sockets, its first (C{--udp}) first."""
    addrs = node.addresses()
    families = [_familyOf(parseHostPort(addrs["udp"])[0])]
    if "udp6" in addrs:
        other = _familyOf(parseHostPort(addrs["udp6"])[0])
        if other not in families:
            families.append(other)
    return families


class _ByFamily:
    """The node socket's DHT handler: each datagram to the overlay of its source's family."""

    def __init__(self, overlays, taps):
        self._byFamily = {o.family: o.dht for o in overlays}
        self._only = overlays[0].dht if len(overlays) == 1 else None
        self._taps = taps  # a relay's DHT datagrams for circuits (meshvpn.onion.dhtrelay) answered first

    def datagramReceived(self, data, addr):
        for tap in self._taps:
            if tap(data, addr):
                return
        if self._only is not None:
            return self._only.datagramReceived(data, addr)
        dht = self._byFamily.get(_familyOf(addr[0]))
        if dht is not None:
            dht.datagramReceived(data, addr)


class RelayPublisher(service.Service):
    """
    Publishes this relay's descriptor after joining, and every C{interval}
    seconds.  A descriptor that cannot be built or stored is logged as an
    error (the relay is invisible to clients until it is published) and
    tried again after C{retryDelays} (growing, then the last one for ever),
    never given up.

    A node that has just joined knows few others, so its first stores may
    land on nodes that are not the closest to the keys once the rest of the
    network is known, and region samples asking the closest ones then miss
    the relay until the next interval (replication runs hourly).  So the
    descriptor is published again C{settleDelays} seconds after the first
    success, when the routing table has filled.
    """

    log = Logger()
    retryDelays = (5.0, 10.0, 20.0, 40.0, 60.0)
    settleDelays = (10.0, 30.0, 90.0)

    def __init__(self, dhtService, flags, interval=3600.0, exitPolicy="reject 1-65535", bandwidth=0, family=(),
                 streamTransport="tls", onionKeys=None, handshakes=()):
        """
        @param exitPolicy: the exit policy summary (C{policy.summary()}).
        @param onionKeys: optional C{callable(now) -> [OnionKey]}, e.g.
            L{onionKeysFromRing}; default: the identity's onion key.
        @param handshakes: what the relay speaks beyond the classic circuit
            handshake (the descriptor's C{handshakes}); empty: classic only.
        """
        self.dhtService = dhtService
        self.handshakes = tuple(handshakes)
        self.streamTransport = streamTransport
        self.onionKeys = onionKeys
        self.flags = flags
        self.interval = interval
        self.exitPolicy = exitPolicy
        self.bandwidth = bandwidth
        self.family = family
        self.published = None
        self._loop = None
        self._retry = None
        self._failures = 0
        self._settle = []

    def startService(self):
        super().startService()
        self.dhtService.joined.addCallback(self._start)
        for overlay in self.dhtService.overlays[1:]:
            overlay.joined.addCallback(self._otherJoined, overlay)

    def _otherJoined(self, size, overlay):
        # The second family joined after the first began publishing: file
        # the descriptor there now instead of an interval later.
        if self.running and self._loop is not None:
            try:
                self._publishIn(overlay, self.makeDescriptor())
            except DescriptorError:
                pass  # the first family's round says so, loudly, and retries
        return size

    def _publishIn(self, overlay, descriptor):
        def failed(f):
            self.log.warn("relay descriptor not published in the IPv{family} DHT: {why}", family=overlay.family,
                          why=f.getErrorMessage() if f.check(DHTError, RecordError) else repr(f.value))

        return overlay.directory.publish(descriptor).addErrback(failed)

    def _start(self, size):
        if self.running:
            self._loop = task.LoopingCall(self.publishNow)
            self._loop.clock = self.dhtService.node.reactor
            self._loop.start(self.interval, now=True).addErrback(lambda f: self.log.failure("publishing failed", f))
        return size  # others wait on the same Deferred

    def makeDescriptor(self):
        node = self.dhtService.node
        addrs = node.addresses()
        addresses = [("udp", addrs["udp"])]
        if "udp6" in addrs:  # dual-stack: both, so each overlay finds its family's
            addresses.append(("udp", addrs["udp6"]))
        for listener in ("stream", "stream6"):
            if listener in addrs:
                # named by the link transport listening there, as clients pick transports by name
                addresses.append((self.streamTransport, addrs[listener]))
        # Lives three republish intervals, so one lost round leaves it listed,
        # and at least a minute, so a slow client's sampling never finds it gone.
        now = node.reactor.seconds()
        return makeDescriptor(
            node.identity,
            addresses,
            self.flags,
            published=now,
            onionKeys=self.onionKeys(now) if self.onionKeys else None,
            lifetime=min(max(3 * self.interval, MIN_DESCRIPTOR_LIFETIME), 86400),
            exitPolicy=self.exitPolicy,
            bandwidth=self.bandwidth,
            family=self.family,
            handshakes=self.handshakes,
        )

    def _publish(self):
        descriptor = self.makeDescriptor()
        # The first family's DHT decides success; the others are tried beside it.
        for overlay in self.dhtService.overlays[1:]:
            if overlay.joined.called:
                self._publishIn(overlay, descriptor)
        return self.dhtService.directory.publish(descriptor).addCallback(lambda _: descriptor)

    def publishNow(self):
        """@return: a Deferred that fires (never fails) once this attempt is over."""
        if self._retry is not None and self._retry.active():
            self._retry.cancel()

        def done(descriptor):
            first = self.published is None
            self.published = descriptor
            self._failures = 0
            self.log.info("published relay descriptor ({flags})", flags=",".join(sorted(descriptor.flags)))
            if first and self.running:
                reactor = self.dhtService.node.reactor
                self._settle = [reactor.callLater(d, self._settleAgain) for d in self.settleDelays if d < self.interval]

        def failed(f):
            why = f.getErrorMessage() if f.check(DHTError, DescriptorError, RecordError) else repr(f.value)
            delay = self.retryDelays[min(self._failures, len(self.retryDelays) - 1)]
            self._failures += 1
            self.log.error(
                "relay descriptor NOT published, clients cannot find this relay: {why}; retrying in {delay:.0f} s",
                why=why, delay=delay,
            )
            if self.running:
                self._retry = self.dhtService.node.reactor.callLater(delay, self.publishNow)

        return defer.maybeDeferred(self._publish).addCallbacks(done, failed)

    def _settleAgain(self):
        # a retry already pending publishes soon anyway
        if self.running and not (self._retry is not None and self._retry.active()):
            self.publishNow()

    def stopService(self):
        super().stopService()
        for call in self._settle:
            if call.active():
                call.cancel()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self._loop is not None and self._loop.running:
            self._loop.stop()


def onionKeysFromRing(ring, lifetime):
    """
    A L{RelayPublisher} C{onionKeys} source for an L{meshvpn.onion.keyring.OnionKeyRing}
    rotated every C{lifetime} seconds: the relay accepts both its current and
    its next key now; the descriptor lists the current one as valid until the
    rotation plus the overlap and the next one from the rotation on, so
    clients switch keys when the relay does.  (Call C{publishNow} from the onion
    service's C{onRotate} so the descriptor follows each rotation.)
    """

    def keys(now):
        keys = ring.publicKeys()
        start = int(ring.rotatedAt or now)
        return [
            OnionKey(keys["current"], start, start + int(lifetime + ring.overlap)),
            # listed from the rotation on, so clients use the current key until then
            OnionKey(keys["next"], start + int(lifetime), start + int(2 * lifetime + ring.overlap)),
        ]

    return keys


def enoughForAPath(relays):
    """The default for L{RelayFinder}'s C{enough}: three relays, one an exit."""
    return len(relays) >= 3 and any("exit" in d.flags for d in relays)


class RelayFinder(service.Service):
    """
    A client's view of the directory: samples relays of every role and
    writes the verified descriptors to C{relays.json} (raw bytes included,
    base64, so anyone can re-verify them).

    Schedule: the first sampling as soon as the DHT is joined; while
    C{enough(descriptors)} says a path cannot be built from what it knows,
    again after L{FAST_DELAYS} (0.5, 1, 2, 4, 4, ... s); once it can, the
    delay doubles from 4 s up to C{interval}.  L{refreshSoon} moves the next
    sampling to now.
    """

    log = Logger()
    FAST_DELAYS = (0.5, 1.0, 2.0, 4.0)

    def __init__(self, dhtService, interval=300.0, perRole=64, enough=enoughForAPath):
        self.dhtService = dhtService
        self.interval = interval
        self.perRole = perRole
        self.enough = enough
        self.relays = {}
        self._call = None
        self._delay = 2.0
        self._fast = 0

    def startService(self):
        super().startService()
        self.dhtService.joined.addCallback(self._schedule, 0)

    def _schedule(self, passThrough, delay):
        if self.running:
            self._call = self.dhtService.node.reactor.callLater(delay, self.refresh)
        return passThrough

    def refreshSoon(self):
        """
        Sample now instead of at the next scheduled time (one sampling loop
        only: calling L{refresh} directly would start a second one).
        """
        if self._call is not None and self._call.active():
            self._call.reset(0)

    def usable(self):
        """The descriptors known and not expired."""
        now = self.dhtService.node.reactor.seconds()
        return [d for d in self.relays.values() if d.expires > now]

    def _nextDelay(self):
        try:
            enough = self.enough(self.usable())
        except Exception:
            self.log.failure("relay census failed")
            enough = True
        if not enough:
            delay = self.FAST_DELAYS[min(self._fast, len(self.FAST_DELAYS) - 1)]
            self._fast += 1
            return min(delay, self.interval)
        self._delay = min(self._delay * 2, self.interval)
        return self._delay

    @defer.inlineCallbacks
    def refresh(self):
        directory = self.dhtService.directory
        try:
            results = yield defer.gatherResults([directory.sample(r, self.perRole) for r in FLAGS], consumeErrors=True)
            now = self.dhtService.node.reactor.seconds()
            self.relays = {k: v for k, v in self.relays.items() if v.expires > now}
            for found in results:
                for d in found:
                    if d.expires <= now:
                        continue  # verified when it arrived, but the sampling took longer than it had left
                    old = self.relays.get(d.nodeId)
                    if old is None or old.published <= d.published:
                        self.relays[d.nodeId] = d
            self.write()
        except Exception:
            self.log.failure("sampling relays failed")
        self._schedule(None, self._nextDelay())

    def write(self):
        entries = []
        for d in sorted(self.relays.values(), key=lambda d: d.nodeId):
            entry = d.toJSON()
            entry["descriptor"] = base64.b64encode(encodeDescriptor(d)).decode()
            entries.append(entry)
        body = {"updated": self.dhtService.node.reactor.seconds(), "rejected": self.dhtService.directory.rejected,
                "relays": entries}
        writeSecretFile(os.path.join(self.dhtService.node.dataDir, RELAYS_FILE), json.dumps(body, indent=1).encode())

    def stopService(self):
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
