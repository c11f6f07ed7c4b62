"""A UDP socket for a host whose UDP is blocked: a TURN allocation reached over TCP (or TLS).

The host connects to the relay's TURN stream port, proves its node
identity (L{meshvpn.nat.turn_stream}), receives TURN credentials bound to
it, and allocates a relayed UDP address with the ordinary TURN client
(L{meshvpn.nat.turn_client.TurnAllocation}: it only ever sees a STUN
endpoint and a C{send}, here both on the stream).

L{RelayedSocket} then stands where the node's UDP port would: whatever the
multiplexer writes to an address goes out of the relayed address, and
what peers send there comes back to the multiplexer.  Datagram links, hole
punching and signalling run over it unchanged.  To a peer the host looks
like one behind an address-restricted cone NAT at the relay: the mapping
(the relayed address) is the same for every destination, and a datagram
is let in only from an IP the host has written to (writing to a new IP
installs its TURN permission first; what is written meanwhile waits, a few
datagrams per IP at most).
"""

import enum

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import connectProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from meshvpn.errors import RelayError
from meshvpn.identity import nodeIdFromPublicKey, verifySignature
from meshvpn.nat import turn_stream as ts
from meshvpn.nat.endpoint import StunEndpoint
from meshvpn.nat.turn_client import TurnAllocation, turnDispatch


class _State(enum.Enum):
    HELLO = "hello"  # waiting for the relay's challenge
    CREDS = "creds"  # proof sent, waiting for credentials
    TURN = "turn"
    CLOSED = "closed"


class TurnStreamClientProtocol(Protocol):
    """
    The client end of a TURN stream.  C{ready} fires with C{(lifetime,
    username, password)} once the relay accepted our proof; C{closed}
    fires when the stream ends.  C{stun} is the STUN endpoint a
    L{TurnAllocation} uses, with L{sendFrame} as its C{send}.

    @param server: the address the allocation calls its server (any
        hashable; the relay's stream address).
    @param relayId: the relay's node id we expect (pinned), or C{None} to
        take whichever relay answers (its proof is still checked).
    @param binding: C{binding(transport)} -> this TLS session's exporter
        value (L{turn_stream.tlsBinding}; tests give their own).
    @ivar relayNodeId: the node id the relay proved.
    """

    log = Logger()

    def __init__(self, reactor, identity, server, relayId=None, binding=ts.tlsBinding):
        self.reactor, self.identity, self.server = reactor, identity, server
        self.relayId, self.binding, self.relayNodeId = relayId, binding, None
        self.state = _State.HELLO
        self.ready, self.closed = defer.Deferred(), defer.Deferred()
        self.stun = StunEndpoint(reactor, lambda data, addr: self.sendFrame(data, addr))
        self._buf = b""
        self._deframer = ts.Deframer()
        self.counters = {"rx_frames": 0, "tx_frames": 0}

    def sendFrame(self, data, addr=None):
        if self.state is not _State.TURN:
            return
        if data[:1] and data[0] in ts.CHANNEL_FIRST:
            data = ts.padChannelData(data)
        self.counters["tx_frames"] += 1
        self.transport.write(data)

    def _fail(self, why):
        self.state = _State.CLOSED
        if not self.ready.called:
            self.ready.errback(RelayError(f"TURN stream: {why}"))
        self.transport.abortConnection()

    def dataReceived(self, data):
        try:
            self._received(data)
        except ts.StreamFrameError as e:
            self._fail(str(e))

    def _received(self, data):
        if self.state is _State.HELLO:
            self._buf += data
            if len(self._buf) < ts.HELLO_LEN:
                return
            challenge, relayKey, relaySignature = ts.parseHello(self._buf[: ts.HELLO_LEN])
            data, self._buf = self._buf[ts.HELLO_LEN :], b""
            binding = self.binding(self.transport)
            relayNodeId = nodeIdFromPublicKey(relayKey)
            if self.relayId is not None and relayNodeId != self.relayId:
                raise ts.StreamFrameError(f"the relay is node {relayNodeId.hex()[:16]}..., not the "
                                          f"{self.relayId.hex()[:16]}... we asked for")
            if not verifySignature(relayKey, ts.relayMessage(binding, challenge), relaySignature):
                raise ts.StreamFrameError("the relay's proof does not match this TLS session (a man in the middle?)")
            self.relayNodeId = relayNodeId
            signature = self.identity.sign(ts.proofMessage(binding, challenge, relayNodeId))
            self.transport.write(ts.encodeProof(self.identity.identityPublicKey, signature))
            self.state = _State.CREDS
        if self.state is _State.CREDS:
            self._buf += data
            if len(self._buf) < 2 or len(self._buf) < ts.credsFrameLength(self._buf):
                return
            n = ts.credsFrameLength(self._buf)
            creds = ts.parseCredsFrame(self._buf[:n])
            data, self._buf = self._buf[n:], b""
            self.state = _State.TURN
            self.ready.callback(creds)
        if self.state is _State.TURN and data:
            for frame in self._deframer.feed(data):
                self.counters["rx_frames"] += 1
                if frame[0] in ts.CHANNEL_FIRST:
                    turnDispatch(self.stun).datagramReceived(frame, self.server)
                else:
                    self.stun.datagramReceived(frame, self.server)

    def connectionLost(self, reason=None):
        self.state = _State.CLOSED
        if not self.ready.called:
            self.ready.errback(RelayError("TURN stream closed before the relay accepted our identity"))
        if not self.closed.called:
            self.closed.callback(None)


class _Refused:
    """The relay refused a permission for a host at C{at}: its datagrams are dropped for a while."""

    def __init__(self, at):
        self.at = at


