"""TURN server (RFC 8656, UDP) in a MeshVPN relay, for peers that cannot punch.

Never an open proxy: every ALLOCATE, REFRESH, CREATE-PERMISSION and
CHANNEL-BIND needs long-term credentials, and the credentials are the
"TURN REST API" kind the signalling relay issues only to an authenticated
peer (username C{expiry:nodeid}, password HMAC-SHA1(secret, username); see
L{meshvpn.nat.signal.turnCredentials}), so each allocation is bound to one
node id, at most C{perUser} of them: the quota counts the node id, not the
username, because a node gets a new username (a new expiry) every time it
asks.  A relayed address passes data only to and from peers the client
installed a permission for (IP, 300 s), and only public ones: never
private, shared (RFC 6598), loopback, link-local, documentation, reserved,
multicast or this relay's own addresses (L{DENIED_PEERS}; an operator may
let a range through with C{TurnLimits.allowedPeers}, like coturn's
C{allowed-peer-ip}), within a byte budget and a rate limit per allocation.
Lifetimes are capped and expire on reactor time.  Nonces are stateless
(time + HMAC), stale after 10 minutes.

Anyone can send a request without credentials, from any (spoofed) source,
so whatever answers it (401 and 438 challenges, 420) is never larger than
the request it answers and is rate-limited per source IP: the relay cannot
be used to amplify or reflect traffic.  Our client pads its first,
unauthenticated ALLOCATE so the challenge fits
(L{meshvpn.nat.turn_client.MIN_UNAUTHENTICATED_REQUEST}).

Requests arrive through the STUN endpoint of the server's socket (method
handlers); ChannelData (first bytes 0x40-0x4F) through the multiplexer.
Each allocation gets its own UDP port on C{relayHost}.

IPv6 (RFC 8656 address families): a server with a relay host of each
family grants what REQUESTED-ADDRESS-FAMILY asks (IPv4 when absent; 440 if
it has no relay host of that family) or, with ADDITIONAL-ADDRESS-FAMILY,
one relayed address of each family (a port on each relay host; if the IPv6
one cannot be had, the IPv4 one alone with ADDRESS-ERROR-CODE saying why).
An allocation talks only to peers of its relayed addresses' families (443
otherwise), and IPv6 peers are held to the same rule as IPv4 ones: public
unicast only (L{DENIED_PEERS6}), never NAT64 or 6to4 addresses that lead
back into private IPv4 space.  A REFRESH naming a family the allocation
lacks is refused with 443; the lifetime is the allocation's, both families.
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
from meshvpn.nat.server import MAX_SOURCES
from meshvpn.nat.turn_attributes import (ADDRESS_ERROR_CODE, UnsupportedFamily, decodeFamily, encodeAddressError,
                                         familyOf)
from meshvpn.ratelimit import BucketTable, TokenBucket
from meshvpn.udpmux import LINK_BYTES, TURN_CHANNEL_BYTES

SOFTWARE = b"meshvpn-turn"
PERMISSION_LIFETIME = 300
CHANNEL_LIFETIME = 600
NONCE_LIFETIME = 600
_KNOWN = frozenset(
    {stun.USERNAME, stun.REALM, stun.NONCE, stun.LIFETIME, stun.REQUESTED_TRANSPORT, stun.XOR_PEER_ADDRESS,
     stun.CHANNEL_NUMBER, stun.DATA_ATTR, stun.DONT_FRAGMENT, stun.REQUESTED_ADDRESS_FAMILY, stun.EVEN_PORT,
     stun.RESERVATION_TOKEN, stun.SOFTWARE}
)

# Peers a relayed address never talks to: private (RFC 1918), shared (RFC
# 6598: carrier-grade NAT, and our mesh addresses), "this network",
# loopback, link-local, IETF protocol assignments, documentation, 6to4
# relay anycast, multicast, reserved and broadcast.  198.18.0.0/15 (RFC
# 2544 benchmarking) is deliberately not listed: MeshVPN's test internet
# uses it, as the exit policy documents too.
DENIED_PEERS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
    )
)
# The same for IPv6 peers: unspecified, loopback, IPv4-mapped and
# -translated, NAT64 (RFC 6052 and the local-use 64:ff9b:1::/48: the
# translator would reach private IPv4 space), discard, Teredo, ORCHID,
# documentation, 6to4 (embeds any IPv4 address), ULA, link-local,
# site-local and multicast.  2001:2::/48 (RFC 5180 benchmarking) is
# deliberately not listed, as 198.18.0.0/15 above.
DENIED_PEERS6 = tuple(
    ipaddress.ip_network(n)
    for n in (
        "::/127",
        "::ffff:0:0/96",
        "::ffff:0:0:0/96",
        "64:ff9b::/96",
        "64:ff9b:1::/48",
        "100::/64",
        "2001::/32",
        "2001:10::/28",
        "2001:20::/28",
        "2001:db8::/32",
        "2002::/16",
        "fc00::/7",
        "fe80::/10",
        "fec0::/10",
        "ff00::/8",
    )
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
    allowedPeers = ()  # networks let through although DENIED_PEERS lists them (a lab relay)
    unauthenticatedRate = 10.0  # answers per second per source IP to requests without valid credentials
    unauthenticatedBurst = 20.0

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
    def __init__(self, server, client, username, key, expires, owner=None):
        self.server, self.client, self.username, self.key = server, client, username, key
        self.owner = username if owner is None else owner  # what the quota counts: the node id
        self.expires = expires
        self.permissions = {}  # peer ip -> expiry
        self.channels = {}  # channel -> [peer addr, expiry]
        self.byPeer = {}  # peer addr -> channel
        self.port = None  # the first family's relayed socket
        self.relayedAddress = None
        self.ports = {}  # family -> relayed socket (one, or one per family with ADDITIONAL-ADDRESS-FAMILY)
        self.relayedAddresses = []  # in the order the reply lists them
        self.addressError = None  # (family, code, reason) of an additional family not granted
        self.bytes = 0
        self.bucket = TokenBucket(server.reactor, server.limits.rateBytes, 2 * server.limits.rateBytes)
        self.timer = None

    def _spend(self, n):
        if self.bytes + n > self.server.limits.byteBudget or not self.bucket.tryConsume(n):
            self.server.counters["over_limit"] += 1
            return False
        self.bytes += n
        return True

    def permitted(self, host):
        exp = self.permissions.get(host)
        return exp is not None and exp > self.server.reactor.seconds()

    def fromPeer(self, data, addr):
        addr = addr[:2]  # an IPv6 socket adds flow info and scope
        if not self.permitted(addr[0]) or not self.server.internalAllowed(addr, data, inbound=True):
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
        port = self.ports.get(familyOf(peer[0]))
        if peer[1] == 0 or port is None or not self.permitted(peer[0]) or not self.server.internalAllowed(peer, data):
            self.server.counters["no_permission"] += 1
            return
        if self._spend(len(data)):
            try:
                port.write(data, peer)
            except OSError:
                # No route to that peer (a private candidate, say): that datagram is lost, the client's
                # stream or socket is not.
                self.server.counters["send_failed"] += 1


@implementer(IDatagramHandler)
class TurnServer:
    """
    @param send: C{callable(data, addr)} on the server's socket.
    @param authSecret: bytes, the shared secret of REST-API credentials, or None.
    @param users: optional C{{username: password}} static long-term users.
    @param relayHost: where relayed addresses are bound (either family).
    @param relayHost6: a relay host of the other family, or C{None}: then
        only C{relayHost}'s family is granted.
    @param listenUDP: C{callable(port, protocol, interface)} (the reactor's).
    @param ownAddresses: this relay's other IP addresses (an iterable, or a
        callable returning one, asked on each check), never a peer;
        the relay hosts always count.
    @param linkAddresses: C{callable() -> [(host, port)]}, the node sockets
        carrying datagram links, or None.  With it (a relay that serves
        UDP-blocked hosts over TCP, L{meshvpn.nat.turn_stream_server}), two
        of our own addresses become peers after all, port-exact: those
        sockets, for datagram-link bytes only (such a host's link to this
        relay, hence its signalling, runs through its allocation), and the
        relayed addresses of live allocations (two such hosts reach each
        other allocation to allocation).
    """

    log = Logger()

    def __init__(self, reactor, stunEndpoint, send, relayHost, realm="meshvpn", authSecret=None, users=None,
                 limits=None, listenUDP=None, ownAddresses=(), linkAddresses=None, relayHost6=None):
        self.reactor = reactor
        self.stun = stunEndpoint
        self.send = send
        self.relayHost = relayHost
        self.relayHosts = {familyOf(relayHost): relayHost}  # family -> host relayed addresses are bound on
        if relayHost6 is not None:
            if familyOf(relayHost6) in self.relayHosts:
                raise ValueError("relayHost6 must be of the other address family than relayHost")
            self.relayHosts[familyOf(relayHost6)] = relayHost6
        self.realm = realm.encode()
        self.authSecret = authSecret
        self.users = dict(users or {})
        self.limits = limits or TurnLimits()
        self._listenUDP = listenUDP or reactor.listenUDP
        self._nonceKey = os.urandom(16)
        self._ownAddresses = ownAddresses
        self._linkAddresses = linkAddresses
        self._allowedPeers = tuple(ipaddress.ip_network(n) for n in self.limits.allowedPeers)
        self._unauthenticated = BucketTable(reactor, self.limits.unauthenticatedRate, self.limits.unauthenticatedBurst, MAX_SOURCES)
        self.allocations = {}  # client addr -> Allocation
        self.counters = {
            k: 0
            for k in ("allocations", "refused", "no_permission", "over_limit", "malformed", "unauthenticated",
                      "quota", "forbidden_peer", "unauthenticated_ratelimited", "unauthenticated_too_large",
                      "family_mismatch", "send_failed")
        }
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
        """@return: C{(password, owner)}: a static user owns its allocations, a REST user's node id owns them."""
        if username in self.users:
            return self.users[username], ("user", username)
        if self.authSecret is None:
            return None, None
        expiry, sep, nodeId = username.partition(":")
        if not sep or not expiry.isascii() or not expiry.isdigit() or int(expiry) < self._wallclock():
            return None, None
        return _b64(hmac.new(self.authSecret, username.encode(), hashlib.sha1).digest()), ("node", nodeId)

    def _wallclock(self):
        # REST credentials carry a wall-clock expiry; a real reactor's seconds() is wall-clock time.
        return self.reactor.seconds()

    def _authenticate(self, msg, source):
        """@return: C{(username, key, owner)} or C{None} after answering with a challenge."""
        nonce, username, realm = msg.get(stun.NONCE), msg.get(stun.USERNAME), msg.get(stun.REALM)
        if not msg.hasIntegrity or nonce is None or username is None or realm is None:
            self.counters["unauthenticated"] += 1
            self._challenge(msg, source, 401, "Unauthorized")
            return None
        if not self._nonceFresh(nonce):
            self._challenge(msg, source, 438, "Stale Nonce")
            return None
        try:
            user = username.decode("utf-8")
            password, owner = self._password(user) if realm == self.realm else (None, None)
            key = stun.longTermKey(user, self.realm, password) if password is not None else None
        except (UnicodeDecodeError, ValueError):
            key = None
        if key is None or not msg.checkIntegrity(key):
            self.counters["unauthenticated"] += 1
            self._challenge(msg, source, 401, "Unauthorized")
            return None
        return user, key, owner

    # -- responses
    def _reply(self, msg, source, attrs, key):
        resp = msg.response(stun.SUCCESS)
        for t, v in attrs:
            resp.add(t, v)
        resp.add(stun.SOFTWARE, SOFTWARE)
        self.send(resp.encode(integrityKey=key, fingerprint=True), source)

    def _error(self, msg, source, code, reason, key):
        """An error to an authenticated request (integrity-protected with its key)."""
        self.counters["refused"] += 1
        resp = msg.response(stun.ERROR)
        resp.addErrorCode(code, reason)
        self.send(resp.encode(integrityKey=key, fingerprint=True), source)

    def _challenge(self, msg, source, code, reason):
        """401 or 438 with REALM and a fresh NONCE, to a request without valid credentials."""
        self.counters["refused"] += 1
        resp = msg.response(stun.ERROR)
        resp.addErrorCode(code, reason)
        resp.add(stun.REALM, self.realm)
        resp.add(stun.NONCE, self._nonce())
        self._sendUnauthenticated(resp, msg, source)

    def _sendUnauthenticated(self, resp, msg, source):
        """
        Answer a request nobody has authenticated: never with more bytes
        than it carried (FINGERPRINT only if it fits), and at most
        C{unauthenticatedRate} answers per second per source IP.
        """
        limit = len(msg.raw) if msg.raw is not None else 0
        data = resp.encode(fingerprint=True)
        if len(data) > limit:
            data = resp.encode()
        if len(data) > limit:
            self.counters["unauthenticated_too_large"] += 1
            return
        if not self._unauthenticated.tryConsume(source[0]):
            self.counters["unauthenticated_ratelimited"] += 1
            return
        self.send(data, source)

    def _checkRequest(self, msg, source):
        if msg.cls != stun.REQUEST:
            self.counters["malformed"] += 1
            return False
        unknown = msg.unknownRequired(_KNOWN)
        if unknown:
            resp = msg.response(stun.ERROR)
            resp.addErrorCode(420, "Unknown Attribute")
            resp.add(stun.UNKNOWN_ATTRIBUTES, stun.encodeUnknownAttributes(unknown))
            self._sendUnauthenticated(resp, msg, source)
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
        user, key, owner = auth
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
        families = self._families(msg, source, key)
        if families is None:
            return
        if len(self.allocations) >= self.limits.maxAllocations:
            self._error(msg, source, 508, "Insufficient Capacity", key)
            return
        if sum(1 for a in self.allocations.values() if a.owner == owner) >= self.limits.perUser:
            self.counters["quota"] += 1
            self._error(msg, source, 486, "Allocation Quota Reached", key)
            return
        lifetime = self._lifetime(msg) or self.limits.defaultLifetime
        alloc = Allocation(self, source, user, key, self.reactor.seconds() + lifetime, owner)
        first, additional = families
        if not self._bind(alloc, first):
            self._error(msg, source, 508, "Insufficient Capacity", key)
            return
        alloc.port, alloc.relayedAddress = alloc.ports[first], alloc.relayedAddresses[0]
        if additional is not None:
            if additional not in self.relayHosts:
                alloc.addressError = (additional, 440, "Address Family not Supported")
            elif not self._bind(alloc, additional):
                alloc.addressError = (additional, 508, "Insufficient Capacity")
        self.allocations[source] = alloc
        self.counters["allocations"] += 1
        self._arm(alloc)
        self._allocationReply(msg, source, alloc, key)

    def _families(self, msg, source, key):
        """
        The families an ALLOCATE asks for: C{(first, additional or None)};
        C{None} after answering the error (400 malformed or contradictory,
        440 a family this server does not relay).
        """
        requested = msg.get(stun.REQUESTED_ADDRESS_FAMILY)
        additional = msg.get(stun.ADDITIONAL_ADDRESS_FAMILY)
        try:
            first = 4 if requested is None else decodeFamily(requested)
            extra = None if additional is None else decodeFamily(additional)
        except UnsupportedFamily:
            self._error(msg, source, 440, "Address Family not Supported", key)
            return None
        except stun.StunParseError:
            self._error(msg, source, 400, "Bad Request", key)
            return None
        if extra is not None and (requested is not None or extra != 6):
            # RFC 8656 7.2: only IPv6 may be additional, and never beside REQUESTED-ADDRESS-FAMILY.
            self._error(msg, source, 400, "Bad Request", key)
            return None
        if first not in self.relayHosts:
            self._error(msg, source, 440, "Address Family not Supported", key)
            return None
        return first, extra

    def _bind(self, alloc, family):
        """A relayed socket of C{family} for C{alloc}.  @return: whether it has one."""
        host = self.relayHosts[family]
        try:
            port = self._listenUDP(0, _Relayed(alloc), interface=host)
        except Exception:
            return False
        alloc.ports[family] = port
        alloc.relayedAddresses.append((host, port.getHost().port))
        return True

    def _allocationReply(self, msg, source, alloc, key):
        resp = msg.response(stun.SUCCESS)
        for relayed in alloc.relayedAddresses:
            resp.addXorAddress(stun.XOR_RELAYED_ADDRESS, relayed)
        if alloc.addressError is not None:
            resp.add(ADDRESS_ERROR_CODE, encodeAddressError(*alloc.addressError))
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
        for port in alloc.ports.values():
            port.stopListening()
        alloc.ports = {}
        alloc.port = None

    def _owned(self, msg, source):
        """The caller's allocation, after authentication; else answer 437 and return None."""
        if not self._checkRequest(msg, source):
            return None
        auth = self._authenticate(msg, source)
        if auth is None:
            return None
        alloc = self.allocations.get(source)
        if alloc is None or alloc.owner != auth[2]:
            self._error(msg, source, 437, "Allocation Mismatch", auth[1])
            return None
        # A REST user renews its credentials (new expiry, same node id): the allocation follows them.
        alloc.username, alloc.key = auth[0], auth[1]
        return alloc

    def _refresh(self, msg, source):
        alloc = self._owned(msg, source)
        if alloc is None:
            return
        requested = msg.get(stun.REQUESTED_ADDRESS_FAMILY)
        if requested is not None:
            try:
                family = decodeFamily(requested)
            except stun.StunParseError:
                family = None
            if family not in alloc.ports:
                self.counters["family_mismatch"] += 1
                self._error(msg, source, 443, "Peer Address Family Mismatch", alloc.key)
                return
        lifetime = self._lifetime(msg)
        if lifetime == 0:
            self._reply(msg, source, [(stun.LIFETIME, stun.encodeUint32(0))], alloc.key)
            self._expire(alloc)
            return
        alloc.expires = self.reactor.seconds() + lifetime
        self._arm(alloc)
        self._reply(msg, source, [(stun.LIFETIME, stun.encodeUint32(lifetime))], alloc.key)

    def _own(self):
        own = self._ownAddresses() if callable(self._ownAddresses) else self._ownAddresses
        out = set()
        for a in [*self.relayHosts.values(), *own]:
            try:
                out.add(ipaddress.ip_address(a))
            except ValueError:
                pass
        return out

    def _internal(self):
        """@return: C{(links, relayed)}: the node's link sockets and live relayed addresses, as sets of (host, port)."""
        if self._linkAddresses is None:
            return set(), set()
        links = {(self.relayHosts.get(familyOf(h), h) if ipaddress.ip_address(h).is_unspecified else h, p)
                 for h, p in self._linkAddresses()}
        return links, {r for a in self.allocations.values() for r in a.relayedAddresses}

    def internalAllowed(self, peer, data, inbound=False):
        """
        Data to or from one of our own addresses passes only if that exact
        address is internal (see C{linkAddresses}); to a link socket only
        datagram-link bytes.  Any other peer passes (its permission was checked).
        """
        try:
            ip = ipaddress.ip_address(peer[0])
        except ValueError:
            return False
        if ip not in self._own():
            return True
        links, relayed = self._internal()
        key = (str(ip), peer[1])
        if key in relayed or (key in links and data[:1] and data[0] in LINK_BYTES):
            return True
        self.counters["forbidden_peer"] += 1
        return False

    def _internalHost(self, ip, port):
        links, relayed = self._internal()
        if port == 0:
            return any(ipaddress.ip_address(h) == ip for h, _ in links | relayed)
        return (str(ip), port) in links | relayed

    def dropClient(self, source):
        """The client at C{source} is gone (its stream closed): its allocation goes with it."""
        alloc = self.allocations.get(source)
        if alloc is not None:
            self._expire(alloc)

    def _peerAllowed(self, peer):
        """
        A public unicast address that is not ours (see L{DENIED_PEERS} and
        L{DENIED_PEERS6}), or an internal one (C{linkAddresses}).
        """
        try:
            ip = ipaddress.ip_address(peer[0])
        except ValueError:
            ip = None
        if ip is not None and ip in self._own() and self._internalHost(ip, peer[1]):
            return True
        denied = DENIED_PEERS if ip is None or ip.version == 4 else DENIED_PEERS6
        if (
            ip is None
            or ip.is_unspecified
            or ip.is_loopback
            or ip.is_multicast
            or ip in self._own()
            or (any(ip in n for n in denied) and not any(ip in n for n in self._allowedPeers))
        ):
            self.counters["forbidden_peer"] += 1
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
        if not self._familiesMatch(alloc, peers, msg, source):
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
        if not self._familiesMatch(alloc, peers, msg, source):
            return
        if not 0x4000 <= channel <= 0x4FFF or peer[1] == 0 or not self._peerAllowed(peer):
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

    def _familiesMatch(self, alloc, peers, msg, source):
        """Every peer is of a family the allocation relays; else answer 443 (RFC 8656 9.2) and return False."""
        if all(familyOf(p[0]) in alloc.ports for p in peers):
            return True
        self.counters["family_mismatch"] += 1
        self._error(msg, source, 443, "Peer Address Family Mismatch", alloc.key)
        return False

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
