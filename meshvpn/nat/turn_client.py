"""TURN client (RFC 8656 over UDP) on the node's one socket: works with coturn and with our relay.

A peer that cannot punch allocates a relayed address on a TURN server and
tells the other peer to send there.  The allocation is then a I{path} for the
datagram link: C{sendDatagram(data, peer)} goes out as a SEND indication (or
ChannelData once a channel is bound), and DATA indications / ChannelData
coming back are handed to the receiver with the peer's address.

Requests use long-term credentials (RFC 8489 9.2): the first ALLOCATE (padded
with SOFTWARE, see L{MIN_UNAUTHENTICATED_REQUEST}) draws a 401 with REALM and
NONCE, every later request carries USERNAME, REALM,
NONCE and MESSAGE-INTEGRITY; a 438 (stale nonce) is retried once with the
new nonce.  The allocation, its permissions (300 s) and its channels
(600 s) are refreshed before they expire, on reactor time.

Address families (RFC 8656): C{allocate(family=6)} asks for an IPv6
relayed address (REQUESTED-ADDRESS-FAMILY), C{allocate(additionalFamily=True)}
for an IPv4 and an IPv6 one (ADDITIONAL-ADDRESS-FAMILY).  The relayed
addresses granted are C{relayedAddresses} (by family); a missing
additional one is explained in C{addressError}.  Data to a peer leaves
from the relayed address of the peer's family, which the server picks.
"""

import struct

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from meshvpn.errors import RelayError
from meshvpn.hostport import formatHostPort
from meshvpn.interfaces import IDatagramHandler, IRelayAllocation
from meshvpn.nat import stun
from meshvpn.nat.turn_attributes import ADDRESS_ERROR_CODE, decodeAddressError, encodeFamily, familyOf
from meshvpn.udpmux import TURN_CHANNEL_BYTES

UDP_TRANSPORT = struct.pack("!BBBB", 17, 0, 0, 0)
PERMISSION_REFRESH = 240.0  # permissions live 300 s (RFC 8656 9)
CHANNEL_REFRESH = 480.0  # channel bindings live 600 s (RFC 8656 12)
MAX_CHANNELS = 64
CHANNEL_FIRST = 0x4000
# Our TURN server never answers a request without credentials with more
# bytes than it carried (no amplification), so the first ALLOCATE, which
# draws the 401 challenge, is padded to at least this size with a SOFTWARE
# attribute (comprehension-optional: coturn and others ignore it).
MIN_UNAUTHENTICATED_REQUEST = 128
SOFTWARE = b"meshvpn"


def _padWithSoftware(msg):
    """Add SOFTWARE, space-padded so C{msg} (with FINGERPRINT) is at least L{MIN_UNAUTHENTICATED_REQUEST} bytes."""
    size = len(msg.encode(fingerprint=True)) + 4 + len(SOFTWARE)
    msg.add(stun.SOFTWARE, SOFTWARE + b" " * max(0, MIN_UNAUTHENTICATED_REQUEST - size))