class RelayedSocket:
    """
    A UDP transport for C{protocol} (a DatagramProtocol, usually the
    node's multiplexer) whose datagrams go through C{allocation}.

    @ivar counters: C{tx}, C{rx}, C{queued}, C{dropped} (queue full, too
        many peers, or a permission the relay refused).
    """

    log = Logger()
    maxQueuedPerHost = 16
    maxHosts = 32  # the relay grants at most this many permissions (TurnLimits.maxPermissions)
    refusedRetry = 30.0

    def __init__(self, reactor, allocation, protocol, stream=None):
        self.reactor, self.allocation, self.protocol, self.stream = reactor, allocation, protocol, stream
        self._hosts = {}  # host -> True (permitted) | [pending (data, addr)] | _Refused
        self.counters = {"tx": 0, "rx": 0, "queued": 0, "dropped": 0}
        allocation.setReceiver(self._fromRelay)
        protocol.makeConnection(self)

    @property
    def relayedAddress(self):
        return self.allocation.relayedAddress

    def _fromRelay(self, data, peer):
        self.counters["rx"] += 1
        self.protocol.datagramReceived(data, peer)

    def write(self, data, addr):
        host = addr[0]
        state = self._hosts.get(host)
        if state is True:
            self.counters["tx"] += 1
            self.allocation.send(addr, data)
            return
        if isinstance(state, _Refused) and self.reactor.seconds() - state.at < self.refusedRetry:
            self.counters["dropped"] += 1
            return
        if isinstance(state, list):
            if len(state) >= self.maxQueuedPerHost:
                self.counters["dropped"] += 1
            else:
                self.counters["queued"] += 1
                state.append((data, addr))
            return
        if len([s for s in self._hosts.values() if not isinstance(s, _Refused)]) >= self.maxHosts:
            self.counters["dropped"] += 1
            return
        self._hosts[host] = [(data, addr)]
        self.counters["queued"] += 1
        d = self.allocation.createPermission(addr)
        d.addCallbacks(lambda _: self._permitted(host), lambda f: self._refused(host, f))

    def _permitted(self, host):
        pending = self._hosts.get(host)
        self._hosts[host] = True
        for data, addr in pending if isinstance(pending, list) else ():
            self.counters["tx"] += 1
            self.allocation.send(addr, data)

    def _refused(self, host, failure):
        pending = self._hosts.get(host)
        self.counters["dropped"] += len(pending) if isinstance(pending, list) else 0
        self._hosts[host] = _Refused(self.reactor.seconds())
        refused = sorted((v.at, h) for h, v in self._hosts.items() if isinstance(v, _Refused))
        for _, old in refused[: max(0, len(refused) - self.maxHosts)]:
            del self._hosts[old]
        self.log.info("TURN permission for {host} refused: {why}", host=host, why=failure.getErrorMessage())

    def getHost(self):
        host, port = self.allocation.relayedAddress
        return (IPv6Address if ":" in host else IPv4Address)("UDP", host, port)

    def stopListening(self):
        """Release the allocation and close the stream."""
        d = self.allocation.release()
        d.addErrback(lambda f: None)
        if self.stream is not None:
            d.addBoth(lambda _: self.stream.transport.loseConnection())
        return d


async def _open(reactor, streamEndpoint, identity, server, protocol, lifetime, helloTimeout, relayId):
    stream = await connectProtocol(streamEndpoint, TurnStreamClientProtocol(reactor, identity, server, relayId))
    try:
        # A relay (or a middlebox) that accepts and then says nothing must not hold us for ever.
        credLifetime, username, password = await stream.ready.addTimeout(helloTimeout, reactor)
        allocation = TurnAllocation(reactor, stream.stun, stream.sendFrame, server, username, password)
        await allocation.allocate(min(lifetime, credLifetime))
    except BaseException:
        stream.transport.abortConnection()
        raise
    return RelayedSocket(reactor, allocation, protocol, stream)


def openRelayedSocket(reactor, streamEndpoint, identity, server, protocol, lifetime=600, helloTimeout=30.0,
                      relayId=None):
    """
    Connect to the relay's TURN stream port through C{streamEndpoint} (an
    L{IStreamClientEndpoint} giving TLS: see L{streamOpener}), check the
    relay is C{relayId} (if given), allocate, and make C{protocol} use the
    allocation as its UDP socket.

    @param server: C{(host, port)} of that port (the allocation's name for its server).
    @param helloTimeout: seconds from connected to credentials; past them the stream is closed.
    @return: a Deferred firing with the L{RelayedSocket}.
    """
    return defer.Deferred.fromCoroutine(
        _open(reactor, streamEndpoint, identity, server, protocol, lifetime, helloTimeout, relayId))


def tlsEndpoint(reactor, host, port, tls, connectTimeout=10):
    """A TLS client endpoint to C{host}:C{port}; C{tls} is the connection creator (the link layer's)."""
    from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS

    kind = TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint
    return wrapClientTLS(tls, kind(reactor, host, port, timeout=connectTimeout))


def streamOpener(reactor, identity, tls, connectTimeout=10, lifetime=600):
    """
    @param tls: an C{IOpenSSLClientConnectionCreator} (the link layer's
        TLS 1.3 context; the relay is authenticated by its node id, not a certificate).
    @return: C{opener(relay, protocol)} for L{TurnStreamSocketService}: a TLS
        connection to C{relay}'s C{(nodeId, (host, port))}, that relay's
        identity checked on the session, and an allocation there.
    """

    def opener(relay, protocol):
        relayId, (host, port) = relay
        endpoint = tlsEndpoint(reactor, host, port, tls, connectTimeout)
        return openRelayedSocket(reactor, endpoint, identity, (host, port), protocol, lifetime, relayId=relayId)

    return opener

