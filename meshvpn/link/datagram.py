"""The datagram link: authenticated, encrypted, lossy links to peers over the node's UDP socket.

Hole-punched peers (and peers reached through a TURN relay) talk over this
link: it must use the node's one UDP socket, because that is the socket
whose NAT mapping was punched.  One L{DatagramLinkEndpoint} per node owns
the first bytes 0x90-0x9D; it runs handshakes (L{datagram_crypto}), keeps
at most one L{DatagramLink} per peer node id, rekeys, sends keepalives and
closes dead links.  Datagrams may be lost or reordered (it carries mesh IP
packets, where loss is normal); a replayed, forged or malformed one is
dropped and counted, never raised.

A link reaches its peer through a I{path}: anything with
C{sendDatagram(data, addr)} -- the node's multiplexer for direct links, a
TURN allocation for relayed ones.  The link follows its peer to whatever
address the latest authenticated datagram came from (NAT rebinding).

Handshakes are hybrid (X25519 + ML-KEM-768, INIT_PQ/RESP_PQ) whenever this
node has ML-KEM (L{meshvpn.hybridkem.available}).  A peer that never
answers INIT_PQ (a node without ML-KEM ignores it) gets a classic INIT
after C{pqFallbackAfter} tries, with a warning; a peer that has completed
a hybrid handshake with us before never does (remembered for the life of
the endpoint), so an attacker who drops INIT_PQ cannot push it back to
classic.  Every link says in its status whether it is post-quantum.
"""

import hashlib
import hmac
import os
import struct
from collections import Counter, OrderedDict

from cryptography.exceptions import InvalidTag
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from meshvpn import hybridkem
from meshvpn.errors import LinkError
from meshvpn.hostport import formatHostPort
from meshvpn.identity import nodeIdFromPublicKey
from meshvpn.interfaces import IDatagramHandler, IDatagramLink, IDatagramLinkEndpoint
from meshvpn.link import datagram_wire as wire
from meshvpn.link.datagram_crypto import DatagramHandshakeError, HandshakeKeys, Session
from meshvpn.observer import OneShotObserver
from meshvpn.ratelimit import BucketTable, TokenBucket
from meshvpn.udpmux import LINK_FIRST_BYTES

# Channel byte, first byte of every DATA plaintext.
CH_KEEPALIVE = 0x00
CH_PACKET = 0x01  # mesh IP packets (the ILink-style payload)
CH_CONTROL = 0x02  # small control messages (signalling through a relay)
_CHANNELS = (CH_KEEPALIVE, CH_PACKET, CH_CONTROL)
_PACKET_PREFIX = bytes((CH_PACKET,))



class DatagramLinkSettings:
    """
    Timers and limits of datagram links (TLS links have their own,
    L{meshvpn.link.protocol.LinkSettings}); every field can be overridden by
    keyword for tests.
    """

    handshakeRetry = 0.5  # seconds between INIT/FINISH retransmissions
    handshakeTimeout = 10.0  # give up connecting after this long
    keepaliveInterval = 10.0  # send a keepalive when idle this long (NAT mappings)
    deadAfter = 40.0  # close a link that has been silent this long
    rekeyAfterMessages = 1 << 30  # far below the 2**64 counter space
    rekeyAfterTime = 120.0
    windowSize = 2048
    maxLinks = 4096
    maxPendingHandshakes = 512
    pendingLifetime = 10.0
    initRatePerSource = 10.0  # INITs per second per source IP (burst = 2x)
    maxInitSources = 4096  # source IPs with an INIT bucket (least recent forgotten)
    initRateGlobal = 500.0  # INITs per second in total (burst = 2x)
    cookieLifetime = 120.0  # cookie secret rotation (a cookie stays valid up to twice this)
    postQuantum = True  # hybrid handshakes when ML-KEM is available here
    pqFallbackAfter = 4  # unanswered INIT_PQs before a classic INIT (peers never seen hybrid)
    maxPqPeers = 4096  # peers remembered as hybrid-capable
    maxPacket = 65400

    def __init__(self, **overrides):
        for k, v in overrides.items():
            if not hasattr(DatagramLinkSettings, k):
                raise TypeError(f"unknown link setting {k!r}")
            setattr(self, k, v)


