"""Signalling through a relay both peers reach: the server side and the client side.

Before two NATed peers can talk directly they must swap candidate addresses
through something both can already reach.  Here that is a relay node: each
peer holds an authenticated datagram link to it (which also keeps its NAT
mapping toward the relay open), and the relay forwards small payloads
between the links of two node ids, telling each side the address it
observed the other at (its server-reflexive candidate).  The relay also
hands out TURN credentials bound to the requesting node id, so TURN
allocations belong to authenticated peers.

The DHT can carry the same payloads later: L{ISignallingChannel} is the seam.
"""

import base64
import hashlib
import hmac

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from meshvpn.errors import MeshVPNError
from meshvpn.interfaces import ISignallingChannel
from meshvpn.nat import signal_wire as sw
from meshvpn.ratelimit import TokenBucket


def turnCredentials(secret, nodeId, now, lifetime):
    """
    TURN long-term credentials in the "TURN REST API" form coturn also
    understands (C{use-auth-secret}): username C{expiry:nodeid}, password
    base64(HMAC-SHA1(secret, username)).  The node id in the username binds
    the allocation to the authenticated peer.
    """
    username = f"{int(now + lifetime)}:{nodeId.hex()[:32]}"
    password = base64.b64encode(hmac.new(secret, username.encode(), hashlib.sha1).digest()).decode()
    return username, password


class SignalRelay:
    """
    The relay side: forwards between registered links, answers REGISTER
    with the observed address, issues TURN credentials.  Its table is the
    link endpoint's own (bounded) link table.
    """

    log = Logger()

    def __init__(self, reactor, endpoint, turnSecret=None, turnLifetime=600, ratePerPeer=50.0):
        self.reactor = reactor
        self.endpoint = endpoint
        self.turnSecret = turnSecret
        self.turnLifetime = turnLifetime
        self.rate = ratePerPeer
        self.counters = {"forwarded": 0, "unreachable": 0, "malformed": 0, "ratelimited": 0, "creds": 0}
        self._buckets = {}
        endpoint.setLinkAcceptor(self._accept)

    def _accept(self, link):
        link.setControlReceiver(lambda data: self._received(link, data))
        link.whenClosed().addCallback(lambda _: self._buckets.pop(link.peerId, None))
        return True

    def _allow(self, link):
        b = self._buckets.get(link.peerId)
        if b is None:
            b = self._buckets[link.peerId] = TokenBucket(self.reactor, self.rate, 2 * self.rate)
        if not b.tryConsume(1):
            self.counters["ratelimited"] += 1
            return False
        return True

    def _received(self, link, data):
        try:
            msg = sw.parseRelayMessage(data)
        except sw.SignalParseError:
            self.counters["malformed"] += 1
            return
        if not self._allow(link):
            return
        kind = msg[0]
        if kind == sw.REGISTER:
            link.sendControl(bytes((sw.REGISTERED,)) + sw.encodeAddress(link.peerAddress))
        elif kind == sw.FORWARD:
            _, dst, payload = msg
            target = self.endpoint.linkTo(dst)
            if target is None or target.closed:
                self.counters["unreachable"] += 1
                link.sendControl(bytes((sw.UNREACHABLE,)) + dst)
                return
            self.counters["forwarded"] += 1
            target.sendControl(bytes((sw.DELIVER,)) + link.peerId + sw.encodeAddress(link.peerAddress) + payload)
        elif kind == sw.CREDS_REQUEST and self.turnSecret is not None:
            self.counters["creds"] += 1
            user, pw = turnCredentials(self.turnSecret, link.peerId, self.reactor.seconds(), self.turnLifetime)
            link.sendControl(sw.encodeCreds(self.turnLifetime, user, pw))
        else:
            self.counters["malformed"] += 1


class SignallingError(MeshVPNError):
    """The signalling relay could not be reached or refused."""


@implementer(ISignallingChannel)
class RelaySignalling:
    """
    The client side: one link to one relay.  L{start} connects and
    registers, firing with our address as the relay saw it.
    """

    log = Logger()

    def __init__(self, reactor, endpoint, relayNodeId, relayAddress):
        self.reactor = reactor
        self.endpoint = endpoint
        self.relayNodeId = relayNodeId
        self.relayAddress = relayAddress
        self.observedAddress = None
        self.link = None
        self._receiver = None
        self._registered = None
        self._creds = []
        self.counters = {"malformed": 0, "unreachable": 0}

    async def _start(self, retries):
        self.link = await self.endpoint.connect(self.relayNodeId, self.relayAddress)
        self.link.setControlReceiver(self._received)
        for _ in range(retries):
            self._registered = defer.Deferred()
            self.link.sendControl(bytes((sw.REGISTER,)))
            timer = self.reactor.callLater(1.0, self._registered.cancel)
            try:
                addr = await self._registered
            except defer.CancelledError:
                continue
            timer.cancel()
            self.observedAddress = addr
            return addr
        raise SignallingError("relay did not answer REGISTER")

    def start(self, retries=5):
        """@return: a Deferred firing with our server-reflexive address."""
        return defer.Deferred.fromCoroutine(self._start(retries))

    def setSignalReceiver(self, receiver):
        self._receiver = receiver

    def sendSignal(self, peerId, payload):
        if self.link is not None:
            self.link.sendControl(bytes((sw.FORWARD,)) + peerId + payload)

    def requestCredentials(self, timeout=2.0):
        """@return: a Deferred firing with C{(lifetime, username, password)} for the relay's TURN server."""
        d = defer.Deferred()
        self._creds.append(d)
        self.link.sendControl(bytes((sw.CREDS_REQUEST,)))
        def expire():
            self._creds.remove(d)
            d.errback(SignallingError("no TURN credentials from relay"))

        timer = self.reactor.callLater(timeout, expire)

        def done(result):
            if timer.active():
                timer.cancel()
            return result

        return d.addBoth(done)

    def _received(self, data):
        try:
            msg = sw.parseRelayMessage(data)
        except sw.SignalParseError:
            self.counters["malformed"] += 1
            return
        kind = msg[0]
        if kind == sw.REGISTERED:
            if self._registered is not None and not self._registered.called:
                self._registered.callback(msg[1])
        elif kind == sw.DELIVER:
            if self._receiver is not None:
                self._receiver(msg[1], msg[3], msg[2])
        elif kind == sw.UNREACHABLE:
            self.counters["unreachable"] += 1
        elif kind == sw.CREDS:
            if self._creds:
                self._creds.pop(0).callback(msg[1:])
        else:
            self.counters["malformed"] += 1
