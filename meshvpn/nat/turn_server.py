"""TURN server (RFC 8656, UDP) in a MeshVPN relay, for peers that cannot punch.

Never an open proxy: every ALLOCATE, REFRESH, CREATE-PERMISSION and
CHANNEL-BIND needs long-term credentials, and the credentials are the
"TURN REST API" kind the signalling relay issues only to an authenticated
peer (username C{expiry:nodeid}, password HMAC-SHA1(secret, username); see
L{meshvpn.nat.signal.turnCredentials}), so each allocation is bound to one
node id, at most C{perUser} of them.  A relayed address passes data only
to and from peers the client installed a permission for (IP, 300 s), never
to loopback, unspecified, multicast or our own addresses, within a byte
budget and a rate limit per allocation.  Lifetimes are capped and expire on
reactor time.  Nonces are stateless (time + HMAC), stale after 10 minutes.

Requests arrive through the STUN endpoint of the server's socket (method
handlers); ChannelData (first bytes 0x40-0x4F) through the multiplexer.
Each allocation gets its own UDP port on C{relayHost}.
"""

import hashlib
import hmac
import ipaddress
import os
import struct

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from zope.interface import implementer

from meshvpn.interfaces import IDatagramHandler
from meshvpn.nat import stun
from meshvpn.udpmux import TURN_CHANNEL_BYTES

SOFTWARE = b"meshvpn-turn"
PERMISSION_LIFETIME = 300
CHANNEL_LIFETIME = 600
NONCE_LIFETIME = 600
_KNOWN = frozenset(
    {stun.USERNAME, stun.REALM, stun.NONCE, stun.LIFETIME, stun.REQUESTED_TRANSPORT, stun.XOR_PEER_ADDRESS,
     stun.CHANNEL_NUMBER, stun.DATA_ATTR, stun.DONT_FRAGMENT, stun.REQUESTED_ADDRESS_FAMILY, stun.EVEN_PORT,
     stun.RESERVATION_TOKEN, stun.SOFTWARE}
)


class TurnLimits:
    defaultLifetime = 600
    maxLifetime = 3600
    maxAllocations = 256
    perUser = 2
    maxPermissions = 32
    maxChannels = 32
    byteBudget = 256 * 1024 * 1024  # per allocation, both directions
    rateBytes = 8 * 1024 * 1024  # bytes per second per allocation (burst 2x)

    def __init__(self, **kw):
        for k, v in kw.items():
            if not hasattr(TurnLimits, k):
                raise TypeError(k)
            setattr(self, k, v)


class _Relayed(DatagramProtocol):
    """The relayed address of one allocation: what peers send to."""

    def __init__(self, allocation):
        self.allocation = allocation

    def datagramReceived(self, data, addr):
        self.allocation.fromPeer(data, addr)


class Allocation:
    def __init__(self, server, client, username, key, expires):
        self.server, self.client, self.username, self.key = server, client, username, key
        self.expires = expires
        self.permissions = {}  # peer ip -> expiry
        self.channels = {}  # channel -> [peer addr, expiry]
        self.byPeer = {}  # peer addr -> channel
        self.port = None
        self.relayedAddress = None
        self.bytes = 0
        self.tokens = server.limits.rateBytes * 2
        self.stamp = server.reactor.seconds()
        self.timer = None

    def _spend(self, n):
        now = self.server.reactor.seconds()
        limits = self.server.limits
        self.tokens = min(2 * limits.rateBytes, self.tokens + (now - self.stamp) * limits.rateBytes)
        self.stamp = now
        if self.bytes + n > limits.byteBudget or self.tokens < n:
            self.server.counters["over_limit"] += 1
            return False
        self.tokens -= n
        self.bytes += n
        return True

    def permitted(self, host):
        exp = self.permissions.get(host)
        return exp is not None and exp > self.server.reactor.seconds()

    def fromPeer(self, data, addr):
        if not self.permitted(addr[0]):
            self.server.counters["no_permission"] += 1
            return
        if not self._spend(len(data)):
            return
        ch = self.byPeer.get(addr)
        if ch is not None and self.channels[ch][1] > self.server.reactor.seconds():
            self.server.send(struct.pack("!HH", ch, len(data)) + data, self.client)
            return
        msg = stun.StunMessage(stun.DATA, stun.INDICATION)
        msg.addXorAddress(stun.XOR_PEER_ADDRESS, addr)
        msg.add(stun.DATA_ATTR, data)
        self.server.send(msg.encode(), self.client)

    def toPeer(self, data, peer):
        if not self.permitted(peer[0]):
            self.server.counters["no_permission"] += 1
            return
        if self._spend(len(data)):
            self.port.write(data, peer)