class _PendingHandshake:
    """An unfinished handshake, either role."""

    __slots__ = ("keys", "initiator", "localIndex", "addr", "path", "message", "expectedNodeId", "deferred",
                 "timer", "started", "link", "peerIndex", "initBytes", "cookies", "sent")

    def __init__(self, keys, initiator, localIndex, addr, path, started):
        self.keys, self.initiator, self.localIndex = keys, initiator, localIndex
        self.addr, self.path, self.started = addr, path, started
        self.message = self.expectedNodeId = self.deferred = self.timer = self.link = None
        self.peerIndex = self.initBytes = None
        self.cookies = self.sent = 0


@implementer(IDatagramLink)
class DatagramLink:
    """
    One authenticated peer.  Created by the endpoint only.  C{send*} never
    raise: a closed link drops silently (the datagram contract).
    """

    def __init__(self, endpoint, peerIdentityKey, addr, path):
        self._endpoint = endpoint
        self.peerIdentityKey = peerIdentityKey
        self.peerId = nodeIdFromPublicKey(peerIdentityKey)
        self.peerAddress = addr
        self.path = path
        self.current = None  # Session used for sending; None before the handshake and once closed
        self.previous = None  # kept for receiving during a rekey
        self._closed = OneShotObserver()  # fires with the reason
        self._receivers = {}
        self.lastSent = self.lastReceived = endpoint.reactor.seconds()
        self.rekeying = None
        self._timer = None
        self.stats = Counter()
        self.postQuantum = False  # whether the current session's keys came from the hybrid handshake

    # public API
    def sendPacket(self, data):
        """Send one mesh packet (C{bytes}); lossy."""
        self.send(CH_PACKET, data)

    def sendPackets(self, packets):
        """Send a burst of mesh packets; the path gets them as one list (one C{sendmsg} on the node's socket)."""
        session = self.current
        if session is None:
            self.stats["tx_dropped"] += len(packets)
            return
        maxPacket = self._endpoint.settings.maxPacket
        remoteIndex, seal, header = session.remoteIndex, session.seal, wire.encodeDataHeader
        datagrams = []
        for data in packets:
            if len(data) > maxPacket:
                self.stats["tx_dropped"] += 1
                continue
            h = header(remoteIndex, session.sendCounter)
            datagrams.append(h + seal(h, _PACKET_PREFIX + data))
        if not datagrams:
            return
        sendMany = getattr(self.path, "sendDatagrams", None)
        if sendMany is not None:
            sendMany(datagrams, self.peerAddress)
        else:  # a TURN allocation: one ChannelData each
            for d in datagrams:
                self.path.sendDatagram(d, self.peerAddress)
        self.lastSent = self._endpoint.reactor.seconds()
        self.stats["tx"] += len(datagrams)
        self._endpoint._maybeRekey(self, session)

    def setPacketReceiver(self, receiver):
        """C{receiver(data)} gets every mesh packet from the peer."""
        self._receivers[CH_PACKET] = receiver

    def setControlReceiver(self, receiver):
        self._receivers[CH_CONTROL] = receiver

    def sendControl(self, data):
        self.send(CH_CONTROL, data)

    @property
    def closed(self):
        return self._closed.fired

    def send(self, channel, data):
        session = self.current
        if session is None or len(data) > self._endpoint.settings.maxPacket:
            self.stats["tx_dropped"] += 1
            return
        header = wire.encodeDataHeader(session.remoteIndex, session.sendCounter)
        self.path.sendDatagram(header + session.seal(header, bytes((channel,)) + data), self.peerAddress)
        self.lastSent = self._endpoint.reactor.seconds()
        self.stats["tx"] += 1
        self._endpoint._maybeRekey(self, session)

    def close(self, reason="closed"):
        if self._closed.fired:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._endpoint._linkClosed(self)
        # Without a session, send() drops: the one check on the per-packet path.
        self.current = self.previous = None
        self._closed.fire(reason)

    def whenClosed(self):
        return self._closed.whenFired()

    def status(self):
        return {
            "peer": self.peerId.hex(),
            "address": formatHostPort(*self.peerAddress),
            "relayed": self.path is not self._endpoint.defaultPath,
            "post_quantum": self.postQuantum,
            "tx": self.stats["tx"],
            "rx": self.stats["rx"],
        }

    # used by the endpoint
    def _deliver(self, plaintext):
        channel = plaintext[0]
        self.stats["rx"] += 1
        if channel == CH_KEEPALIVE:
            return
        receiver = self._receivers.get(channel)
        if receiver is not None:
            receiver(plaintext[1:])


