"""The client's DHT datagrams over short circuits: the directory read without talking to DHT nodes.

A client that reads the DHT itself over UDP tells every node it asks its
address and what it looks up, and shows a censor a MeshVPN DHT client.
L{CircuitDatagramTransport} is the client DHT node's datagram transport
instead of the node's socket (L{meshvpn.dht.service.DHTService}'s
C{transport}): each datagram goes in DHT_SEND messages to the last hop of
one of a few internal circuits (guard + middle), which sends it from its
own DHT socket and returns the answer (L{meshvpn.onion.dhtrelay}).  The
client's DHT node still runs its own iterative lookups and checks every
answer's signature, node id and record itself: the middle is trusted only
to carry bytes.  Its guard sees that it talks to the network, not what it
asks; each middle sees a share of the questions, not who asks.

Spread: C{legs} circuits (2), through different middles; each destination
address goes through one of them, chosen by a keyed hash (stable, so the
answer tokens a node gives per source address stay valid), so one middle
that drops answers or lies about who is there sees, and can spoil, only
its share of a lookup's queries, and the lookup's other paths go on.

Start-up:
  - with saved state (relays from the last run in C{relays.json}, the
    guards in C{guards.json}) nothing is sent until the first circuit is
    built: the only packets are the link to the guard.  The DHT joins
    through the middles it built to (and its saved contacts, through
    them).  If no circuit is built within C{fallbackAfter} seconds (the
    saved relays are gone), or as soon as none of the saved guards is
    usable, it falls back to a first start;
  - a first start has no guard: the DHT sends straight from the node's
    socket, to the bootstrap addresses only (a request to anyone else fails
    at once, L{reachable}, so a lookup asks only them), until the first
    circuit is built from what they told it; from then on everything goes
    through circuits (and while none is up, requests fail at once).

What comes back is bounded: an answer is taken only from an address a
datagram went to on that circuit in the last C{answerTimeout} seconds, one
per datagram sent, each at most 1400 bytes, reassembled one at a time; a
malformed one destroys that circuit.
"""

import base64
import collections
import hashlib
import json
import os
import random

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger
from zope.interface import implementer

from meshvpn.config import parseHostPort
from meshvpn.dht.descriptor import DescriptorError, parseDescriptor
from meshvpn.dht.service import RELAYS_FILE
from meshvpn.errors import MeshVPNError
from meshvpn.interfaces import IStatusSource
from meshvpn.onion.cells import CellError, RelayCommand
from meshvpn.onion.dhtmsgs import DatagramMessageError, Reassembler, decodeRefusal, encodePieces
from meshvpn.onion.dhtrelay import normalise

MAX_SAVED_RELAYS = 2000


def loadSavedRelays(dataDir, now, log=None):
    """
    The descriptors a client wrote to C{relays.json} on its last run that
    still verify and have not expired, by node id.  A missing or damaged
    file gives none (the DHT finds relays again).
    """
    path = os.path.join(dataDir, RELAYS_FILE)
    try:
        with open(path, "rb") as f:
            body = json.loads(f.read(16 << 20))
        entries = body["relays"] if isinstance(body, dict) else []
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:
        if log is not None:
            log.warn("ignoring damaged {path}: {why}", path=path, why=str(e)[:100])
        return {}
    relays = {}
    for entry in entries[:MAX_SAVED_RELAYS] if isinstance(entries, list) else ():
        try:
            d = parseDescriptor(base64.b64decode(entry["descriptor"], validate=True), now=now)
        except (DescriptorError, ValueError, KeyError, TypeError):
            continue
        relays[d.nodeId] = d
    return relays


def dhtAddresses(relay):
    """The DHT (node socket) addresses a relay's descriptor lists."""
    out = []
    for kind, address in relay.descriptor.addresses:
        if kind == "udp":
            try:
                out.append(parseHostPort(address))
            except ValueError:
                continue
    return out


class _Leg:
    """One circuit carrying DHT datagrams, and what it may still bring back."""

    def __init__(self, transport, circuit, path):
        self.transport = transport
        self.circuit = circuit
        self.path = path
        self.reassembler = Reassembler()
        self.expected = {}  # normalised address -> deque of deadlines, one per answer still allowed
        self.deadlines = collections.deque()  # (when, normalised address), in the order sent
        self.given = {}  # normalised address -> the address as the DHT wrote it
        self.waiting = 0

    def receive(self, command, body):
        t = self.transport
        if command == RelayCommand.DHT_REFUSED:
            try:
                reason = decodeRefusal(body)
            except DatagramMessageError as e:
                raise CellError(str(e)) from None
            t.counters[f"refused_{reason}"] += 1
            return
        whole = self.reassembler.feedCell(body, t.counters, "answers_malformed", "DHT_RECEIVED")
        if whole is None:
            return
        data, addr = whole
        key = normalise(addr)
        allowed = self.expected.get(key)
        if not allowed:
            t.counters["answers_unasked"] += 1
            return
        allowed.popleft()  # the oldest request to that address is answered
        self.waiting -= 1
        t.counters["answers"] += 1
        t.deliver(data, self.given.get(key, key))

    def expect(self, addr, deadline):
        key = normalise(addr)
        self.expected.setdefault(key, collections.deque()).append(deadline)
        self.given[key] = addr
        self.deadlines.append((deadline, key))
        self.waiting += 1

    def outstanding(self):
        return self.waiting

    def expire(self, now):
        while self.deadlines and self.deadlines[0][0] <= now:
            deadline, key = self.deadlines.popleft()
            allowed = self.expected.get(key)
            if allowed and allowed[0] <= deadline:
                allowed.popleft()  # still unanswered: no answer is taken for it any more
                self.waiting -= 1
            if not allowed:
                self.expected.pop(key, None)
                self.given.pop(key, None)


