"""The relay's TURN server reached over TCP (or TLS): for hosts whose UDP is blocked.

The allocation made over a stream is the same object as one made over UDP
(L{meshvpn.nat.turn_server.TurnServer}: same credentials, quota per node
id, permissions, byte budget and rate per allocation, lifetime); only the
client's side of it travels as frames on a stream (L{meshvpn.nat.turn_stream}).
The stream is a relay of bytes for a stranger, so it is bounded before
the TURN server ever sees it:

 - at most C{maxConnections} streams, at most C{perSourceIP} from one IP;
 - a stream must prove a node identity (Ed25519 over our random
   challenge and this TLS session's exporter, so a proof cannot be relayed
   into another session) within C{proofTimeout}, and hold an allocation within
   C{allocateTimeout} after that (and ever after: a stream whose
   allocation is gone is closed within two such periods), or it is closed;
 - the credentials it receives are the REST ones the signalling relay
   hands out over datagram links, bound to the proven node id, so TURN's
   per-node quota counts a node's streams and datagram allocations alike;
 - it is closed on the first malformed frame (only that stream);
 - while the client does not read (the transport paused us), what the
   relay would write to it is dropped, not queued: memory per stream is
   the transport's buffer, never more;
 - its allocation dies with it.

A stream client is told apart from a UDP client at the same IP and port
(L{StreamSource} never equals an address tuple), so nobody can speak for
a stream's allocation with spoofed datagrams.
"""

import enum
import os

from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from meshvpn.identity import nodeIdFromPublicKey, verifySignature
from meshvpn.nat import turn_stream as ts
from meshvpn.nat.endpoint import StunEndpoint
from meshvpn.nat.signal import turnCredentials


class StreamSource(tuple):
    """C{(host, port)} of a stream client; never equal to the same address seen over UDP."""

    def __new__(cls, host, port, connection):
        self = super().__new__(cls, (host, port))
        self.connection = connection
        return self

    def __eq__(self, other):
        return isinstance(other, StreamSource) and tuple.__eq__(self, other)

    def __ne__(self, other):
        return not self == other

    def __hash__(self):
        return hash(("stream", tuple(self)))


class TurnStreamFront:
    """
    What the TURN server is given as its STUN endpoint and its C{send}:
    method handlers go to the UDP socket's endpoint and to the streams'
    one; answers go back the way the request came.
    """

    def __init__(self, reactor, udpStun, udpSend):
        self._udpStun, self._udpSend = udpStun, udpSend
        self.stream = StunEndpoint(reactor, self.send)

    def setMethodHandler(self, method, handler):
        self._udpStun.setMethodHandler(method, handler)
        self.stream.setMethodHandler(method, handler)

    def removeMethodHandler(self, method):
        self._udpStun.removeMethodHandler(method)
        self.stream.removeMethodHandler(method)

    def send(self, data, addr):
        if isinstance(addr, StreamSource):
            addr.connection.writeFrame(data)
        else:
            self._udpSend(data, addr)


class TurnStreamLimits:
    maxConnections = 256
    perSourceIP = 4
    proofTimeout = 10.0
    allocateTimeout = 30.0
    # The allocation dies with the stream, and its refreshes must not outlive the credentials they carry.
    credentialLifetime = 24 * 3600

    def __init__(self, **kw):
        for k, v in kw.items():
            if not hasattr(TurnStreamLimits, k):
                raise TypeError(k)
            setattr(self, k, v)


class _State(enum.Enum):
    PROVING = "proving"  # hello sent, waiting for the identity proof
    TURN = "turn"  # TURN frames
    CLOSED = "closed"