@implementer(IDatagramHandler)
class TurnServer:
    """
    @param send: C{callable(data, addr)} on the server's socket.
    @param authSecret: bytes, the shared secret of REST-API credentials, or None.
    @param users: optional C{{username: password}} static long-term users.
    @param listenUDP: C{callable(port, protocol, interface)} (the reactor's).
    """

    log = Logger()

    def __init__(self, reactor, stunEndpoint, send, relayHost, realm="meshvpn", authSecret=None, users=None,
                 limits=None, listenUDP=None):
        self.reactor = reactor
        self.stun = stunEndpoint
        self.send = send
        self.relayHost = relayHost
        self.realm = realm.encode()
        self.authSecret = authSecret
        self.users = dict(users or {})
        self.limits = limits or TurnLimits()
        self._listenUDP = listenUDP or reactor.listenUDP
        self._nonceKey = os.urandom(16)
        self.allocations = {}  # client addr -> Allocation
        self.counters = {k: 0 for k in ("allocations", "refused", "no_permission", "over_limit", "malformed", "unauthenticated")}
        for method, handler in (
            (stun.ALLOCATE, self._allocate),
            (stun.REFRESH, self._refresh),
            (stun.CREATE_PERMISSION, self._createPermission),
            (stun.CHANNEL_BIND, self._channelBind),
            (stun.SEND, self._sendIndication),
        ):
            stunEndpoint.setMethodHandler(method, handler)

    def registerChannelData(self, mux):
        mux.register("turn-channel", TURN_CHANNEL_BYTES, self)

    # -- credentials
    def _nonce(self):
        stamp = b"%x" % int(self.reactor.seconds())
        return stamp + b"-" + hmac.new(self._nonceKey, stamp, hashlib.sha256).hexdigest()[:16].encode()

    def _nonceFresh(self, nonce):
        stamp, _, mac = nonce.partition(b"-")
        good = hmac.new(self._nonceKey, stamp, hashlib.sha256).hexdigest()[:16].encode()
        if not hmac.compare_digest(mac, good):
            return False
        try:
            return self.reactor.seconds() - int(stamp, 16) < NONCE_LIFETIME
        except ValueError:
            return False

    def _password(self, username):
        if username in self.users:
            return self.users[username]
        if self.authSecret is None:
            return None
        expiry, sep, _ = username.partition(":")
        if not sep or not expiry.isdigit() or int(expiry) < self._wallclock():
            return None
        return _b64(hmac.new(self.authSecret, username.encode(), hashlib.sha1).digest())

    def _wallclock(self):
        # REST credentials carry a wall-clock expiry; a real reactor's seconds() is wall-clock time.
        return self.reactor.seconds()

    def _authenticate(self, msg, source):
        """@return: C{(username, key)} or C{None} after answering with an error."""
        nonce, username, realm = msg.get(stun.NONCE), msg.get(stun.USERNAME), msg.get(stun.REALM)
        if not msg.hasIntegrity or nonce is None or username is None or realm is None:
            self.counters["unauthenticated"] += 1
            self._error(msg, source, 401, "Unauthorized", challenge=True)
            return None
        if not self._nonceFresh(nonce):
            self._error(msg, source, 438, "Stale Nonce", challenge=True)
            return None
        try:
            user = username.decode("utf-8")
            password = self._password(user) if realm == self.realm else None
            key = stun.longTermKey(user, self.realm, password) if password is not None else None
        except (UnicodeDecodeError, ValueError):
            key = None
        if key is None or not msg.checkIntegrity(key):
            self.counters["unauthenticated"] += 1
            self._error(msg, source, 401, "Unauthorized", challenge=True)
            return None
        return user, key

    # -- responses
    def _reply(self, msg, source, attrs, key):
        resp = msg.response(stun.SUCCESS)
        for t, v in attrs:
            resp.add(t, v)
        resp.add(stun.SOFTWARE, SOFTWARE)
        self.send(resp.encode(integrityKey=key, fingerprint=True), source)

    def _error(self, msg, source, code, reason, key=None, challenge=False):
        self.counters["refused"] += 1
        resp = msg.response(stun.ERROR)
        resp.addErrorCode(code, reason)
        if challenge:
            resp.add(stun.REALM, self.realm)
            resp.add(stun.NONCE, self._nonce())
        self.send(resp.encode(integrityKey=key, fingerprint=True), source)

    def _checkRequest(self, msg, source):
        if msg.cls != stun.REQUEST:
            self.counters["malformed"] += 1
            return False
        unknown = msg.unknownRequired(_KNOWN)
        if unknown:
            resp = msg.response(stun.ERROR)
            resp.addErrorCode(420, "Unknown Attribute")
            resp.add(stun.UNKNOWN_ATTRIBUTES, stun.encodeUnknownAttributes(unknown))
            self.send(resp.encode(fingerprint=True), source)
            return False
        return True

    def _lifetime(self, msg):
        v = msg.get(stun.LIFETIME)
        try:
            asked = self.limits.defaultLifetime if v is None else stun.decodeUint32(v)
        except stun.StunParseError:
            asked = self.limits.defaultLifetime
        return min(asked, self.limits.maxLifetime)

    # -- methods
    def _allocate(self, msg, source):
        if not self._checkRequest(msg, source):
            return
        auth = self._authenticate(msg, source)
        if auth is None:
            return
        user, key = auth
        existing = self.allocations.get(source)
        if existing is not None:
            # A retransmitted ALLOCATE from the same client gets the same answer.
            if existing.username == user:
                self._allocationReply(msg, source, existing, key)
            else:
                self._error(msg, source, 437, "Allocation Mismatch", key)
            return
        transport = msg.get(stun.REQUESTED_TRANSPORT)
        if transport is None or len(transport) != 4:
            self._error(msg, source, 400, "Bad Request", key)
            return
        if transport[0] != 17:
            self._error(msg, source, 442, "Unsupported Transport Protocol", key)
            return
        if msg.has(stun.EVEN_PORT) or msg.has(stun.RESERVATION_TOKEN):
            self._error(msg, source, 508, "Insufficient Capacity", key)
            return
        family = msg.get(stun.REQUESTED_ADDRESS_FAMILY)
        if family is not None and family[:1] != b"\x01":
            self._error(msg, source, 440, "Address Family not Supported", key)
            return
        if len(self.allocations) >= self.limits.maxAllocations:
            self._error(msg, source, 508, "Insufficient Capacity", key)
            return
        if sum(1 for a in self.allocations.values() if a.username == user) >= self.limits.perUser:
            self._error(msg, source, 486, "Allocation Quota Reached", key)
            return
        lifetime = self._lifetime(msg) or self.limits.defaultLifetime
        alloc = Allocation(self, source, user, key, self.reactor.seconds() + lifetime)
        try:
            alloc.port = self._listenUDP(0, _Relayed(alloc), interface=self.relayHost)
        except Exception:
            self._error(msg, source, 508, "Insufficient Capacity", key)
            return
        alloc.relayedAddress = (self.relayHost, alloc.port.getHost().port)
        self.allocations[source] = alloc
        self.counters["allocations"] += 1
        self._arm(alloc)
        self._allocationReply(msg, source, alloc, key)

    def _allocationReply(self, msg, source, alloc, key):
        resp = msg.response(stun.SUCCESS)
        resp.addXorAddress(stun.XOR_RELAYED_ADDRESS, alloc.relayedAddress)
        resp.add(stun.LIFETIME, stun.encodeUint32(max(0, int(alloc.expires - self.reactor.seconds()))))
        resp.addXorAddress(stun.XOR_MAPPED_ADDRESS, source)
        resp.add(stun.SOFTWARE, SOFTWARE)
        self.send(resp.encode(integrityKey=key, fingerprint=True), source)

    def _arm(self, alloc):
        if alloc.timer is not None and alloc.timer.active():
            alloc.timer.cancel()
        alloc.timer = self.reactor.callLater(max(0, alloc.expires - self.reactor.seconds()), self._expire, alloc)

    def _expire(self, alloc):
        if self.allocations.get(alloc.client) is alloc:
            del self.allocations[alloc.client]
        if alloc.timer is not None and alloc.timer.active():
            alloc.timer.cancel()
        if alloc.port is not None:
            alloc.port.stopListening()
            alloc.port = None

    def _owned(self, msg, source):
        """The caller's allocation, after authentication; else answer 437 and return None."""
        if not self._checkRequest(msg, source):
            return None
        auth = self._authenticate(msg, source)
        if auth is None:
            return None
        alloc = self.allocations.get(source)
        if alloc is None or alloc.username != auth[0]:
            self._error(msg, source, 437, "Allocation Mismatch", auth[1])
            return None
        return alloc

    def _refresh(self, msg, source):
        alloc = self._owned(msg, source)
        if alloc is None:
            return
        lifetime = self._lifetime(msg)
        if lifetime == 0:
            self._reply(msg, source, [(stun.LIFETIME, stun.encodeUint32(0))], alloc.key)
            self._expire(alloc)
            return
        alloc.expires = self.reactor.seconds() + lifetime
        self._arm(alloc)
        self._reply(msg, source, [(stun.LIFETIME, stun.encodeUint32(lifetime))], alloc.key)

    def _peerAllowed(self, peer):
        try:
            ip = ipaddress.ip_address(peer[0])
        except ValueError:
            return False
        if ip.version != 4 or ip.is_loopback or ip.is_unspecified or ip.is_multicast or ip.is_link_local:
            return False
        return True

    def _peers(self, msg):
        out = []
        for v in msg.getAll(stun.XOR_PEER_ADDRESS):
            try:
                out.append(stun.decodeXorAddress(v, msg.transactionId))
            except stun.StunParseError:
                return None
        return out

    def _createPermission(self, msg, source):
        alloc = self._owned(msg, source)
        if alloc is None:
            return
        peers = self._peers(msg)
        if not peers:
            self._error(msg, source, 400, "Bad Request", alloc.key)
            return
        if not all(self._peerAllowed(p) for p in peers):
            self._error(msg, source, 403, "Forbidden", alloc.key)
            return
        now = self.reactor.seconds()
        alloc.permissions = {h: e for h, e in alloc.permissions.items() if e > now}
        new = {p[0] for p in peers} - set(alloc.permissions)
        if len(alloc.permissions) + len(new) > self.limits.maxPermissions:
            self._error(msg, source, 508, "Insufficient Capacity", alloc.key)
            return
        for p in peers:
            alloc.permissions[p[0]] = now + PERMISSION_LIFETIME
        self._reply(msg, source, [], alloc.key)

    def _channelBind(self, msg, source):
        alloc = self._owned(msg, source)
        if alloc is None:
            return
        peers = self._peers(msg)
        raw = msg.get(stun.CHANNEL_NUMBER)
        if not peers or len(peers) != 1 or raw is None or len(raw) != 4:
            self._error(msg, source, 400, "Bad Request", alloc.key)
            return
        (channel,) = struct.unpack_from("!H", raw)
        peer = peers[0]
        if not 0x4000 <= channel <= 0x4FFF or not self._peerAllowed(peer):
            self._error(msg, source, 400, "Bad Request", alloc.key)
            return
        now = self.reactor.seconds()
        bound = alloc.channels.get(channel)
        if (bound is not None and bound[0] != peer) or alloc.byPeer.get(peer, channel) != channel:
            self._error(msg, source, 400, "Bad Request", alloc.key)
            return
        if bound is None and len(alloc.channels) >= self.limits.maxChannels:
            self._error(msg, source, 508, "Insufficient Capacity", alloc.key)
            return
        alloc.channels[channel] = [peer, now + CHANNEL_LIFETIME]
        alloc.byPeer[peer] = channel
        alloc.permissions[peer[0]] = now + PERMISSION_LIFETIME
        self._reply(msg, source, [], alloc.key)

    def _sendIndication(self, msg, source):
        alloc = self.allocations.get(source)
        if alloc is None or msg.cls != stun.INDICATION:
            self.counters["malformed"] += 1
            return
        peers = self._peers(msg)
        data = msg.get(stun.DATA_ATTR)
        if not peers or len(peers) != 1 or data is None:
            self.counters["malformed"] += 1
            return
        alloc.toPeer(data, peers[0])

    def datagramReceived(self, data, addr):
        """ChannelData from a client."""
        alloc = self.allocations.get(addr)
        if alloc is None or len(data) < 4:
            self.counters["malformed"] += 1
            return
        channel, length = struct.unpack_from("!HH", data)
        bound = alloc.channels.get(channel)
        if bound is None or length > len(data) - 4 or bound[1] <= self.reactor.seconds():
            self.counters["malformed"] += 1
            return
        alloc.toPeer(data[4 : 4 + length], bound[0])

    def stop(self):
        for alloc in list(self.allocations.values()):
            self._expire(alloc)


def _b64(raw):
    import base64

    return base64.b64encode(raw).decode()
