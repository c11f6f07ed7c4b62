"""Getting a datagram link to a peer anywhere: punch directly if we can, relay through TURN if not.

The offerer (the side that wants the link) and the answerer each run a
L{PeerConnector}; they talk through an L{ISignallingChannel}:

1. offerer -> answerer  OFFER(punch id, secret, candidates)   (resent until answered)
2. answerer -> offerer  ANSWER(punch id, candidates); both start punching at once,
   each also probing the address the relay saw the other at.
3. the offerer opens the link to the address that answered its probes.
4. if punching fails before its deadline, the offerer allocates on the
   relay's TURN server, permits the answerer's public IP, and sends
   RELAYED(punch id, relayed address); the answerer opens the link to that
   address from its own socket, which any NAT allows (it is outgoing), and
   the offerer's link endpoint receives it through the allocation.

Either way the result is an authenticated L{DatagramLink}; the offerer also
learns which path (C{"direct"} or C{"relay"}) it took.

Anyone registered with the same relay can send us a payload, so only
signals from the peers we were configured with (C{peers}, L{allowPeer})
are acted on: an OFFER or RELAYED from a stranger is counted and dropped,
never answered (an ANSWER carries our LAN and public addresses) and never
probed or connected to (its candidates are addresses the stranger chose:
we would be sending probes and handshakes wherever it likes).  An ANSWER
counts only from the node we sent that offer to.  Candidates that cannot
be a peer (unspecified, multicast, broadcast, port 0) are dropped even from
configured peers.
"""

import ipaddress
import os

from twisted.internet import defer
from twisted.logger import Logger

from meshvpn.errors import LinkError, PunchFailed, RelayError
from meshvpn.nat import signal_wire as sw
from meshvpn.nat.punch import PunchSession
from meshvpn.udpmux import LINK_FIRST_BYTES

_LINK_BYTES = frozenset(LINK_FIRST_BYTES)
MAX_SESSIONS = 64