@implementer(IStatusSource)
class CircuitDatagramTransport(service.Service):
    """
    The client DHT node's datagram transport (see the module docstring).
    Call L{attach} with the circuit parts before the service starts.

    @param udp: the node's L{meshvpn.interfaces.IDatagramMultiplexer}, used
        only for a first start's bootstrap contacts.
    @param bootstrap: the configured bootstrap addresses.
    @param startAfter: C{callable() -> Deferred}, called when the service
        starts; nothing is decided or built before it fires (the node's
        C{whenStarted}: a capturing VPN's egress gate must be in place
        before the first link is dialled, or its packets go into the
        tunnel), or C{None}.
    """

    log = Logger()

    def __init__(self, reactor, udp, bootstrap, legs=2, fallbackAfter=120.0, answerTimeout=10.0,
                 maxOutstanding=400, maintainEvery=1.0, buildTimeout=45.0, rng=None, startAfter=None):
        self.reactor = reactor
        self.udp = udp
        self.bootstrap = {normalise(a) for a in bootstrap}
        self.wanted = legs
        self.fallbackAfter = fallbackAfter
        self.answerTimeout = answerTimeout
        self.maxOutstanding = maxOutstanding
        self.maintainEvery = maintainEvery
        self.buildTimeout = buildTimeout
        self.rng = rng or random.SystemRandom()
        self._startAfter = startAfter
        self._salt = os.urandom(16)
        self.legs = []
        self.mode = "waiting"  # "waiting" (saved state, no circuit yet), "bootstrap", "circuits"
        self.counters = collections.Counter()
        self._receiver = None
        self._ready = defer.Deferred()
        self._building = []  # middles being built through
        self._loop = None
        self._fallback = None
        self._relays = self._guards = self._build = None
        self.modeObservers = []  # callables(mode), told of every change

    def attach(self, relays, guards, build):
        """
        @param relays: C{callable() -> [RelayInfo]}, the relays known now.
        @param guards: the client's L{meshvpn.circuits.guards.GuardSet}
            (the same guard as every other circuit: one entry point).
        @param build: C{callable(path) -> Deferred} of an origin circuit.
        """
        self._relays, self._guards, self._build = relays, guards, build

    # -- the DHT's side (meshvpn.dht.service transport)

    def setReceiver(self, handler):
        self._receiver = handler

    def whenReady(self):
        """Fires with the middles' DHT addresses (extra bootstrap) once datagrams can go somewhere."""
        d = defer.Deferred()
        self._ready.addCallback(lambda addrs: (d.callback(addrs), addrs)[1])
        return d

    def reachable(self, addr):
        """Whether a request to C{addr} can go now (the DHT fails the others at once)."""
        if self.mode == "circuits":
            return bool(self.legs)
        return self.mode == "bootstrap" and normalise(addr) in self.bootstrap

    def _setMode(self, mode):
        self.mode = mode
        for observe in list(self.modeObservers):
            observe(mode)

    def send(self, data, addr):
        if self.mode == "circuits" and self.legs:
            leg = self._legFor(addr)
            if leg.outstanding() >= self.maxOutstanding:
                self.counters["sends_dropped_busy"] += 1
                return
            try:
                pieces = encodePieces(data, addr, leg.circuit.maxData)
            except (DatagramMessageError, ValueError):
                self.counters["sends_dropped_malformed"] += 1
                return
            for piece in pieces:
                if not leg.circuit.sendRelay(RelayCommand.DHT_SEND, 0, piece):
                    self.counters["sends_dropped_closed"] += 1
                    return
            leg.expect(addr, self.reactor.seconds() + self.answerTimeout)
            self.counters["sends"] += 1
        elif self.mode == "bootstrap" and normalise(addr) in self.bootstrap:
            self.counters["sends_direct"] += 1
            self.udp.sendDatagram(data, addr)
        else:
            # Waiting for the first circuit, or a first start's non-bootstrap
            # contact: never from our own address.
            self.counters["sends_held_back"] += 1

    def deliver(self, data, addr):
        if self._receiver is not None:
            self._receiver.datagramReceived(data, addr)

    def _legFor(self, addr):
        legs = sorted(self.legs, key=lambda leg: leg.path[-1].nodeId)
        h = hashlib.blake2b(repr(normalise(addr)).encode(), key=self._salt, digest_size=8).digest()
        return legs[int.from_bytes(h, "big") % len(legs)]

    # -- lifetime

    def startService(self):
        super().startService()
        # everything waits until every service has started (the links, the onion switch, a VPN's egress
        # gate) and the saved relays are loaded
        if self._startAfter is None:
            self.reactor.callLater(0, self._begin)
        else:
            self._startAfter().addCallback(lambda r: (self._begin(), r)[1])

    def _begin(self):
        if not self.running or self._loop is not None:
            return
        if self._pathPossible():
            self.log.info("DHT through circuits: saved relays known, no datagram leaves before the first circuit")
            self._fallback = self.reactor.callLater(self.fallbackAfter, self._fallBack)
        else:
            self._enterBootstrap("no saved relays: first start")
        self._loop = task.LoopingCall(self._maintain)
        self._loop.clock = self.reactor
        self._loop.start(self.maintainEvery, now=True).addErrback(
            lambda f: self.log.failure("DHT circuit maintenance failed", f))

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._fallback is not None and self._fallback.active():
            self._fallback.cancel()
        legs, self.legs = self.legs, []
        for leg in legs:
            leg.circuit.close("finished")

    def _fallBack(self):
        self._fallback = None
        if self.mode == "waiting":
            self._enterBootstrap(f"no circuit from the saved relays within {self.fallbackAfter:.0f} s")

    def _enterBootstrap(self, why):
        self._setMode("bootstrap")
        self.log.info("DHT through circuits: {why}; asking only the bootstrap nodes until a circuit is built", why=why)
        if self._fallback is not None and self._fallback.active():
            self._fallback.cancel()
        if not self._ready.called:
            self._ready.callback([])

    def _pathPossible(self):
        relays = self._relays() if self._relays else []
        return any("guard" in r.roles for r in relays) and sum(1 for r in relays if "middle" in r.roles) >= 2

    # -- circuits

    def _maintain(self):
        now = self.reactor.seconds()
        for leg in self.legs:
            leg.expire(now)
        while self._relays is not None and len(self.legs) + len(self._building) < self.wanted:
            if not self._buildOne():
                return

    def _buildOne(self):
        relays = self._relays()
        guard = self._guards.choose(relays)
        if guard is None:
            if self.mode == "waiting" and not self.legs and not self._building:
                self._enterBootstrap("no usable guard among the saved relays")
            return False
        taken = {leg.path[-1].nodeId for leg in self.legs} | set(self._building) | {guard.nodeId}
        middles = [r for r in relays if "middle" in r.roles and r.nodeId not in taken and dhtAddresses(r)]
        if not middles:
            return False
        middle = self.rng.choice(middles)
        self._building.append(middle.nodeId)
        d = self._build([guard, middle]).addTimeout(self.buildTimeout, self.reactor)
        d.addCallbacks(self._built, self._failed, callbackArgs=([guard, middle],), errbackArgs=([guard, middle],))
        d.addBoth(lambda r: self._building.remove(middle.nodeId))
        return True

    def _built(self, circuit, path):
        if not self.running:
            circuit.close("finished")
            return
        leg = _Leg(self, circuit, path)
        circuit.setDatagramReceiver(leg.receive)
        self.legs.append(leg)
        circuit.whenClosed().addBoth(self._closed, leg)
        self._guards.succeeded(path[0].nodeId)
        self.counters["circuits_built"] += 1
        if self.mode != "circuits":
            self.log.info("DHT through circuits: first circuit built; every DHT datagram goes through circuits now")
            self._setMode("circuits")
            if self._fallback is not None and self._fallback.active():
                self._fallback.cancel()
        if not self._ready.called:
            self._ready.callback(dhtAddresses(path[-1]))

    def _failed(self, failure, path):
        self.counters["circuits_failed"] += 1
        err = failure.value
        if getattr(err, "hop", None) == 0 or getattr(err, "silent", False):
            self._guards.markDown(path[0].nodeId)
        if not failure.check(MeshVPNError, defer.TimeoutError, defer.CancelledError):
            self.log.failure("DHT circuit build crashed", failure)
        else:
            self.log.info("DHT circuit through {m} failed: {why}", m=path[-1].nodeId.hex()[:16],
                          why=failure.getErrorMessage())

    def _closed(self, reason, leg):
        if leg in self.legs:
            self.legs.remove(leg)
            self.counters["circuits_closed"] += 1
        if self.running and self._loop is not None and self._loop.running:
            self.reactor.callLater(0, self._maintain)

    def status(self):
        return {"mode": self.mode, "circuits": [[r.nodeId.hex() for r in leg.path] for leg in self.legs],
                "counters": dict(self.counters)}
