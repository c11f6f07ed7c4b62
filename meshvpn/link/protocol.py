"""One link: the record protocol running inside a TLS session.

States (explicit, see L{State}): the TLS handshake; waiting for the peer's
VERSIONS; waiting for its AUTH; OPEN; CLOSED.  Cells flow only in OPEN, which
an initiator reaches only after verifying that the responder's AUTH names
the node id it expected and is bound to this TLS session; a responder
reaches it only after the initiator's AUTH (authenticated or anonymous).

A link may be *probe-only* (L{wire.PROBE_ONLY_ENTRY} in both VERSIONS
records, under both AUTH signatures): it carries PROBE records and liveness,
never cells or DIRECTORY records (either is a protocol violation that closes
it), so a measurer's probe and the target's echo never wait behind cells
that a read limiter or backpressure paused.

The link is three Twisted roles at once, all of them in L{ILink}:
 - what the onion layer sends cells on and receives batches of cells from;
 - a consumer of cells: circuits register producers and are paused while
   the transport's write buffer is full (so queues stay bounded);
 - an C{IPushProducer}: the onion layer pauses a link's reading when the
   link it forwards to is paused (backpressure across links).
"""

import enum

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IConsumer, IHandshakeListener, IPushProducer, ITCPTransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import implementer

from meshvpn.errors import LinkError, LinkSilent
from meshvpn.interfaces import ILink
from meshvpn.link import auth, probewire, wire
from meshvpn.link.liveness import RoundTrips
from meshvpn.readsize import readInBulk

# Link versions this release speaks.  Version 2 adds the CLOSE record (a
# link says why it is closing: a stopping relay tells its peers at once);
# version 3 adds PING/PONG (liveness: a hung peer is found in seconds);
# version 4 adds DIRECTORY (a bridged client reads the directory over its link);
# version 5 adds PROBE (capacity probes: a measurer's bytes echoed by its target).
# Each release keeps the previous one's version, so a node one release older
# and one newer both meet this one (doc/protocol.md, "Versions").
SUPPORTED_VERSIONS = (1, 2, 3, 4, 5)
# Circuit protocol versions, offered in the same VERSIONS record (see
# wire.CIRCUIT_VERSION_BASE); a peer that lists none speaks circuit version 1.
CIRCUIT_VERSIONS = (1, 2, 3)  # 2: optimistic data (FLOW_EARLY), 3: offload records (FLOW_GSO); meshvpn.onion.flow.FLAG_SINCE


class State(enum.Enum):
    TLS = "tls-handshake"
    VERSIONS = "await-versions"
    AUTH = "await-auth"
    OPEN = "open"
    CLOSED = "closed"


@attrs.define
class LinkSettings:
    """Timers (seconds) and bounds of links; one instance per manager."""

    versions: tuple = SUPPORTED_VERSIONS
    circuitVersions: tuple = CIRCUIT_VERSIONS
    handshakeTimeout: float = 20.0
    # A record goes out at least this often so NATs and the peer see life.
    keepaliveInterval: float = 30.0
    # Nothing at all received for this long: the peer or path is dead.
    deadAfter: float = 95.0
    # Liveness (link version 3, bounds in meshvpn.link.liveness): cells
    # went out and nothing came back for 4 x the smoothed PONG round trip
    # (0.3 s at least, probeAfter at most), so a PING goes; no answer within
    # TCP's RTO over PONGs (0.5 s at least) marks the link suspected (the
    # circuit manager moves waiting streams elsewhere); nothing at all
    # within the verdict timeout closes it as LinkSilent.  The verdict is
    # probeTimeout, or 3 x the second slowest recent PONG if that is longer
    # (a starved machine answers late but answers; one stall is not a
    # trend), at most probeTimeoutMax.  0 disables.
    probeAfter: float = 1.0
    probeTimeout: float = 4.0
    probeTimeoutMax: float = 10.0
    # No cells either way and no users for this long: close (0 disables).
    idleTimeout: float = 180.0
    # Cells held while the transport's write buffer is full.
    maxQueuedCells: int = 8192
    # Decrypted bytes held while reading is paused (one TLS read's worth).
    maxHeldBytes: int = 1 << 20
    # Initiator: prove our identity (relays) or stay anonymous (clients).
    authenticate: bool = True
    # Responder: accept anonymous initiators (clients).
    acceptAnonymous: bool = True
    # Links (any state) a manager keeps at once; more incoming are refused.
    maxLinks: int = 10000
    # An outgoing attempt (transport connect + handshake) gives up after this.
    connectTimeout: float = 30.0