class PeerConnector:
    """
    @param localCandidates: C{callable() -> list of addresses} (host
        candidates; the relay-observed address is added automatically).
    @param allocateRelay: C{callable() -> Deferred(TurnAllocation)} or None.
    @param peers: node ids (bytes) whose OFFER and RELAYED we act on; every
        other node's are dropped (add more with L{allowPeer}).
    """

    log = Logger()

    def __init__(self, reactor, endpoint, puncher, signalling, localCandidates, allocateRelay=None, peers=(),
                 offerRetry=0.5, offerTries=6, linkTimeout=8.0):
        self.reactor = reactor
        self.endpoint = endpoint
        self.puncher = puncher
        self.signalling = signalling
        self.localCandidates = localCandidates
        self.allocateRelay = allocateRelay
        self.offerRetry, self.offerTries = offerRetry, offerTries
        self.linkTimeout = linkTimeout
        self._peers = set(peers)
        self._offers = {}  # punch id -> (peer id, Deferred for the ANSWER) (offerer side)
        self._answered = {}  # punch id -> (peerId, answer payload) (answerer side)
        self._linkWaiters = {}  # peer id -> [Deferred]
        self.allocations = []  # every allocation made (at most one live)
        self._alloc = self._allocating = None
        self.linkObservers = []  # callables told about every link this connector opens or accepts
        self.counters = {"malformed": 0, "offers": 0, "answers": 0, "relayed": 0, "stranger": 0, "bad_candidate": 0}
        signalling.setSignalReceiver(self._signal)
        endpoint.setLinkAcceptor(self._inbound)

    def allowPeer(self, peerId):
        """Act on OFFER and RELAYED from C{peerId} too."""
        self._peers.add(peerId)

    def _usable(self, candidates):
        """The candidates that can be a peer's address at all."""
        out = []
        for host, port in candidates:
            try:
                ip = ipaddress.ip_address(host)
            except ValueError:
                ip = None
            if ip is None or port == 0 or ip.is_unspecified or ip.is_multicast or host == "255.255.255.255":
                self.counters["bad_candidate"] += 1
                continue
            out.append((host, port))
        return out

    def _candidates(self):
        out = []
        for c in list(self.localCandidates()) + [self.signalling.observedAddress]:
            if c is not None and c not in out:
                out.append(c)
        return out

    # -- link arrival
    def _inbound(self, link):
        self._observe(link)
        for d in self._linkWaiters.pop(link.peerId, []):
            d.callback(link)
        return True

    def _observe(self, link):
        for observer in self.linkObservers:
            observer(link)

    def _waitLink(self, peerId, timeout):
        existing = self.endpoint.linkTo(peerId)
        if existing is not None and existing.current is not None:
            return defer.succeed(existing)
        d = defer.Deferred()
        self._linkWaiters.setdefault(peerId, []).append(d)

        def expire():
            if not d.called:
                self._linkWaiters.get(peerId, []).remove(d)
                d.errback(LinkError("peer never opened the relayed link"))

        t = self.reactor.callLater(timeout, expire)
        return d.addBoth(lambda r: (t.active() and t.cancel(), r)[1])

    def _within(self, d, timeout):
        """A Deferred with C{d}'s result, or C{None} after C{timeout}; C{d} itself is untouched."""
        out = defer.Deferred()

        def fire(result):
            if not out.called:
                out.callback(result)
            return result

        d.addCallback(fire)
        t = self.reactor.callLater(timeout, fire, None)
        return out.addBoth(lambda r: (t.cancel() if t.active() else None, r)[1])

    # -- offerer
    def connect(self, peerId):
        """
        @return: a Deferred firing with C{(link, path)}, path C{"direct"} or
            C{"relay"}; fails with L{LinkError} if neither worked.
        """
        return defer.Deferred.fromCoroutine(self._connect(peerId))

    async def _connect(self, peerId):
        punchId, secret = os.urandom(8), os.urandom(16)
        session = PunchSession(punchId, secret, 0)
        offer = bytes((sw.OFFER,)) + punchId + secret + sw.encodeCandidates(self._candidates())
        answer = defer.Deferred()
        self._offers[punchId] = (peerId, answer)
        try:
            remote = None
            for _ in range(self.offerTries):
                self.counters["offers"] += 1
                self.signalling.sendSignal(peerId, offer)
                got = await self._within(answer, self.offerRetry)
                if got is not None:
                    remote = got
                    break
            if remote is None:
                raise LinkError("peer did not answer the offer through the relay")
            candidates, observed = remote
            try:
                addr = await self.puncher.punch(peerId, self._candidates(), candidates + [observed], session)
                link = await self.endpoint.connect(peerId, addr)
                self._observe(link)
                return link, "direct"
            except (PunchFailed, LinkError) as e:
                self.log.info("punch to {peer} failed ({why}); relaying", peer=peerId.hex()[:12], why=e)
            return await self._relay(peerId, punchId, observed), "relay"
        finally:
            self._offers.pop(punchId, None)

    async def _relay(self, peerId, punchId, peerObserved):
        if self.allocateRelay is None:
            raise LinkError("cannot punch and no relay configured")
        try:
            alloc = await self._allocation()
            await alloc.createPermission(peerObserved)
        except RelayError as e:
            raise LinkError(f"relay allocation failed: {e}") from None
        waiting = self._waitLink(peerId, self.linkTimeout)
        msg = bytes((sw.RELAYED,)) + punchId + sw.encodeAddress(alloc.relayedAddress)

        def resend(n):
            if not waiting.called and n > 0:
                self.signalling.sendSignal(peerId, msg)
                self.reactor.callLater(self.offerRetry, resend, n - 1)

        resend(self.offerTries)
        link = await waiting
        self.counters["relayed"] += 1
        # The answerer's exact address is known now: a channel makes each datagram 32 bytes lighter.
        try:
            await alloc.channelBind(link.peerAddress)
        except RelayError:
            pass
        return link

    async def _allocation(self):
        """One allocation serves every relayed peer (a permission each); made on first need."""
        if self._alloc is None or self._alloc.released:
            if self._allocating is None:
                self._allocating = defer.Deferred.fromCoroutine(self._newAllocation())
            waiting = defer.Deferred()
            self._allocating.addBoth(lambda r: (waiting.callback(r), r)[1])
            result = await waiting
            if isinstance(result, Exception):
                raise result
        return self._alloc

    async def _newAllocation(self):
        try:
            alloc = await self.allocateRelay()
        except RelayError as e:
            self._allocating = None
            return e
        alloc.setReceiver(lambda data, addr: self._fromRelay(alloc, data, addr))
        self._alloc, self._allocating = alloc, None
        self.allocations.append(alloc)
        return alloc

    def _fromRelay(self, alloc, data, addr):
        if data and data[0] in _LINK_BYTES:
            self.endpoint.datagramReceived(data, addr, alloc)

    # -- both sides
    def _signal(self, peerId, payload, observed):
        try:
            msg = sw.parsePeerPayload(payload)
        except sw.SignalParseError:
            self.counters["malformed"] += 1
            return
        kind, punchId = msg[0], msg[1]
        if kind == sw.ANSWER:
            peer, d = self._offers.get(punchId, (None, None))
            if peer != peerId:
                self.counters["stranger"] += 1
                return
            if not d.called and observed is not None:
                d.callback((self._usable(msg[2]), observed))
            return
        if peerId not in self._peers:
            # Not a configured peer: no answer (it would tell our addresses), no probes, no handshakes.
            self.counters["stranger"] += 1
            return
        if kind == sw.OFFER:
            self._answer(peerId, punchId, msg[2], self._usable(msg[3]), observed)
        elif kind == sw.RELAYED:
            known = self._answered.get(punchId)
            if known is None or known[0] != peerId or not self._usable([msg[2]]):
                self.counters["malformed"] += 1
                return
            self.puncher.cancel(punchId)
            d = self.endpoint.connect(peerId, msg[2])
            d.addCallback(self._observe)
            d.addErrback(lambda f: self.log.info("relayed link failed: {e}", e=f.getErrorMessage()))

    def _answer(self, peerId, punchId, secret, candidates, observed):
        known = self._answered.get(punchId)
        if known is not None:
            if known[0] == peerId:
                self.signalling.sendSignal(peerId, known[1])  # our ANSWER was lost
            return
        if len(self._answered) >= MAX_SESSIONS:
            self._answered.pop(next(iter(self._answered)))
        answer = bytes((sw.ANSWER,)) + punchId + sw.encodeCandidates(self._candidates())
        self._answered[punchId] = (peerId, answer)
        self.counters["answers"] += 1
        self.signalling.sendSignal(peerId, answer)
        remote = list(candidates) + ([observed] if observed is not None else [])
        d = self.puncher.punch(peerId, self._candidates(), remote, PunchSession(punchId, secret, 1))
        # The offerer opens the link; our punch only has to open our NAT.
        d.addErrback(lambda f: f.trap(PunchFailed))