@implementer(IRelayAllocation, IDatagramHandler)
class TurnAllocation:
    """
    One allocation.  Build with L{allocate}.  Register it on the node's
    multiplexer for ChannelData (L{TURN_CHANNEL_BYTES}) with
    L{registerChannelData} if channels are to be used.
    """

    log = Logger()

    def __init__(self, reactor, stunEndpoint, send, server, username, password, rto=0.5, rc=5, rm=4, renew=None):
        self.reactor = reactor
        # renew() -> Deferred (lifetime, username, password): REST credentials (the signalling relay's live
        # 600 s) are fetched again before each refresh, or the second refresh (~1080 s) would be refused.
        self.renew = renew
        self.stun = stunEndpoint
        self._send = send
        self.server = server
        self.username = username
        self.password = password
        self.realm = self.nonce = self.key = None
        self.relayedAddress = self.mappedAddress = None
        self.relayedAddresses = {}  # family -> (host, port)
        self.addressError = None  # (family, code, reason): why an additional family was not granted
        self.lifetime = None
        self._timing = dict(rto=rto, rc=rc, rm=rm)
        self._receiver = None
        self._permissions = {}  # peer ip -> refresh timer
        self._channels = {}  # peer addr -> channel number
        self._byChannel = {}  # channel number -> peer addr
        self._refreshTimer = None
        self.released = False
        self.counters = {"rx": 0, "rx_channel": 0, "tx": 0, "tx_channel": 0, "rx_dropped": 0}

    # -- requests with long-term credentials
    async def _request(self, method, attrs, peer=None):
        """
        One request, with the credential dance: unauthenticated until the
        server's first 401 gives REALM and NONCE, then USERNAME, REALM,
        NONCE and MESSAGE-INTEGRITY; a 438 (stale nonce) is retried with the
        new nonce.  A 401 to an authenticated request means wrong credentials.
        """
        for _ in range(3):
            msg = stun.StunMessage(method, stun.REQUEST)
            if peer is not None:
                msg.addXorAddress(stun.XOR_PEER_ADDRESS, peer)  # depends on the transaction id
            for t, v in attrs:
                msg.add(t, v)
            key = self.key
            if key is not None:
                msg.add(stun.USERNAME, self.username.encode())
                msg.add(stun.REALM, self.realm)
                msg.add(stun.NONCE, self.nonce)
            else:
                _padWithSoftware(msg)
            try:
                result = await self.stun.client.request(msg, self.server, integrityKey=key, **self._timing)
            except Exception as e:
                raise RelayError(f"TURN server {formatHostPort(*self.server)} did not answer: {e}") from None
            reply = result.message
            if reply.cls == stun.SUCCESS:
                if key is not None and reply.hasIntegrity and not reply.checkIntegrity(key):
                    raise RelayError("TURN response failed MESSAGE-INTEGRITY")
                return reply
            code, reason = reply.errorCode() or (0, "")
            nonce = reply.get(stun.NONCE)
            if code == 401 and key is not None:
                raise RelayError("TURN server refused our credentials (401)")
            if code in (401, 438) and nonce is not None:
                self.nonce = nonce
                if code == 401:
                    self.realm = reply.get(stun.REALM)
                    if self.realm is None:
                        raise RelayError("TURN 401 without REALM")
                    self.key = stun.longTermKey(self.username, self.realm, self.password)
                continue
            raise RelayError(f"TURN {method:#x} refused: {code} {reason}")
        raise RelayError("TURN authentication did not converge")

    async def _allocate(self, lifetime, family, additionalFamily):
        attrs = [(stun.REQUESTED_TRANSPORT, UDP_TRANSPORT), (stun.LIFETIME, stun.encodeUint32(lifetime))]
        if family is not None:
            attrs.append((stun.REQUESTED_ADDRESS_FAMILY, encodeFamily(family)))
        if additionalFamily:
            attrs.append((stun.ADDITIONAL_ADDRESS_FAMILY, encodeFamily(6)))
        reply = await self._request(stun.ALLOCATE, attrs)
        try:
            relayed = [stun.decodeXorAddress(v, reply.transactionId) for v in reply.getAll(stun.XOR_RELAYED_ADDRESS)]
            error = reply.get(ADDRESS_ERROR_CODE)
            self.addressError = None if error is None else decodeAddressError(error)
        except stun.StunParseError as e:
            raise RelayError(f"TURN ALLOCATE answer malformed: {e}") from None
        self.mappedAddress = reply.getXorAddress(stun.XOR_MAPPED_ADDRESS)
        if not relayed:
            raise RelayError("ALLOCATE success without XOR-RELAYED-ADDRESS")
        self.relayedAddresses = {}
        for address in relayed[:2]:
            self.relayedAddresses.setdefault(familyOf(address[0]), address)
        wanted = family or 4
        if familyOf(relayed[0][0]) != wanted:
            raise RelayError(f"TURN server relayed IPv{familyOf(relayed[0][0])} where IPv{wanted} was asked")
        self.relayedAddress = relayed[0]
        self.lifetime = stun.decodeUint32(reply.get(stun.LIFETIME, stun.encodeUint32(lifetime)))
        turnDispatch(self.stun).allocations[self.server] = self
        self._scheduleRefresh()
        return self

    def allocate(self, lifetime=600, family=None, additionalFamily=False):
        """
        @param family: 4 or 6, the relayed address's family (C{None}: the
            server's default, IPv4).
        @param additionalFamily: ask for an IPv6 relayed address beside the IPv4 one.
        @return: a Deferred firing with this allocation once the server granted it.
        """
        if additionalFamily and family is not None:
            raise ValueError("an additional family goes with the default (IPv4) one only")
        return defer.Deferred.fromCoroutine(self._allocate(lifetime, family, additionalFamily))

    def _scheduleRefresh(self):
        if self._refreshTimer is not None and self._refreshTimer.active():
            self._refreshTimer.cancel()
        delay = max(self.lifetime - 60, self.lifetime / 2)
        self._refreshTimer = self.reactor.callLater(delay, self._autoRefresh)

    def _autoRefresh(self):
        d = defer.Deferred.fromCoroutine(self._renewThenRefresh())
        d.addErrback(lambda f: self.log.warn("TURN refresh failed: {e}", e=f.getErrorMessage()))

    async def _renewThenRefresh(self):
        if self.renew is not None:
            try:
                _, username, password = await self.renew()
            except Exception as e:
                self.log.warn("TURN credentials not renewed ({e}); refreshing with the old ones", e=e)
            else:
                self.setCredentials(username, password)
        return await self.refresh(self.lifetime)

    def setCredentials(self, username, password):
        """Use new credentials from now on (the server must accept them for this allocation: same owner)."""
        self.username, self.password = username, password
        if self.realm is not None:
            self.key = stun.longTermKey(username, self.realm, password)

    # -- IRelayAllocation
    def refresh(self, lifetime=600):
        async def go():
            reply = await self._request(stun.REFRESH, [(stun.LIFETIME, stun.encodeUint32(lifetime))])
            self.lifetime = stun.decodeUint32(reply.get(stun.LIFETIME, stun.encodeUint32(lifetime)))
            if self.lifetime:
                self._scheduleRefresh()
            return self.lifetime

        return defer.Deferred.fromCoroutine(go())

    def createPermission(self, peerAddress):
        """Install (and keep refreshing) a permission for C{peerAddress}'s IP."""

        async def go():
            host = peerAddress[0]
            await self._request(stun.CREATE_PERMISSION, [], peer=(host, 0))
            old = self._permissions.get(host)
            if old is not None and old.active():
                old.cancel()
            self._permissions[host] = self.reactor.callLater(PERMISSION_REFRESH, self._refreshPermission, host)

        return defer.Deferred.fromCoroutine(go())

    def _refreshPermission(self, host):
        if self.released:
            return
        d = self.createPermission((host, 0))
        d.addErrback(lambda f: self.log.warn("TURN permission refresh failed: {e}", e=f.getErrorMessage()))

    def channelBind(self, peerAddress):
        """
        Bind a channel to C{peerAddress} (also installs its permission), so
        data to and from it goes as 4-byte-header ChannelData.
        """

        async def go():
            channel = self._channels.get(peerAddress)
            if channel is None:
                if len(self._channels) >= MAX_CHANNELS:
                    raise RelayError("too many channels")
                channel = CHANNEL_FIRST + len(self._channels)
            await self._request(stun.CHANNEL_BIND, [(stun.CHANNEL_NUMBER, struct.pack("!HH", channel, 0))], peer=peerAddress)
            self._channels[peerAddress] = channel
            self._byChannel[channel] = peerAddress
            self.reactor.callLater(CHANNEL_REFRESH, self._refreshChannel, peerAddress)
            return channel

        return defer.Deferred.fromCoroutine(go())

    def _refreshChannel(self, peerAddress):
        if not self.released and peerAddress in self._channels:
            self.channelBind(peerAddress).addErrback(lambda f: None)

    def send(self, peerAddress, data):
        """Send C{data} to C{peerAddress} through the relay (fire and forget)."""
        if self.released:
            return
        self.counters["tx"] += 1
        channel = self._channels.get(peerAddress)
        if channel is not None:
            self.counters["tx_channel"] += 1
            self._send(struct.pack("!HH", channel, len(data)) + data, self.server)
            return
        msg = stun.StunMessage(stun.SEND, stun.INDICATION)
        msg.addXorAddress(stun.XOR_PEER_ADDRESS, peerAddress)
        msg.add(stun.DATA_ATTR, data)
        self._send(msg.encode(), self.server)

    def sendDatagram(self, data, addr):
        """The link-path face of L{send}."""
        self.send(addr, data)

    def setReceiver(self, receiver):
        """C{receiver(data, peerAddress)} gets what peers send to our relayed address."""
        self._receiver = receiver

    def release(self):
        async def go():
            self._stopTimers()
            try:
                await self._request(stun.REFRESH, [(stun.LIFETIME, stun.encodeUint32(0))])
            finally:
                self.released = True
                turnDispatch(self.stun).remove(self)

        return defer.Deferred.fromCoroutine(go())

    def _stopTimers(self):
        for t in [self._refreshTimer, *self._permissions.values()]:
            if t is not None and t.active():
                t.cancel()

    # -- incoming
    def _dataIndication(self, msg, source):
        if source != self.server or msg.cls != stun.INDICATION:
            self.counters["rx_dropped"] += 1
            return
        try:
            peer = msg.getXorAddress(stun.XOR_PEER_ADDRESS)
        except stun.StunParseError:
            peer = None
        data = msg.get(stun.DATA_ATTR)
        if peer is None or data is None:
            self.counters["rx_dropped"] += 1
            return
        self._deliver(data, peer)

    def datagramReceived(self, data, addr):
        """ChannelData from the server (first byte 0x40-0x4F)."""
        if addr != self.server or len(data) < 4:
            self.counters["rx_dropped"] += 1
            return
        channel, length = struct.unpack_from("!HH", data)
        peer = self._byChannel.get(channel)
        if peer is None or length > len(data) - 4:
            self.counters["rx_dropped"] += 1
            return
        self.counters["rx_channel"] += 1
        self._deliver(data[4 : 4 + length], peer)

    def _deliver(self, data, peer):
        self.counters["rx"] += 1
        if self._receiver is not None:
            self._receiver(data, peer)

    def registerChannelData(self, mux):
        """Receive ChannelData (first bytes 0x40-0x4F) from C{mux} too."""
        turnDispatch(self.stun).registerOn(mux)


@implementer(IDatagramHandler)
class _TurnDispatch:
    """
    A socket can hold allocations on several servers: DATA indications and
    ChannelData go to the allocation whose server sent them.  One per
    STUN endpoint (so per socket).
    """

    def __init__(self, endpoint):
        self.allocations = {}
        self._mux = None
        endpoint.setMethodHandler(stun.DATA, self._data)

    def _data(self, msg, source):
        alloc = self.allocations.get(source)
        if alloc is not None:
            alloc._dataIndication(msg, source)

    def datagramReceived(self, data, addr):
        alloc = self.allocations.get(addr)
        if alloc is not None:
            alloc.datagramReceived(data, addr)

    def registerOn(self, mux):
        if self._mux is None:
            mux.register("turn-channel", TURN_CHANNEL_BYTES, self)
            self._mux = mux

    def remove(self, alloc):
        if self.allocations.get(alloc.server) is alloc:
            del self.allocations[alloc.server]


def turnDispatch(endpoint):
    d = getattr(endpoint, "turnDispatch", None)
    if d is None:
        d = endpoint.turnDispatch = _TurnDispatch(endpoint)
    return d