@implementer(IPushProducer, IHandshakeListener)
class TurnStreamServerProtocol(Protocol):
    log = Logger()

    def __init__(self, factory):
        self.factory = factory
        self.state = _State.PROVING
        self.source = None
        self.nodeId = None
        self._challenge = os.urandom(ts.CHALLENGE_LEN)
        self._proof = b""
        self._deframer = ts.Deframer()
        self._timer = None
        self._paused = False
        self._binding = None

    # -- lifetime
    def connectionMade(self):
        peer = self.transport.getPeer()
        self.source = StreamSource(peer.host, peer.port, self)
        if not self.factory.admit(self):
            self.state = _State.CLOSED
            self.transport.abortConnection()
            return
        self.transport.registerProducer(self, True)
        self._arm(self.factory.limits.proofTimeout, "no identity proof")
        if not self.factory.handshake:
            self.handshakeCompleted()

    def handshakeCompleted(self):
        """TLS is up: sign its exporter with the relay's identity (the client checks it against the id it pinned)."""
        if self.state is not _State.PROVING or self._binding is not None:
            return
        try:
            self._binding = self.factory.binding(self.transport)
        except ts.StreamFrameError as e:
            self._close(str(e))
            return
        identity = self.factory.identity
        signature = identity.sign(ts.relayMessage(self._binding, self._challenge))
        self.transport.write(ts.encodeHello(self._challenge, identity.identityPublicKey, signature))

    def _arm(self, delay, why):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self.factory.reactor.callLater(delay, self._expired, why)

    def _expired(self, why):
        if self.state is _State.TURN and self.factory.turn.allocations.get(self.source) is not None:
            # Checked again later: a stream whose allocation was released or expired does not keep its slot.
            self._arm(self.factory.limits.allocateTimeout, "allocation gone")
            return
        self.factory.counters["timeout"] += 1
        self._close(why)

    def _close(self, why):
        if self.state is not _State.CLOSED:
            self.log.info("TURN stream from {host} closed: {why}", host=self.source[0], why=why)
            self.state = _State.CLOSED
            self.transport.abortConnection()

    def connectionLost(self, reason=None):
        self.state = _State.CLOSED
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self.factory.gone(self)
        self.factory.turn.dropClient(self.source)

    # -- IPushProducer: a client that does not read loses datagrams, we never queue them
    def pauseProducing(self):
        self._paused = True

    def resumeProducing(self):
        self._paused = False

    def stopProducing(self):
        self._paused = True

    def writeFrame(self, data):
        if self.state is not _State.TURN:
            return
        if self._paused:
            self.factory.counters["dropped_unread"] += 1
            return
        if data[:1] and data[0] in ts.CHANNEL_FIRST:
            data = ts.padChannelData(data)
        self.transport.write(data)

    # -- bytes
    def dataReceived(self, data):
        if self.state is _State.PROVING:
            if self._binding is None:  # bytes before our hello: not a client of ours
                self._close("data before the hello")
                return
            need = ts.PROOF_LEN - len(self._proof)
            self._proof += data[:need]
            data = data[need:]
            if len(self._proof) < ts.PROOF_LEN:
                return
            if not self._proved():
                return
        if self.state is not _State.TURN or not data:
            return
        try:
            frames = self._deframer.feed(data)
        except ts.StreamFrameError as e:
            self.factory.counters["malformed"] += 1
            self._close(str(e))
            return
        for frame in frames:
            if self.state is not _State.TURN:
                return
            if frame[0] in ts.CHANNEL_FIRST:
                self.factory.turn.datagramReceived(frame, self.source)
            else:
                self.factory.front.stream.datagramReceived(frame, self.source)

    def _proved(self):
        publicKey, signature = ts.parseProof(self._proof)
        message = ts.proofMessage(self._binding, self._challenge, self.factory.identity.nodeId)
        if not verifySignature(publicKey, message, signature):
            self.factory.counters["bad_proof"] += 1
            self._close("identity proof does not verify")
            return False
        self.nodeId = nodeIdFromPublicKey(publicKey)
        lifetime = self.factory.limits.credentialLifetime
        user, password = turnCredentials(self.factory.secret, self.nodeId, self.factory.reactor.seconds(), lifetime)
        self.state = _State.TURN
        self.factory.counters["proved"] += 1
        self.transport.write(ts.encodeCredsFrame(lifetime, user, password))
        self._arm(self.factory.limits.allocateTimeout, "no allocation")
        return True


class TurnStreamFactory(Factory):
    """
    @param front: the L{TurnStreamFront} the TURN server was built on.
    @param turn: the L{meshvpn.nat.turn_server.TurnServer}.
    @param secret: the REST-credential secret C{turn} checks.
    @param identity: the relay's L{NodeIdentity} (it signs each stream's hello).
    @param binding: C{binding(transport)} -> the session's exporter value
        (L{turn_stream.tlsBinding}: streams are TLS; tests give their own).
    @param handshake: whether to wait for a TLS handshake before the hello.
    """

    def __init__(self, reactor, front, turn, secret, identity, limits=None, binding=ts.tlsBinding, handshake=True):
        self.reactor, self.front, self.turn, self.secret = reactor, front, turn, secret
        self.identity, self.binding, self.handshake = identity, binding, handshake
        self.limits = limits or TurnStreamLimits()
        self.connections = set()
        self._perIP = {}
        self.counters = {k: 0 for k in ("accepted", "refused_total", "refused_per_ip", "bad_proof", "proved", "timeout",
                                        "malformed", "dropped_unread")}

    def buildProtocol(self, addr):
        return TurnStreamServerProtocol(self)

    def admit(self, proto):
        host = proto.source[0]
        if len(self.connections) >= self.limits.maxConnections:
            self.counters["refused_total"] += 1
            return False
        if self._perIP.get(host, 0) >= self.limits.perSourceIP:
            self.counters["refused_per_ip"] += 1
            return False
        self.connections.add(proto)
        self._perIP[host] = self._perIP.get(host, 0) + 1
        self.counters["accepted"] += 1
        return True

    def gone(self, proto):
        if proto in self.connections:
            self.connections.discard(proto)
            host = proto.source[0]
            left = self._perIP.get(host, 1) - 1
            if left:
                self._perIP[host] = left
            else:
                self._perIP.pop(host, None)

    def closeAll(self):
        for proto in list(self.connections):
            proto._close("relay stopping")