@implementer(IDatagramHandler, IDatagramLinkEndpoint)
class DatagramLinkEndpoint:
    """
    All datagram links of one node.  Register it on the node's multiplexer
    with L{register}; open links with L{connect}; learn about links peers
    open with L{setLinkAcceptor}.
    """

    log = Logger()

    def __init__(self, reactor, identity, defaultPath, settings=None, randomIndex=None):
        self.reactor = reactor
        self.identity = identity
        self.defaultPath = defaultPath
        self.settings = settings or DatagramLinkSettings()
        self.counters = Counter()
        self._links = {}  # peer node id -> DatagramLink
        self._sessions = {}  # local index -> (Session, DatagramLink)
        self._pending = OrderedDict()  # local index -> _PendingHandshake
        s = self.settings
        self._perSource = BucketTable(reactor, s.initRatePerSource, 2 * s.initRatePerSource, s.maxInitSources)
        self._global = TokenBucket(reactor, s.initRateGlobal, 2 * s.initRateGlobal)
        self._acceptor = None
        self._respIndex = {}  # (addr, initiator's index) -> our pending index
        self._cookieSecrets = (os.urandom(32), os.urandom(32))  # current, previous
        self._cookieRotated = reactor.seconds()
        self._connecting = {}  # peer node id -> Deferred list
        self._randomIndex = randomIndex or (lambda: struct.unpack("!I", os.urandom(4))[0])
        self._pqPeers = OrderedDict()  # node ids that completed a hybrid handshake with us

    # -- setup
    def register(self, mux):
        mux.register("link", LINK_FIRST_BYTES, self)

    def setLinkAcceptor(self, acceptor):
        """
        C{acceptor(link)} is called for each new inbound link, after the
        peer authenticated; it returns C{False} to refuse (the link is closed).
        """
        self._acceptor = acceptor

    def links(self):
        return list(self._links.values())

    def linkTo(self, peerId):
        return self._links.get(peerId)

    def status(self):
        return {"links": [l.status() for l in self._links.values()], "counters": dict(self.counters)}

    # -- opening links
    def connect(self, peerNodeId, addr, path=None):
        """
        Open (or reuse) a link to the node C{peerNodeId} at C{addr}.

        @return: a Deferred firing with the L{DatagramLink} once the peer
            proved its identity; fails with L{LinkError} after
            C{handshakeTimeout}.
        """
        link = self._links.get(peerNodeId)
        if link is not None and not link.closed and link.current is not None:
            return defer.succeed(link)
        d = defer.Deferred()
        waiting = self._connecting.get(peerNodeId)
        if waiting is not None:
            waiting.append(d)
            return d
        self._connecting[peerNodeId] = [d]
        self._startHandshake(peerNodeId, addr, path or self.defaultPath, link=None)
        return d

    def _newIndex(self):
        while True:
            idx = self._randomIndex()
            if idx not in self._sessions and idx not in self._pending:
                return idx

    def _postQuantum(self):
        return self.settings.postQuantum and hybridkem.available()

    def _startHandshake(self, peerNodeId, addr, path, link):
        keys = HandshakeKeys(self.identity, postQuantum=self._postQuantum())
        p = _PendingHandshake(keys, True, self._newIndex(), addr, path, self.reactor.seconds())
        p.expectedNodeId = peerNodeId
        p.link = link
        p.message = wire.encodeInit(p.localIndex, keys.ephemeral.public, ek=keys.ek)
        keys.initMessage(p.message)
        self._addPending(p)
        self._transmit(p)
        return p

    def _transmit(self, p):
        now = self.reactor.seconds()
        if now - p.started >= self.settings.handshakeTimeout:
            self._dropPending(p.localIndex)
            self.counters["handshake_timeout"] += 1
            if p.link is not None:
                p.link.rekeying = None
            else:
                self._failConnect(p.expectedNodeId, LinkError("no answer to the link handshake"))
            return
        if p.keys.postQuantum and p.sent >= self.settings.pqFallbackAfter and p.expectedNodeId not in self._pqPeers:
            self.log.warn("datagram link to {peer}: no answer to the post-quantum handshake after {n} tries; trying the "
                     "classic one (that link will not be protected against later quantum decryption)",
                     peer=p.expectedNodeId.hex()[:16], n=p.sent)
            self.counters["pq_fallback"] += 1
            p.keys = HandshakeKeys(self.identity)
            p.message = wire.encodeInit(p.localIndex, p.keys.ephemeral.public)
            p.keys.initMessage(p.message)
        p.sent += 1
        p.path.sendDatagram(p.message, p.addr)
        p.timer = self.reactor.callLater(self.settings.handshakeRetry, self._transmit, p)

    def _failConnect(self, peerId, error):
        for d in self._connecting.pop(peerId, []):
            d.errback(error)

    def _addPending(self, p):
        while len(self._pending) >= self.settings.maxPendingHandshakes:
            _, old = self._pending.popitem(last=False)
            self._cancelPendingTimer(old)
            self.counters["handshake_evicted"] += 1
            if old.initiator and old.link is None:
                self._failConnect(old.expectedNodeId, LinkError("handshake table full"))
        self._pending[p.localIndex] = p

    def _cancelPendingTimer(self, p):
        if p.timer is not None and p.timer.active():
            p.timer.cancel()

    def _dropPending(self, index):
        p = self._pending.pop(index, None)
        if p is not None:
            self._cancelPendingTimer(p)
        return p

    # -- receiving
    def datagramReceived(self, data, addr, path=None):
        """Handle one datagram from C{addr} (arriving over C{path}, default direct)."""
        try:
            msg = wire.parse(data)
        except wire.LinkParseError:
            self.counters["garbage"] += 1
            return
        path = path or self.defaultPath
        kind = msg[0]
        if kind == wire.DATA:
            self._receiveData(msg, addr, path)
        elif kind == wire.INIT:
            self._receiveInit(data, msg, addr, path)
        elif kind == wire.RESP:
            self._receiveResp(msg, addr, path)
        elif kind == wire.FINISH:
            self._receiveFinish(msg, addr, path)
        else:
            self._receiveCookie(msg, addr, path)

    def _receiveData(self, msg, addr, path):
        _, index, counter, header, sealed = msg
        entry = self._sessions.get(index)
        if entry is None:
            self.counters["unknown_index"] += 1
            return
        session, link = entry
        try:
            plaintext = session.open(counter, header, sealed)
        except InvalidTag:
            self.counters["forged"] += 1
            return
        if plaintext is None:
            self.counters["replayed"] += 1
            return
        if not plaintext or plaintext[0] not in _CHANNELS:
            self.counters["garbage"] += 1
            return
        self.counters["rx"] += 1
        link.lastReceived = self.reactor.seconds()
        if link.peerAddress != addr or link.path is not path:
            # Authenticated, so the peer really is there now (NAT rebinding).
            link.peerAddress, link.path = addr, path
        if not session.confirmed:
            session.confirmed = True
            self._promote(link, session)
        link._deliver(plaintext)

    # -- load: rate limits and cookies
    def _allowInit(self, host, proven):
        """Per-source bucket always; the global one only for INITs without a valid cookie."""
        return self._perSource.tryConsume(host) and (proven or self._global.tryConsume())

    def _underLoad(self):
        return self._global.available() < self._global.burst / 2

    def _cookieFor(self, secret, addr, peerIndex):
        material = f"{addr[0]}|{addr[1]}|{peerIndex}".encode()
        return hmac.new(secret, material, hashlib.sha256).digest()[: wire.COOKIE_LEN]

    def _cookie(self, addr, peerIndex):
        now = self.reactor.seconds()
        elapsed, lifetime = now - self._cookieRotated, self.settings.cookieLifetime
        if elapsed >= lifetime:
            # Rotated lazily: after two idle periods the old secret is gone too.
            previous = self._cookieSecrets[0] if elapsed < 2 * lifetime else os.urandom(32)
            self._cookieSecrets = (os.urandom(32), previous)
            self._cookieRotated = now
        return self._cookieFor(self._cookieSecrets[0], addr, peerIndex)

    def _cookieValid(self, addr, peerIndex, cookie):
        self._cookie(addr, peerIndex)  # rotates if due
        return any(hmac.compare_digest(cookie, self._cookieFor(s, addr, peerIndex)) for s in self._cookieSecrets)

    def _receiveCookie(self, msg, addr, path):
        """A responder under load wants proof we receive at our address: resend INIT with its cookie."""
        _, index, cookie = msg
        p = self._pending.get(index)
        if p is None or not p.initiator or p.peerIndex is not None or addr != p.addr or p.cookies >= 3:
            self.counters["unknown_index"] += 1
            return
        p.cookies += 1
        self.counters["cookie_received"] += 1
        p.message = wire.encodeInit(p.localIndex, p.keys.ephemeral.public, cookie, ek=p.keys.ek)
        p.keys = _restart(p)  # the transcript starts with the INIT actually sent
        self._cancelPendingTimer(p)
        self._transmit(p)

    def _receiveInit(self, data, msg, addr, path):
        _, peerIndex, peerEphemeral, cookie, ek = msg
        if ek is not None and not self._postQuantum():
            # Not answered, rather than answered classic (which the initiator
            # refuses as a downgrade): it falls back to a classic INIT.
            self.counters["pq_unsupported"] += 1
            return
        # A retransmitted INIT (our RESP was lost) gets the same RESP again.
        known = self._pending.get(self._respIndex.get((addr, peerIndex)))
        if known is not None and not known.initiator and known.initBytes == data:
            known.path.sendDatagram(known.message, addr)
            self.counters["resp_resent"] += 1
            return
        proven = cookie != wire.NO_COOKIE and self._cookieValid(addr, peerIndex, cookie)
        if not proven and self._underLoad():
            # No DH, no signature: a 21-byte MAC of the claimed address.  A
            # spoofer never sees it; a real initiator resends INIT with it.
            self.counters["cookie_sent"] += 1
            path.sendDatagram(wire.encodeCookie(peerIndex, self._cookie(addr, peerIndex)), addr)
            return
        if not self._allowInit(addr[0], proven):
            self.counters["handshake_ratelimited"] += 1
            return
        keys = HandshakeKeys(self.identity)
        p = _PendingHandshake(keys, False, self._newIndex(), addr, path, self.reactor.seconds())
        p.peerIndex, p.initBytes = peerIndex, data
        try:
            ct = keys.encapsulate(ek) if ek is not None else None
            p.message = keys.respMessage(data, peerEphemeral,
                                         wire.encodeRespHeader(p.localIndex, peerIndex, keys.ephemeral.public, ct))
        except DatagramHandshakeError:
            self.counters["handshake_failed"] += 1
            return
        self._addPending(p)
        if len(self._respIndex) > 2 * self.settings.maxPendingHandshakes:
            self._respIndex = {k: v for k, v in self._respIndex.items() if v in self._pending}
        self._respIndex[(addr, peerIndex)] = p.localIndex
        p.timer = self.reactor.callLater(self.settings.pendingLifetime, self._dropPending, p.localIndex)
        path.sendDatagram(p.message, addr)

    def _receiveResp(self, msg, addr, path):
        _, peerIndex, index, peerEphemeral, header, sealed, ct = msg
        p = self._pending.get(index)
        if p is None or not p.initiator or p.peerIndex is not None:
            self.counters["unknown_index"] += 1
            return
        try:
            peerKey = p.keys.readResp(header, sealed, peerEphemeral, p.expectedNodeId, ct)
        except DatagramHandshakeError:
            # Not the peer we asked for (or forged): keep waiting for the real one.
            self.counters["handshake_failed"] += 1
            p.keys = _restart(p)
            return
        self._cancelPendingTimer(p)
        p.peerIndex = peerIndex
        finish = p.keys.finishMessage(wire.encodeFinishHeader(peerIndex))
        postQuantum = p.keys.postQuantum
        sendKey, recvKey = p.keys.transportKeys()
        self._dropPending(index)
        session = Session(index, peerIndex, sendKey, recvKey, self.reactor.seconds(), True, self.settings.windowSize)
        session.postQuantum = postQuantum
        if postQuantum:
            self._rememberPq(nodeIdFromPublicKey(peerKey))
        link = p.link
        if link is None or link.closed:
            link = self._links.get(p.expectedNodeId)
            if link is None or link.closed:
                link = self._newLink(peerKey, addr, path)
                if link is None:
                    self._failConnect(p.expectedNodeId, LinkError("too many links"))
                    return
        link.peerAddress, link.path = addr, path
        self._sessions[index] = (session, link)
        if link.current is None:
            self._promote(link, session)
        # else: a rekey.  Keep sending with the old session until the
        # responder's first DATA proves it has the new one (_receiveData
        # promotes it then), so a lost FINISH costs no packets.
        self.counters["handshake_completed"] += 1
        # FINISH is resent until the responder's first DATA confirms it.
        self._sendFinish(link, session, finish, self.reactor.seconds())
        for d in self._connecting.pop(link.peerId, []):
            d.callback(link)

    def _sendFinish(self, link, session, finish, started):
        if link.closed or session.confirmed or self._sessions.get(session.localIndex, (None,))[0] is not session:
            return
        if self.reactor.seconds() - started >= self.settings.handshakeTimeout:
            self.counters["handshake_timeout"] += 1
            if link.current is not session:
                # An unconfirmed rekey: forget it, so a later one can start.
                self._sessions.pop(session.localIndex, None)
                link.rekeying = None
            return
        link.path.sendDatagram(finish, link.peerAddress)
        self.reactor.callLater(self.settings.handshakeRetry, self._sendFinish, link, session, finish, started)

    def _receiveFinish(self, msg, addr, path):
        _, index, header, sealed = msg
        entry = self._sessions.get(index)
        if entry is not None:
            # A resent FINISH: our confirming keepalive was lost; send another.
            entry[1].send(CH_KEEPALIVE, b"")
            return
        p = self._pending.get(index)
        if p is None or p.initiator:
            self.counters["unknown_index"] += 1
            return
        try:
            peerKey = p.keys.readFinish(header, sealed)
        except DatagramHandshakeError:
            self.counters["handshake_failed"] += 1
            return
        self._dropPending(index)
        postQuantum = p.keys.postQuantum
        i2r, r2i = p.keys.transportKeys()
        session = Session(index, p.peerIndex, r2i, i2r, self.reactor.seconds(), False, self.settings.windowSize)
        session.postQuantum = postQuantum
        peerId = nodeIdFromPublicKey(peerKey)
        link = self._links.get(peerId)
        isNew = link is None or link.closed
        if isNew:
            link = self._newLink(peerKey, addr, path)
            if link is None:
                return
        link.peerAddress, link.path = addr, path
        link.lastReceived = self.reactor.seconds()
        self._sessions[index] = (session, link)
        self._promote(link, session)
        self.counters["handshake_completed"] += 1
        link.send(CH_KEEPALIVE, b"")  # confirms the session to the initiator
        if isNew:
            accepted = self._acceptor(link) if self._acceptor is not None else True
            if accepted is False:
                link.close("refused")
                return
        for d in self._connecting.pop(peerId, []):
            d.callback(link)

    # -- link bookkeeping
    def _newLink(self, peerKey, addr, path):
        if len(self._links) >= self.settings.maxLinks:
            self.counters["links_refused_full"] += 1
            return None
        link = DatagramLink(self, peerKey, addr, path)
        self._links[link.peerId] = link
        self._scheduleTick(link)
        return link

    def _promote(self, link, session):
        """Make C{session} the one C{link} sends with; keep one older for stragglers."""
        if link.current is session:
            return
        if link.current is not None and link.current.created > session.created:
            return
        old = link.previous
        if old is not None:
            self._sessions.pop(old.localIndex, None)
        link.previous, link.current = link.current, session
        link.postQuantum = session.postQuantum
        link.rekeying = None

    def _rememberPq(self, peerId):
        self._pqPeers[peerId] = True
        self._pqPeers.move_to_end(peerId)
        while len(self._pqPeers) > self.settings.maxPqPeers:
            self._pqPeers.popitem(last=False)

    def _maybeRekey(self, link, session):
        s = self.settings
        if link.rekeying is not None or not session.confirmed:
            return
        now = self.reactor.seconds()
        if session.sendCounter >= s.rekeyAfterMessages or now - session.created >= s.rekeyAfterTime:
            self.counters["rekeys"] += 1
            link.rekeying = self._startHandshake(link.peerId, link.peerAddress, link.path, link)

    def _scheduleTick(self, link):
        link._timer = self.reactor.callLater(self.settings.keepaliveInterval / 2, self._tick, link)

    def _tick(self, link):
        if link.closed:
            return
        now = self.reactor.seconds()
        if now - link.lastReceived >= self.settings.deadAfter:
            self.counters["links_timed_out"] += 1
            link.close("timeout")
            return
        if now - link.lastSent >= self.settings.keepaliveInterval:
            link.send(CH_KEEPALIVE, b"")
        elif link.current is not None:
            self._maybeRekey(link, link.current)
        self._scheduleTick(link)

    def _linkClosed(self, link):
        if self._links.get(link.peerId) is link:
            del self._links[link.peerId]
        for s in (link.current, link.previous):
            if s is not None:
                self._sessions.pop(s.localIndex, None)
        if link.rekeying is not None:
            self._dropPending(link.rekeying.localIndex)

    def stop(self):
        """Close every link and forget every handshake (service shutdown)."""
        for p in list(self._pending.values()):
            self._cancelPendingTimer(p)
        self._pending.clear()
        for peerId in list(self._connecting):
            self._failConnect(peerId, LinkError("link endpoint stopped"))
        for link in list(self._links.values()):
            link.close("stopped")


def _restart(p):
    """Fresh transcript state for an initiator: its RESP turned out bad, or its INIT changed (cookie)."""
    keys = p.keys
    keys._h = None
    keys.initMessage(p.message)
    return keys