# While a link's reading is paused (backpressure) its peer's PINGs wait
# unread, so it says it lives this often on its own: a peer that is slow to
# read is not taken for a hung one.  Below liveness.SUSPECT_FLOOR_S.
PAUSED_HEARTBEAT_S = 0.2


@implementer(IPushProducer)
class _WriteSide:
    """Registered on the transport: it pauses us when its buffer is full."""

    def __init__(self, link):
        self._link = link

    def pauseProducing(self):
        self._link._writePaused(True)

    def resumeProducing(self):
        self._link._writePaused(False)

    def stopProducing(self):
        pass


@implementer(ILink, IHandshakeListener, IConsumer, IPushProducer)
class LinkProtocol(Protocol):
    """
    The link protocol, wrapped in TLS by L{twisted.protocols.tls}.

    @ivar peerId: the peer's node id once OPEN (C{None} for an anonymous
        initiator, seen from the responder).
    """

    log = Logger()

    def __init__(self, reactor, identity, settings, initiator, expectedId=None, transportName="tls", cellReceiver=None,
                 probeOnly=False):
        self._reactor = reactor
        self._identity = identity
        self._settings = settings
        self.isInitiator = initiator
        self.expectedId = expectedId
        self.transportName = transportName
        self.state = State.TLS
        self.peerId = None
        self.peerIdentityKey = None
        self.version = None
        self.circuitVersion = None  # the highest circuit protocol version both ends speak
        self.closeReason = None
        # Set by the link manager: called (link, True) when a PING went
        # unanswered past the suspicion bound, (link, False) when the peer
        # was heard again (None: nobody listens).
        self.onSuspicion = None
        self.suspected = False
        self._exporter = None
        # An initiator asks for a probe-only link; a responder learns it from the initiator's VERSIONS.
        self.probeOnly = bool(probeOnly and initiator)
        self._myVersions = wire.encodeVersions(settings.versions, settings.circuitVersions, self.probeOnly)[3:]
        self._peerVersions = None
        self._parser = wire.RecordParser(self._cellsArrived, self._controlArrived)
        self._receiver = cellReceiver
        self._readDone = None
        # Set by the link manager: where DIRECTORY records go (None: ignored).
        self.onDirectory = None
        # Set by the link manager: where PROBE records go (None: ignored).
        self.onProbe = None
        self._openWaiters = []
        self._closedWaiters = []
        self._timer = None
        self._users = 0
        self._producers = []
        self._writeBlocked = False
        self._queue = []
        self._queuedCells = 0
        self._readPaused = False
        self._held = []
        self._heldBytes = 0
        self.cellsIn = self.cellsOut = 0
        now = reactor.seconds()
        self._lastIn = self._lastOut = self._lastCells = now
        # liveness (link version 3): when bytes last came in, cells last went out,
        # the PING awaiting an answer, recent PONG round trips
        self._liveness = False
        self._heardAt = self._sentAt = now
        self._probe = None
        self._pingAt = None
        self._judgedAfterReading = False  # liveness: the reads that waited were taken before a bound was judged
        self._pingBody = b""
        self._pings = 0
        self.roundTrips = RoundTrips()
        self._rttPing = None  # (body, sent at) of the PING whose PONG is still to be timed
        self._unanswered = False  # cells went out and no byte came in since
        self._heartbeat = None

    # ---- ILink

    def sendCells(self, cells):
        """
        Queue C{cells} (a list of C{CELL_SIZE}-byte C{bytes}) for the peer,
        written as one batch.

        @return: C{True} if sent or queued; C{False} if the link is not open
            (the cells are dropped; watch L{whenClosed}).
        @raise ValueError: a cell has the wrong size.
        """
        if self.state is not State.OPEN or self.probeOnly:
            return False
        data = wire.encodeCells(cells)
        n = len(cells)
        self.cellsOut += n
        self._sentAt = self._lastCells = self._lastOut = self._reactor.seconds()
        self._unanswered = True
        if self._probe is None and self._liveness:
            self._probe = self._reactor.callLater(self.probeAfter(), self._probeCheck)
        if not self._writeBlocked:
            self.transport.write(data)
            return True
        self._queue.append(data)
        self._queuedCells += n
        if self._queuedCells > self._settings.maxQueuedCells:
            self._abort(LinkError("send queue overflow (a producer ignored pauseProducing)"))
            return False
        return True

    def setCellReceiver(self, receiver):
        self._receiver = receiver

    def setReadDone(self, readDone):
        """C{readDone()} is called once a TCP read's cells have all been delivered (L{readDone})."""
        self._readDone = readDone

    def readDone(self):
        """
        The transport under us delivered one read (L{meshvpn.link.tlsturn}):
        whatever its cells made for other links may leave now.
        """
        if self._readDone is not None:
            self._readDone()

    def sendDirectory(self, payload):
        """
        One DIRECTORY record to the peer (L{meshvpn.link.dirwire}); C{False}
        if the link is not open or its version has no DIRECTORY record.
        """
        if self.state is not State.OPEN or self.version < wire.DIRECTORY_LINK_VERSION or self.probeOnly:
            return False
        data = wire.encodeControl(wire.DIRECTORY, payload)
        self._lastOut = self._reactor.seconds()
        if self._writeBlocked:
            self._queue.append(data)
        else:
            self.transport.write(data)
        return True

    def sendProbe(self, seq, data, echo=False):
        """
        One PROBE record to the peer (L{meshvpn.link.probewire}).  Never
        queued: C{False} if the link is not open, its version has no PROBE
        record, or its writes are blocked (a probe measures what the path
        carries now; a queue would only hide it and grow).
        """
        if self.state is not State.OPEN or self.version < wire.PROBE_LINK_VERSION or self._writeBlocked:
            return False
        self._lastOut = self._reactor.seconds()
        self.transport.write(probewire.encodeProbe(seq, data, echo))
        return True

    def close(self, reason="closed"):
        if self.state is State.CLOSED:
            return
        if self.state is State.OPEN and self.version >= 2:
            # TLS sends it before its close_notify: the peer reads why.
            self.transport.write(wire.encodeClose(_closeCode(reason)))
        self._enterClosed(reason)
        # TLS waits for a registered producer to go before it shuts down.
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def whenClosed(self):
        d = defer.Deferred()
        if self.state is State.CLOSED and self.closeReason is not None and self._connectionGone:
            d.callback(self.closeReason)
        else:
            self._closedWaiters.append(d)
        return d

    def whenOpen(self):
        """@return: a Deferred firing with this link once OPEN; fails with L{LinkError}."""
        d = defer.Deferred()
        if self.state is State.OPEN:
            d.callback(self)
        elif self.state is State.CLOSED:
            d.errback(self.closeReason)
        else:
            self._openWaiters.append(d)
        return d

    def acquire(self):
        """A user (a circuit) holds the link: it is not closed for idleness."""
        self._users += 1

    def release(self):
        self._users = max(0, self._users - 1)
        self._lastCells = self._reactor.seconds()

    # ---- IConsumer: circuits that feed us

    def registerProducer(self, producer, streaming):
        """
        Unlike plain IConsumer, several producers may register (one per
        circuit); all are paused and resumed together.
        """
        if not streaming:
            raise ValueError("links take streaming (push) producers only")
        self._producers.append(producer)
        if self._writeBlocked:
            producer.pauseProducing()

    def unregisterProducer(self, producer=None):
        if producer is None:
            self._producers.clear()
        elif producer in self._producers:
            self._producers.remove(producer)

    def write(self, data):
        raise NotImplementedError("use sendCells")

    # ---- IPushProducer: the reading side

    def pauseProducing(self):
        if not self._readPaused and self.state is not State.CLOSED:
            self._readPaused = True
            self.transport.pauseProducing()
            if self._liveness and self._heartbeat is None:
                self._heartbeat = self._reactor.callLater(PAUSED_HEARTBEAT_S, self._beat)

    def resumeProducing(self):
        if not self._readPaused or self.state is State.CLOSED:
            return
        self._readPaused = False
        self._stopHeartbeat()
        held, self._held, self._heldBytes = self._held, [], 0
        for i, data in enumerate(held):
            self._feed(data)
            if self.state is State.CLOSED:
                return
            if self._readPaused:
                # paused again by what this data delivered: the rest waits, in order (dropping it
                # cut the byte stream mid-record: "unknown record type", the link and every
                # circuit on it gone; the 1000-user soak's one event)
                self._held = held[i + 1:] + self._held
                self._heldBytes = sum(len(d) for d in self._held)
                return
        self.transport.resumeProducing()

    def stopProducing(self):
        """Our consumer went away; the link itself lives on (close() ends it)."""

    # ---- Protocol

    _connectionGone = False

    def connectionMade(self):
        # Cells are latency-sensitive and already batched per write: Nagle
        # would hold a lone CREATE2 for ~40 ms waiting for an ACK.
        # A pluggable transport's wrapper declares what it wraps (Twisted's
        # ProtocolWrapper copies the interfaces), so TCP shows through TLS.
        if ITCPTransport.providedBy(self.transport):
            try:
                self.transport.setTcpNoDelay(True)
            except Exception:
                pass  # claims TCP but has no socket underneath (in-memory test transports)
        # A link carries runs of cells: one turn takes what waits (meshvpn/readsize.py).
        readInBulk(self.transport)
        self._timer = self._reactor.callLater(self._settings.handshakeTimeout, self._handshakeTimedOut)
        self.transport.registerProducer(_WriteSide(self), True)
        if self.isInitiator:
            # Buffered by TLS until its handshake is done: no extra round trip.
            self.transport.write(wire.encodeControl(wire.VERSIONS, self._myVersions))

    def handshakeCompleted(self):
        if self.state is not State.TLS:
            return
        conn = self.transport.getHandle()
        self._exporter = conn.export_keying_material(auth.EXPORTER_LABEL, auth.EXPORTER_LENGTH)
        if not self._exporter or len(self._exporter) != auth.EXPORTER_LENGTH:
            self._abort(LinkError("TLS exporter unavailable"))
            return
        self.state = State.VERSIONS

    def dataReceived(self, data):
        # Any byte proves the peer's process runs, even one held while we paused reading.
        self._heardAt = self._reactor.seconds()
        self._unanswered = False
        if self.suspected:
            self._suspect(False)
        if self._readPaused:
            self._held.append(data)
            self._heldBytes += len(data)
            if self._heldBytes > self._settings.maxHeldBytes:
                self._abort(LinkError("peer overran a paused link"))
            return
        self._feed(data)

    def _feed(self, data):
        if self.state is State.CLOSED:
            return
        self._lastIn = self._reactor.seconds()
        try:
            self._parser.feed(data)
        except LinkError as e:
            self._abort(e)
        except Exception:
            # A bug above us (the cell receiver) costs this link, not the node.
            self.log.failure("cell receiver failed; closing the link")
            self._abort(LinkError("cell receiver failed"))

    def connectionLost(self, reason):
        self._connectionGone = True
        if self.state is not State.CLOSED:
            self._enterClosed(LinkError(f"connection lost: {reason.getErrorMessage()}"))
        # Producers are only forgotten, not stopped: a circuit learns of the
        # loss through whenClosed, and a producer may be another link that
        # must stay up.
        self._producers.clear()
        waiters, self._closedWaiters = self._closedWaiters, []
        for d in waiters:
            d.callback(self.closeReason)

    # ---- records

    def _cellsArrived(self, cells):
        if self.state is not State.OPEN:
            raise wire.LinkProtocolError("cells before the link was authenticated")
        if self.probeOnly:
            raise wire.LinkProtocolError("cells on a probe-only link")
        self.cellsIn += len(cells)
        self._lastCells = self._lastIn
        if self._receiver is not None:
            self._receiver(cells)

    def _controlArrived(self, kind, payload):
        if kind == wire.KEEPALIVE:
            if self.state is not State.OPEN:
                raise wire.LinkProtocolError("KEEPALIVE before the link was authenticated")
            return
        if kind == wire.VERSIONS:
            return self._versionsArrived(payload)
        if kind == wire.DIRECTORY:
            if self.state is not State.OPEN:
                raise wire.LinkProtocolError("DIRECTORY before the link was authenticated")
            if self.version < wire.DIRECTORY_LINK_VERSION:
                raise wire.LinkProtocolError(f"DIRECTORY on a version {self.version} link")
            if self.probeOnly:
                raise wire.LinkProtocolError("DIRECTORY on a probe-only link")
            if self.onDirectory is not None:
                self.onDirectory(self, payload)
            return
        if kind == wire.PROBE:
            if self.state is not State.OPEN or self.version < wire.PROBE_LINK_VERSION:
                raise wire.LinkProtocolError(f"PROBE in state {self.state.value} on a version {self.version} link")
            seq, data, echo = probewire.decodeProbe(payload)
            if self.onProbe is not None:
                self.onProbe(self, seq, data, echo)
            return
        if kind == wire.CLOSE:
            return self._closeArrived(payload)
        if kind == wire.PING or kind == wire.PONG:
            return self._pingArrived(kind, wire.checkPing(payload))
        return self._authArrived(payload)

    def _pingArrived(self, kind, body):
        if self.state is not State.OPEN or self.version < 3:
            raise wire.LinkProtocolError(f"PING/PONG in state {self.state.value} on a version {self.version} link")
        if kind == wire.PING:
            self._writeControl(wire.encodePing(wire.PONG, body))
            return
        if self._rttPing is not None and body == self._rttPing[0]:
            # measured even when other bytes already ended the wait (a busy link)
            self.roundTrips.add(self._reactor.seconds() - self._rttPing[1])
            self._rttPing = None
            if body == self._pingBody:
                self._pingAt = None
                if self._probe is not None and self._probe.active():
                    self._probe.cancel()  # answered; the next cells sent arm it again
                self._probe = None

    def _writeControl(self, record):
        self._lastOut = self._reactor.seconds()
        if self._writeBlocked:
            self._queue.append(record)
        else:
            self.transport.write(record)

    def _closeArrived(self, payload):
        if self.state is not State.OPEN or self.version < 2:
            raise wire.LinkProtocolError(f"CLOSE in state {self.state.value} on a version {self.version} link")
        why = wire.decodeClose(payload)
        self._enterClosed(LinkError(f"peer closed the link: {why}"))
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def _versionsArrived(self, payload):
        if self.state is not State.VERSIONS:
            raise wire.LinkProtocolError(f"VERSIONS in state {self.state.value}")
        entries = wire.decodeVersions(payload)
        offered, circuits = wire.splitVersions(entries)
        common = set(offered) & set(self._settings.versions)
        if not common:
            raise wire.LinkProtocolError(f"no common link version (peer offers {sorted(offered)[:8]})")
        # Listing none means circuit version 1 (the first release lists none).
        commonCircuits = set(circuits or (1,)) & set(self._settings.circuitVersions or (1,))
        if not commonCircuits:
            raise wire.LinkProtocolError(f"no common circuit version (peer offers {sorted(circuits)[:8]})")
        self.version = max(common)
        self.circuitVersion = max(commonCircuits)
        marked = wire.PROBE_ONLY_ENTRY in entries
        if self.isInitiator and self.probeOnly and not marked:
            raise LinkError("peer does not take probe-only links")
        if marked and not self.isInitiator:
            self.probeOnly = True
            self._myVersions = wire.encodeVersions(self._settings.versions, self._settings.circuitVersions, True)[3:]
        if self.probeOnly and self.version < wire.PROBE_LINK_VERSION:
            raise wire.LinkProtocolError(f"a probe-only link on version {self.version}")
        self._peerVersions = payload
        self.state = State.AUTH
        if not self.isInitiator:
            transcript = auth.transcriptHash(payload, self._myVersions)
            proof = auth.encodeAuth(self._identity, auth.RESPONDER, self._exporter, transcript)
            self.transport.write(
                wire.encodeControl(wire.VERSIONS, self._myVersions) + wire.encodeControl(wire.AUTH, proof)
            )

    def _authArrived(self, payload):
        if self.state is not State.AUTH:
            raise wire.LinkProtocolError(f"AUTH in state {self.state.value}")
        if self.isInitiator:
            transcript = auth.transcriptHash(self._myVersions, self._peerVersions)
            peerId, key = auth.verifyAuth(payload, auth.RESPONDER, self._exporter, transcript)
            if peerId is None:
                raise wire.LinkProtocolError("responder did not authenticate")
            if peerId != self.expectedId:
                raise LinkError("peer identity is not the expected node id")
            if self._settings.authenticate:
                proof = auth.encodeAuth(self._identity, auth.INITIATOR, self._exporter, transcript, peerId)
            else:
                proof = auth.encodeAnonymousAuth()
            self.transport.write(wire.encodeControl(wire.AUTH, proof))
        else:
            transcript = auth.transcriptHash(self._peerVersions, self._myVersions)
            peerId, key = auth.verifyAuth(payload, auth.INITIATOR, self._exporter, transcript, self._identity.nodeId)
            if peerId is None and not self._settings.acceptAnonymous:
                raise wire.LinkProtocolError("anonymous initiators are not accepted")
        self.peerId, self.peerIdentityKey = peerId, key
        self.state = State.OPEN
        self._timer.cancel()
        self._lastCells = self._lastOut = self._lastIn = self._heardAt = self._sentAt = self._reactor.seconds()
        self._liveness = self.version >= 3 and self._settings.probeAfter > 0
        self._timer = self._reactor.callLater(self._settings.keepaliveInterval, self._tick)
        if self._liveness:
            # the first round trip, so the bounds fit this peer before cells need them
            self._sendPing(self._reactor.seconds())
        waiters, self._openWaiters = self._openWaiters, []
        for d in waiters:
            d.callback(self)

    # ---- timers

    def _handshakeTimedOut(self):
        self._timer = None
        self._abort(LinkError("link handshake timed out"))

    def _tick(self):
        self._timer = None
        s = self._settings
        now = self._reactor.seconds()
        if now - self._lastIn >= s.deadAfter:
            return self._abort(LinkError(f"peer silent for {s.deadAfter:g}s"))
        if s.idleTimeout and not self._users and now - self._lastCells >= s.idleTimeout:
            return self.close(LinkError("idle"))
        if self._liveness and self._pingAt is None:
            # The keepalive asks for an answer: a peer that hangs while idle is
            # found too (within keepaliveInterval + the verdict), and a busy
            # link, whose cells are always answered, still measures its round trip.
            self._sendPing(now)
        elif now - self._lastOut >= s.keepaliveInterval * 0.99:
            self._lastOut = now
            self.transport.write(wire.encodeControl(wire.KEEPALIVE))
        self._timer = self._reactor.callLater(s.keepaliveInterval, self._tick)

    # ---- liveness (link version 3)

    @property
    def pingRtts(self):
        """The recent PONG round trips (seconds), oldest first."""
        return self.roundTrips.samples

    def pingTimeout(self):
        """Seconds a PING waits for any answer before the peer counts as hung (the verdict)."""
        return self.roundTrips.verdict(self._settings.probeTimeout, self._settings.probeTimeoutMax,
                                       anonymous=self.peerId is None)

    def suspectTimeout(self):
        """Seconds a PING waits for any answer before the link is suspected."""
        return self.roundTrips.suspectAfter(self.pingTimeout())

    def probeAfter(self):
        """Seconds of silence after cells went out before a PING goes."""
        return self.roundTrips.probeAfter(self._settings.probeAfter)

    def _sendPing(self, now):
        self._pings += 1
        self._pingBody = self._pings.to_bytes(wire.PING_MAX_BODY, "big")
        self._pingAt = now
        self._judgedAfterReading = False
        self._rttPing = (self._pingBody, now)
        self._writeControl(wire.encodePing(wire.PING, self._pingBody))
        if self._probe is not None and self._probe.active():
            self._probe.cancel()
        self._probe = self._reactor.callLater(self.suspectTimeout(), self._probeCheck)

    def _probeCheck(self):
        """
        Cells went out a while ago, or a PING did: has the peer said anything
        since?  Reading we paused ourselves is not the peer's silence.
        """
        self._probe = None
        if self.state is not State.OPEN:
            return
        now = self._reactor.seconds()
        if self._pingAt is not None:
            if self._heardAt < self._pingAt and not self._readPaused:
                waited = now - self._pingAt
                verdict = self.pingTimeout()
                if waited >= self.suspectTimeout() and not self._judgedAfterReading:
                    # A reactor runs due timers before it reads: after a stall of our own
                    # (a starved process) the peer's answer may be waiting unread.  One turn
                    # to read it, then judge (liveness.py: a client's false verdicts at load 17).
                    self._judgedAfterReading = True
                    self._probe = self._reactor.callLater(0, self._probeCheck)
                    return
                if waited >= verdict:
                    return self._abort(LinkSilent(f"peer answered no PING for {waited:.1f}s (limit {verdict:.1f}s)"))
                if waited >= self.suspectTimeout() and not self.suspected:
                    self._suspect(True)
                    if self.state is not State.OPEN:  # a listener closed it
                        return
                self._judgedAfterReading = False  # the verdict, when due, is judged after a read too
                self._probe = self._reactor.callLater(verdict - waited, self._probeCheck)
                return
            if self._heardAt < self._pingAt:  # paused by us: look again later
                self._probe = self._reactor.callLater(self.probeAfter(), self._probeCheck)
                return
            self._pingAt = None  # something came back: the peer lives (its PONG may still come)
        if not self._unanswered:
            return  # answered since; the next cells sent arm the check again
        quiet = now - self._heardAt
        probeAfter = self.probeAfter()
        if quiet >= probeAfter and not self._readPaused:
            self._sendPing(now)
        else:
            self._probe = self._reactor.callLater(max(probeAfter - quiet, 0.05), self._probeCheck)

    def _suspect(self, suspected):
        self.suspected = suspected
        if self.onSuspicion is not None:
            self.onSuspicion(self, suspected)

    def _beat(self):
        """Our reading is paused: tell the peer we live, since its PINGs wait unread."""
        self._heartbeat = None
        if not self._readPaused or self.state is not State.OPEN:
            return
        if not self._writeBlocked:
            self._lastOut = self._reactor.seconds()
            self.transport.write(wire.encodeControl(wire.KEEPALIVE))
        self._heartbeat = self._reactor.callLater(PAUSED_HEARTBEAT_S, self._beat)

    def _stopHeartbeat(self):
        if self._heartbeat is not None and self._heartbeat.active():
            self._heartbeat.cancel()
        self._heartbeat = None

    # ---- backpressure from the transport

    def _writePaused(self, paused):
        self._writeBlocked = paused
        if paused:
            for p in list(self._producers):
                p.pauseProducing()
            return
        if self._queue:
            data, self._queue, self._queuedCells = b"".join(self._queue), [], 0
            self.transport.write(data)
            if self._writeBlocked:
                return
        for p in list(self._producers):
            p.resumeProducing()

    # ---- closing

    def _enterClosed(self, reason):
        if isinstance(reason, str):
            reason = LinkError(reason)
        self.closeReason = reason
        self.state = State.CLOSED
        self._parser.stop()
        self._queue, self._held = [], []
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._probe is not None and self._probe.active():
            self._probe.cancel()
        self._probe = None
        self._stopHeartbeat()
        waiters, self._openWaiters = self._openWaiters, []
        for d in waiters:
            d.errback(reason)

    def _abort(self, reason):
        """Protocol violation or dead peer: drop the connection at once."""
        if self.state is State.CLOSED:
            return
        if self.state is not State.OPEN and isinstance(reason, LinkError):
            self.log.info("link handshake failed: {why}", why=str(reason))
        elif self.state is State.OPEN and not isinstance(reason, LinkSilent):
            # every circuit on it ends: say why (the silent verdict is logged by the link manager)
            self.log.info("{link} aborted: {why}", link=self, why=str(reason))
        self._enterClosed(reason)
        self.transport.abortConnection()

    def __repr__(self):
        peer = self.peerId.hex()[:16] if self.peerId else ("anonymous" if self.state is State.OPEN else "?")
        return f"<Link {'out' if self.isInitiator else 'in'} {peer} {self.state.value}>"


def _closeCode(reason):
    """The CLOSE code for a reason this node closes a link for."""
    text = str(reason)
    if text == "node stopping":
        return wire.CLOSE_SHUTDOWN
    if text == "idle":
        return wire.CLOSE_IDLE
    return wire.CLOSE_UNSPECIFIED
