"""Every contract between MeshVPN's subsystems.

Planes only call downward (client/exit -> streams/tun -> circuits -> onion ->
link -> dht/nat -> the ground modules; meshvpn/test/test_layers.py holds the
order) and only through these interfaces, so tests swap in fakes and third
parties swap in plugins.  Each method says what its arguments are, what the Deferred
it returns fires with, and which errors it fails with.

Conventions used throughout:

- A *node id* is ``bytes`` of length 32 (see L{meshvpn.identity}).
- An *address* is a C{(host: str, port: int)} tuple, the form Twisted's UDP
  transports use.
- "Fails with X" means the returned Deferred errbacks with X.
"""

from zope.interface import Attribute, Interface
from twisted.internet.interfaces import IPushProducer
from twisted.plugin import IPlugin


# --------------------------------------------------------------------------
# identity


class INodeIdentity(Interface):
    """
    A node's long-term keys: an Ed25519 identity key and X25519 onion key(s).
    """

    nodeId = Attribute("C{bytes}, 32: SHA-256 of the Ed25519 public key.")
    identityPublicKey = Attribute("C{bytes}, 32: raw Ed25519 public key.")
    onionPublicKey = Attribute("C{bytes}, 32: raw X25519 public key of the current onion key.")

    def sign(message):
        """
        Sign C{message} (bytes) with the identity key.

        @return: the 64-byte Ed25519 signature.
        """

    def onionPrivateKey():
        """
        @return: the current X25519 private key object (L{nacl.public.PrivateKey}).
            Never logged, never serialised outside its key file.
        """


# --------------------------------------------------------------------------
# the one UDP socket


class IDatagramHandler(Interface):
    """
    Something that consumes datagrams of one protocol (STUN, DHT, link, ...).
    """

    def datagramReceived(data, addr):
        """
        Handle one datagram that the multiplexer routed here.

        @param data: the datagram, C{bytes}.
        @param addr: the sender's address.
        @return: ignored.  Exceptions are caught and counted by the
            multiplexer; a handler must still never let one peer's input
            harm another's.
        """


class IDatagramMultiplexer(Interface):
    """
    The node's single UDP socket, shared by STUN, the DHT and datagram links
    (one socket, so the mapping STUN observes is the one hole punching and the
    DHT use).  Datagrams are routed by their first byte (RFC 7983 style;
    the table is in doc/protocol.md).
    """

    def register(name, firstBytes, handler, accept=None):
        """
        Route datagrams whose first byte is in C{firstBytes} to C{handler}.

        @param name: a short label used in counters, e.g. C{"dht"}.
        @param firstBytes: an iterable of ints in 0..255.
        @param handler: an L{IDatagramHandler}.
        @param accept: optional C{callable(bytes) -> bool}; a datagram whose
            first byte matches but that C{accept} refuses is dropped as unknown
            (e.g. STUN requires the magic cookie).
        @raise ValueError: a first byte is already registered.
        """

    def unregister(name):
        """
        Stop routing to the handler registered as C{name}.

        @raise KeyError: nothing is registered under C{name}.
        """

    def sendDatagram(data, addr):
        """
        Send C{data} from the node's socket to C{addr}.  Never raises for
        network errors (UDP is lossy); they are counted.
        """

    def sendDatagrams(datagrams, addr):
        """
        Send each of C{datagrams} (a list of C{bytes}) to C{addr}, in order,
        with as few system calls as the kernel allows (a burst of one bulk
        sender); otherwise the same as L{sendDatagram} for each.
        """

    def getHost():
        """
        @return: the L{twisted.internet.interfaces.IAddress} the socket is bound to.
        """

    def counters():
        """
        @return: a C{dict} of counters: datagrams routed per handler name,
            C{"dropped_unknown"}, C{"handler_errors"}, C{"send_errors"}.
        """

    def setEgressGate(gate):
        """
        Consult C{gate} (an L{IDirectEgress}, or C{None} to stop) before
        each datagram: one to a destination the gate has not allowed yet is
        held (in a small bounded queue) until it is, then sent in order.
        """


class IDirectEgress(Interface):
    """
    The gate in front of everything a node sends outside a VPN tunnel
    (C{meshvpn-client --tun}): its links to guards and its socket's DHT,
    STUN and datagram-link traffic.  Before the first packet to a
    destination leaves, the gate puts a host route via the original gateway
    and a kill-switch exception in place for it; entries unused for a while
    are removed again.  Without C{--tun} a node has no gate.
    """

    def allow(destinations):
        """
        @param destinations: an iterable of C{(protocol, host, port)},
            protocol C{"tcp"} or C{"udp"}.
        @return: a Deferred firing with C{None} once packets to every one of
            them leave directly (at once for those that need nothing:
            already allowed, loopback, not IPv4); failing with
            L{meshvpn.errors.EgressRefused} if one cannot be allowed (no
            route outside the tunnel, too many entries).
        """

    def passes(protocol, address):
        """
        @param address: C{(host, port)}.
        @return: C{True} if packets to it may leave now (and note the use,
            which keeps the entry alive); C{False}: call L{allow} and wait.
        """

    def start(already=()):
        """
        Start the gate (its periodic route refresh and expiry); C{already}
        are C{(protocol, ip, port)} the route controller kept at capture.
        """

    def stop():
        """
        Stop the gate; destinations held back are dropped.
        """

    def status():
        """
        @return: a JSON-able dict (entries kept, held datagrams, refusals).
        """


# --------------------------------------------------------------------------
# discovery (dht/)


class IDHT(Interface):
    """
    A Kademlia DHT node storing signed, expiring values (BEP 44 model).
    """

    def bootstrap(addresses):
        """
        Join the network through C{addresses} (a list of addresses).

        @return: a Deferred firing with the number of contacts in the routing
            table afterwards.  Fails with L{meshvpn.errors.DHTError} if no
            bootstrap node answered and the saved table is empty.
        """

    def findNode(nodeId):
        """
        Iterative lookup (alpha parallel queries) of the k closest live nodes.

        @return: a Deferred firing with a list of contacts, closest first;
            a contact is C{(nodeId, address)}.
        """

    def get(key):
        """
        Fetch and verify the signed value stored under C{key} (32 bytes).

        @return: a Deferred firing with the verified value with the highest
            sequence number, or C{None} if none was found.  Values that fail
            verification are discarded, never returned.
        """

    def put(value):
        """
        Store a signed value on the k nodes closest to its key.

        @return: a Deferred firing with the number of nodes that stored it.
            Fails with L{meshvpn.errors.DHTError} if none did.
        """

    def getAll(key, want):
        """
        Fetch and verify the records of up to C{want} distinct publishers
        stored under a shared key (e.g. a role announcement shard).

        @return: a Deferred firing with a list of verified records (possibly empty).
        """


class IRelayDirectory(Interface):
    """
    The decentralized relay directory: signed relay descriptors published in
    and read from the DHT.  No central list exists.
    """

    def publish(descriptor):
        """
        Publish this node's own signed descriptor under its node id and
        announce it under the keys of its roles.

        @return: a Deferred firing with C{None} when stored on at least one node.
        """

    def lookup(nodeId):
        """
        @return: a Deferred firing with the verified, unexpired descriptor of
            C{nodeId}, or C{None}.
        """

    def sample(role, count):
        """
        Sample up to C{count} relays announcing C{role} ("guard", "middle",
        "exit", "stun", "nat-relay", "bootstrap").

        @return: a Deferred firing with a list of verified descriptors.
        """


# --------------------------------------------------------------------------
# connectivity (nat/)


class INATProbe(Interface):
    """
    Learns this node's NAT situation with STUN (RFC 8489, RFC 5780).
    """

    def probe(servers):
        """
        Run binding requests and RFC 5780 behaviour discovery against
        C{servers} (a list of addresses).

        @return: a Deferred firing with a report: mapped addresses, mapping
            and filtering behaviour, hairpinning, which servers answered and
            their round-trip times.  Never fails: an unreachable network is
            reported as "udp-blocked".

            The report is a JSON-ready C{dict} (L{meshvpn.nat.classify}):
            C{udp} (bool), C{nat} (bool or None), C{type} (one of
            "no-nat", "udp-blocked", "full-cone", "address-restricted",
            "port-restricted", "symmetric", or "nat-unknown*"), C{mapping}
            and C{filtering} ("endpoint-independent", "address-dependent",
            "address-and-port-dependent", "endpoint-dependent" or
            "unknown"), C{hairpinning} (bool or None), C{mapped_address}
            ("ip:port"), C{mapped_addresses}, C{local_addresses},
            C{rfc5780_server}, and C{servers}: one dict per server with
            C{server}, C{answered}, C{rtt_ms}, C{mapped}, C{other_address},
            C{response_origin}, C{software} or C{error}.
        """


class IStunEndpoint(Interface):
    """
    All STUN on one UDP socket (L{meshvpn.nat.endpoint.StunEndpoint}): the
    node's is made by its role with C{StunEndpoint.onSocket(reactor,
    node.udp)}, registered for first bytes 0x00-0x03.  Our client transactions and every server that
    speaks STUN on the socket (STUN Binding, TURN) share it.
    """

    client = Attribute(
        "A L{meshvpn.nat.transaction.StunClient}: C{request(message, addr, rto, rc, rm, "
        "integrityKey, integritySha256Key, fingerprint)} returns a Deferred firing with a "
        "StunResult (C{.message}, C{.source}, C{.rtt}) or failing with StunTimeout "
        "(RFC 8489 retransmission: RTO 500 ms doubling, Rc 7, Rm 16 by default)."
    )

    def setMethodHandler(method, handler):
        """
        Route STUN requests and indications of C{method} (e.g.
        C{stun.ALLOCATE}) to C{handler(message, source)}, where C{message}
        is a decoded L{meshvpn.nat.stun.StunMessage}.

        @raise ValueError: the method already has a handler.
        """

    def removeMethodHandler(method):
        """Stop routing C{method}; no error if it had no handler."""

    def send(data, addr):
        """Send a datagram from this socket."""


class IHolePuncher(Interface):
    """
    Coordinated UDP hole punching between two peers.
    """

    def punch(peerId, localCandidates, remoteCandidates, session=None):
        """
        Send probes to every remote candidate address, with retries and
        spread timing, until one pair answers.

        @param session: what signalling agreed for this attempt (punch id,
            shared secret, our role; L{meshvpn.nat.punch.PunchSession}):
            probes and acks are authenticated with it, so the
            implementation in L{meshvpn.nat.punch} requires it.

        @return: a Deferred firing with the remote address that worked.
            Fails with L{meshvpn.errors.PunchFailed} after the deadline.
        """


class IRelayAllocation(Interface):
    """
    A TURN-shaped (RFC 8656) allocation on a relay, for peers that cannot punch.
    """

    relayedAddress = Attribute("The address the relay allocated for us.")

    def createPermission(peerAddress):
        """
        Allow C{peerAddress} to send to us through the relay.

        @return: a Deferred firing with C{None}; fails with
            L{meshvpn.errors.RelayError} if the relay refused.
        """

    def send(peerAddress, data):
        """
        Send C{data} to C{peerAddress} through the relay.  Fire-and-forget.
        """

    def refresh(lifetime):
        """
        @return: a Deferred firing with the granted lifetime in seconds.
        """

    def release():
        """
        @return: a Deferred firing when the allocation is deleted.
        """

    def channelBind(peerAddress):
        """
        Bind a TURN channel to C{peerAddress} (also installs its
        permission): later data to and from it travels as ChannelData.

        @return: a Deferred firing with the channel number; fails with
            L{meshvpn.errors.RelayError} if the relay refused.
        """

    def setReceiver(receiver):
        """
        C{receiver(data, peerAddress)} is called with what peers send to
        the relayed address.
        """

    def sendDatagram(data, addr):
        """
        Same as C{send(addr, data)}: lets an allocation serve as a datagram
        link's path (see L{IDatagramLinkEndpoint.connect}).
        """


# --------------------------------------------------------------------------
# links (link/)


class ILink(IPushProducer):
    """
    An authenticated, encrypted channel to a peer whose identity key is
    known, carrying cells.

    Cells are opaque C{bytes} of exactly C{meshvpn.link.cellsize.CELL_SIZE}.
    A link is a push producer of the cells it receives (pausing it stops
    reading from the peer) and takes push producers of the cells sent on
    it (circuits register, several may; all are paused while the link's
    write buffer is full).  It is I{not} a full C{IConsumer}: bytes go in
    only as cells, through L{sendCells}.
    """

    peerId = Attribute(
        "C{bytes}: node id of the authenticated peer; C{None} on a responder's "
        "link from an anonymous initiator (a client)."
    )
    isInitiator = Attribute("C{bool}: we dialled this link.")
    version = Attribute("C{int}: the negotiated link protocol version.")
    transportName = Attribute("C{str}: the pluggable transport the link runs over.")
    cellsIn = Attribute("C{int}: cells received on this link so far (read per epoch, not per cell, by a meter).")
    cellsOut = Attribute("C{int}: cells sent on this link so far.")

    def sendCells(cells):
        """
        Queue encoded cells (a list of C{bytes}) for the peer; written in one
        batch.  Backpressure reaches the caller through
        L{twisted.internet.interfaces.IConsumer} on the link.

        @return: C{True} if written or queued, C{False} if the link is not
            open (cells dropped).  A producer that ignores C{pauseProducing}
            and overflows the bounded queue gets the link closed.
        @raise ValueError: a cell is not C{CELL_SIZE} bytes.
        """

    def setCellReceiver(receiver):
        """
        C{receiver(cells: list[bytes])} is called with each batch of cells.
        Overrides the manager's L{ICellHandler} for this link.
        """

    def sendDirectory(payload):
        """
        Send one DIRECTORY record (a question to, or an answer from, the
        relay at the other end: meshvpn/link/dirwire.py).
        @return: C{False} if the link is not open.
        """

    def sendProbe(seq, data, echo=False):
        """
        Send one PROBE record (a capacity probe's C{data} under C{seq}, or
        with C{echo} their echo: meshvpn/link/probewire.py); never queued.
        @return: C{False} if the link is not open, too old for PROBE, or
            its writes are blocked.
        """

    def close(reason):
        """
        Close the link.  Every circuit on it is torn down with C{reason}.
        """

    def whenClosed():
        """
        @return: a Deferred firing with the reason once the link is closed.
        """

    def acquire():
        """
        A circuit starts using the link: a link with users is never closed
        for idleness (keepalives still run).
        """

    def release():
        """
        The matching end of L{acquire}.
        """

    def registerProducer(producer, streaming):
        """
        C{producer} (an C{IPushProducer}; C{streaming} must be C{True})
        sends cells on this link: it is paused while the link cannot take
        more and resumed when it can.  Several producers may register.
        """

    def unregisterProducer():
        """
        Forget the registered producers.
        """


class ICellHandler(Interface):
    """
    The onion layer's hook on the link plane: registered once on the
    L{ILinkManager}, it gets the cells of every link (incoming and outgoing).
    """

    def linkOpened(link):
        """
        C{link} (an L{ILink}) finished its handshake.
        """

    def cellsReceived(link, cells):
        """
        A batch of whole cells (C{list[bytes]}, each C{CELL_SIZE}) arrived on
        C{link}.  An exception closes only that link.
        """

    def linkClosed(link, reason):
        """
        C{link}, previously announced by L{linkOpened}, closed with C{reason}.
        """


class IDatagramLink(Interface):
    """
    An authenticated, encrypted, I{lossy} link to a peer over the node's UDP
    socket (hole punched, or through a TURN relay): the mesh-packet sibling
    of L{ILink}.  Datagrams may be lost or reordered, never altered,
    replayed or forged.  Sending never raises; a closed link drops.
    """

    peerId = Attribute("C{bytes}: node id of the authenticated peer.")
    peerAddress = Attribute("The peer's current address (follows NAT rebinding).")
    closed = Attribute("C{bool}: the link is closed (what is sent on it is dropped).")

    def sendPacket(data):
        """
        Send one mesh packet (C{bytes}, at most about 65400 bytes; keep it
        under the path MTU to avoid IP fragmentation).
        """

    def sendPackets(packets):
        """
        Send each of C{packets} (a list, in order), as L{sendPacket} would,
        handing the burst to the path at once so it can leave in few system
        calls.
        """

    def setPacketReceiver(receiver):
        """
        C{receiver(data: bytes)} is called with each packet from the peer.
        """

    def sendControl(data):
        """
        Send one small control message (C{bytes}) on the link's own channel,
        apart from mesh packets: hole-punching signalling with a relay.
        Lossy, like packets.
        """

    def setControlReceiver(receiver):
        """
        C{receiver(data: bytes)} is called with each control message from the peer.
        """

    def close(reason):
        """
        Close the link and forget its keys.
        """

    def whenClosed():
        """
        @return: a Deferred firing with the reason once the link is closed
            (closed locally, or the peer was silent too long).
        """


class IDatagramLinkEndpoint(Interface):
    """
    All datagram links of one node, registered on the node's UDP socket.
    """

    def connect(peerNodeId, addr, path=None):
        """
        Run the handshake with C{addr}, which must prove it holds the
        identity key of C{peerNodeId}.

        @param path: how to reach C{addr}: anything with
            C{sendDatagram(data, addr)} (default: the node's socket; a TURN
            allocation for relayed peers).
        @return: a Deferred firing with an L{IDatagramLink} (reused if one is
            open).  Fails with L{meshvpn.errors.LinkError} after the
            handshake deadline.
        """

    def setLinkAcceptor(acceptor):
        """
        C{acceptor(link)} is called with each new authenticated inbound
        L{IDatagramLink}; returning C{False} closes it.
        """

    def links():
        """
        @return: a list of the open L{IDatagramLink}s.
        """

    def linkTo(peerId):
        """
        @return: the L{IDatagramLink} to the node C{peerId}, or C{None}.
        """


class ISignallingChannel(Interface):
    """
    A path two peers can both reach (a relay, later the DHT) that carries
    small messages between them before they can talk directly: hole-punch
    candidates, relayed addresses.
    """

    def sendSignal(peerId, payload):
        """
        Deliver C{payload} (C{bytes}, small) to the node C{peerId}.  Lossy:
        callers retry.
        """

    def setSignalReceiver(receiver):
        """
        C{receiver(peerId, payload, observedAddress)} is called for each
        signal; C{observedAddress} is where the signalling path saw the
        sender (its server-reflexive address), or C{None}.
        """


class IPluggableTransport(IPlugin):
    """
    A way to carry a link, found with C{twisted.plugin.getPlugins} and chosen
    by name in config (the model is tahoe-lafs' storage plugins).  The
    built-in TLS-over-TCP and datagram links are themselves such plugins;
    doc/plugins.md shows how a third party writes one.

    Refined by link/: a C{"stream"} transport carries bytes only; the link
    layer always runs TLS and the identity handshake over it, so a
    transport cannot weaken authentication (Tor's pluggable-transport model).
    C{serverEndpoint} returns just the endpoint (a port-0 listener has no
    address yet); L{describeAddress} gives the descriptor string once bound.
    """

    name = Attribute("C{str}: the transport's name in config and descriptors.")
    kind = Attribute('C{str}: C{"stream"} (ordered bytes, carries TLS links) or C{"datagram"}.')

    def clientEndpoint(reactor, address, options):
        """
        @param options: a C{dict} of transport-specific settings.
        @return: an L{twisted.internet.interfaces.IStreamClientEndpoint} that
            reaches a relay announcing C{address} (the transport's own string
            from the descriptor).
        @raise meshvpn.errors.LinkError: C{address} is malformed.
        """

    def serverEndpoint(reactor, options):
        """
        @return: an L{twisted.internet.interfaces.IStreamServerEndpoint} on
            which this node accepts links over the transport.
        """

    def describeAddress(listeningPort):
        """
        @param listeningPort: what C{serverEndpoint(...).listen()} fired with.
        @return: the C{str} address to put in this node's descriptor.
        """


class ILinkManager(Interface):
    """
    Keeps at most one link per peer, shared by many circuits (Arti's channel
    manager).
    """

    def getLink(descriptor):
        """
        @param descriptor: a relay descriptor with C{nodeId} and
            C{linkAddresses} (C{(transportName, address)} pairs), or a
            L{meshvpn.link.manager.LinkTarget}.
        @return: a Deferred firing with an open L{ILink} to the relay that
            C{descriptor} describes, reusing an existing one; concurrent
            calls share one connection attempt.  Fails with
            L{meshvpn.errors.LinkError} if the peer's identity is not the one
            in the descriptor or it cannot be reached.
        """

    def openLink(descriptor, purpose="probe"):
        """
        A fresh link of its own to the relay C{descriptor} describes, for one
        C{purpose}; the only one is C{"probe"}: a probe-only link (PROBE
        records and liveness, never cells), authenticated as L{getLink}'s,
        never shared, never entered as the peer's link nor given to the cell
        handler, so no read limiter or backpressure pauses it.  The caller
        closes it.  The responder takes it only from a node its probe
        handler lets it echo now, until the handler's time, and a bounded
        number per peer.
        @return: a Deferred firing with the open L{ILink}; fails with
            L{meshvpn.errors.LinkError} if it cannot be opened (unreachable,
            wrong identity, or a peer that takes no probe-only links).
        """

    def setCellHandler(handler):
        """
        Route the cells of every link to C{handler}, an L{ICellHandler}.
        """

    def setEgressGate(gate):
        """
        Await C{gate.allow} (an L{IDirectEgress}; C{None}: no gate) for a
        peer's address before dialling it.
        """

    def setDirectoryHandler(handler):
        """
        C{handler.directoryReceived(link, payload)} gets every DIRECTORY
        record any link receives (C{None}: they are ignored).
        """

    def setProbeHandler(handler):
        """
        C{handler.probeReceived(link, seq, data, echo)} gets every PROBE
        record any link receives (C{None}: they are ignored), and
        C{handler.probeLinkUntil(peerId)}, if it has it, decides on each
        incoming probe-only link: the time (the reactor's seconds) until
        which it may stay open, or C{None} to refuse it.
        """

    def serverFactory(transportName):
        """
        @return: the protocol factory a relay listens with on a server
            endpoint of the transport called C{transportName}.
        """

    def addLivenessObserver(observer):
        """
        Tell C{observer} (an L{ILinkLivenessObserver}) whenever a link to an
        authenticated peer becomes suspected of being hung or cut, and when
        that peer is heard again.
        """


class ILinkLivenessObserver(Interface):
    """
    Hears the link plane's suspicion of a peer (a PING unanswered past a
    bound from measured round trips, L{meshvpn.link.liveness}): before the
    link is closed as silent, so what rides it can move at once.
    """

    def peerSuspected(nodeId, suspected):
        """
        The link to C{nodeId} is suspected (C{suspected} true: it answered no
        PING in time, it may be hung or cut) or is no longer (it was heard).
        """


# --------------------------------------------------------------------------
# circuits (onion/)


class IChannel(Interface):
    """
    One link as the onion plane uses it (L{meshvpn.onion.channel.Channel}):
    the circuits on it by circuit id, the ids this end allocates, and a
    bounded outbound queue written with one C{ILink.sendCells} call per
    incoming batch or reactor turn.
    """

    link = Attribute("The L{ILink}.")
    peerId = Attribute("The link's C{peerId}.")
    circuits = Attribute(
        "C{dict}: circuit id -> L{ICircuitEnd}; read it, change it only with "
        "L{addCircuit} and L{removeCircuit}."
    )
    closed = Attribute("C{bool}: the link is gone (every circuit on it was told).")

    def allocateId():
        """
        @return: a free circuit id from this end's half of the id space.
        """

    def addCircuit(circId, end):
        """
        Cells for C{circId} go to C{end} (an L{ICircuitEnd}); the link is held
        open (L{ILink.acquire}) while it carries circuits.
        """

    def removeCircuit(circId, end):
        """
        Forget C{circId} if C{end} is still its end.

        @return: C{True} if it was.
        """

    def send(cell):
        """
        Queue one encoded cell; it is written with the rest of this batch or
        reactor turn.

        @return: C{False} if the queue is full (the link stopped taking cells
            and the hard limit is reached): nothing was queued and the caller
            destroys its circuit.
        """

    def sendCells(cells):
        """
        Queue a list of encoded cells, all or none, as L{send}.
        """

    def sendDestroy(circId, reason):
        """
        Queue DESTROY for C{circId} with C{reason} (a number); never refused,
        dropped if the channel is closed.
        """

    def queued():
        """
        @return: the number of cells waiting to be written.
        """

    def flush(source=None):
        """
        Write the queued cells now if the link takes them.  C{source}, the
        channel whose incoming batch made them, is paused while this queue
        stays over its high-water mark.
        """

    def receive(cells):
        """
        The link's cell receiver: switch one incoming batch to the circuits,
        then write what it produced once per channel.
        """

    def pauseReading(by):
        """
        Stop reading from the link until every C{by} that paused it resumed it.
        """

    def resumeReading(by):
        """
        The matching end of L{pauseReading}.
        """

    def linkClosed(reason):
        """
        The link is gone: every circuit on it is told, the queue is dropped.
        """


class ICircuitEnd(Interface):
    """
    Where a channel delivers the cells of one circuit id: an origin circuit,
    a relay's hop (its end toward the origin) or that hop's end toward the
    next hop.  An exception from these closes only that circuit.
    """

    TAKES_RUNS = Attribute(
        "C{True} if the channel may hand over consecutive RELAY cells of this circuit at once (L{onRelayRun})"
    )

    def onRelay(command, payload):
        """
        A RELAY (3) or RELAY_EARLY (9) cell's 509-byte C{payload}.
        """

    def onRelayRun(payloads):
        """
        Consecutive RELAY (3) cells' payloads, in order: the same as
        L{onRelay} for each, done at once.  An error stops the run there.
        """

    def onCreated2(payload):
        """
        A CREATED2 cell's payload.
        """

    def onDestroy(reason):
        """
        A DESTROY cell with C{reason} (a number).
        """

    def linkClosed(channel):
        """
        The channel's link is gone.
        """

    def protocolError(reason, why):
        """
        A cell on this circuit broke the protocol: destroy the circuit with
        C{reason}.
        """


class ICellRunEnd(ICircuitEnd):
    """
    A circuit end that takes a run of RELAY cells straight from the link's
    cells, without a slice per cell (a relay's CGO hop: one C call per run).
    """

    TAKES_CELLS = Attribute("C{True}: the channel hands runs over with L{onRelayCells} instead of L{onRelayRun}")

    def onRelayCells(cells, start, stop):
        """
        The run C{cells[start:stop]}: whole link cells (circuit id, command
        RELAY, payload) of this circuit, as the channel received them; the
        same as L{onRelayRun} on their payloads.  An error stops the run there.
        """


class ICircuitStreamHandler(Interface):
    """
    The stream layer on an origin circuit (its C{streamHandler}): a
    L{meshvpn.streams.mux.StreamMux}.
    """

    def relayReceived(command, streamId, data):
        """
        A stream message (DATA, END, CONNECTED, RESOLVED, stream SENDME).
        """

    def circuitWindowOpened():
        """
        A circuit SENDME reopened the circuit's send window.
        """

    def circuitClosed():
        """
        The circuit is gone; its streams end.
        """

    closedReason = Attribute("C{None} while the circuit lives; why the stream layer closed after.")
    bytesSent = Attribute("C{int}: stream data sent on the circuit, all streams ever.")
    bytesReceived = Attribute("C{int}: stream data received on the circuit, all streams ever.")

    def resolve(name):
        """
        RESOLVE C{name} at the exit.

        @return: a Deferred firing with the answers, or failing with
            L{meshvpn.errors.StreamRefused}.
        """

    def status():
        """
        @return: a JSON-able dict of this circuit's streams (no targets
            unless the user asked for history).
        """

    def openStream(host, port, protocol, early=None):
        """
        BEGIN a stream to C{host}:C{port}; C{protocol} gets its data.
        C{early} (L{meshvpn.streams.optimistic.OptimisticData} or C{None})
        is attached to the new stream: on a circuit that negotiated
        optimistic data its bytes follow BEGIN at once.

        @return: a Deferred firing once CONNECTED, or failing with
            L{meshvpn.errors.StreamRefused} carrying the END reason.
        """


class ICircuit(Interface):
    """
    An origin-side onion circuit through a path of relays
    (L{meshvpn.onion.origin.OriginCircuit}).
    """

    path = Attribute("The C{list} of L{meshvpn.onion.origin.HopSpec}s, guard first.")
    state = Attribute("The L{meshvpn.onion.lifecycle.OriginState}.")
    closed = Attribute("C{bool}: the circuit is torn down.")
    streamHandler = Attribute("An L{ICircuitStreamHandler} or C{None}; the stream layer sets it.")
    maxData = Attribute("C{int}: data bytes per relay message to the last hop (494; 488 when it uses CGO).")

    def build():
        """
        Build every hop of C{path}.

        @return: a Deferred firing with the circuit, or failing with
            L{meshvpn.onion.destroy.CircuitDestroyed} naming the hop that
            failed.
        """

    def extend(hop):
        """
        Add C{hop} at the end of an open circuit.

        @return: a Deferred firing with C{None}.
        """

    def truncate(keep):
        """
        Keep the first C{keep} hops.

        @return: a Deferred firing with the TRUNCATED reason.
        """

    def sendRelay(command, streamId, data, hop=-1, early=False):
        """
        Send one relay message to hop C{hop} (default: the last).

        @return: C{False} if nothing was sent (closed, or DATA/PACKET that
            does not fit the circuit window).
        """

    def circuitRoom():
        """
        @return: the DATA/PACKET cells the circuit window takes now.
        """

    def sendPacket(packet):
        """
        Send one IP packet in packet mode (the exit writes it to its TUN);
        same as C{sendPackets([packet])}.
        """

    def sendPackets(packets):
        """
        Send IP packets (C{list[bytes]}) in packet mode, in as few cells as
        possible; those the circuit window cannot take now are dropped.

        @return: the number of packets sent.
        """

    def setPacketReceiver(receiver):
        """
        C{receiver(packets: list[bytes])} gets the IP packets the exit sends back.
        """

    def openStream(host, port, isolation=None, protocol=None):
        """
        BEGIN a stream to C{host}:C{port} at the exit through the
        C{streamHandler}; C{protocol} gets its data.

        @return: a Deferred firing once CONNECTED; fails with
            L{meshvpn.errors.StreamRefused} carrying the END reason.
        """

    def close(reason):
        """
        Send DESTROY and tear the circuit down; C{reason} is a DESTROY reason
        number or name (C{"finished"}).
        """

    def whenClosed():
        """
        @return: a Deferred firing with the
            L{meshvpn.onion.destroy.CircuitDestroyed} once the circuit is gone.
        """

    def status():
        """
        @return: a JSON-able dict (no keys, no payload).
        """


class IStream(Interface):
    """
    A TCP-like stream: one carried on a circuit
    (L{meshvpn.streams.circuitstream.CircuitStream}, the one type both ends
    of a circuit use), or the exit's TCP connection it is spliced to
    (L{meshvpn.exit.direct.TCPStream}).

    Backpressure both ways uses Twisted's producer/consumer contract: the
    stream is a push producer of the data it receives (the receiver's
    consumer, e.g. the SOCKS client's TCP transport, pauses it when full) and
    a consumer of the data written to it (it pauses the producer registered
    with L{registerProducer} while its window is closed).
    """

    def setReceiver(receiver):
        """
        Deliver what arrives on the stream to C{receiver}, an
        L{IStreamReceiver}.  Data that arrived before this call is held
        (within the stream window) and delivered on it.
        """

    def registerProducer(producer, streaming):
        """
        C{producer} (an C{IPushProducer}, e.g. the SOCKS client's TCP
        transport) feeds L{write}; the stream pauses and resumes it as its
        window closes and opens.  C{streaming} is always C{True}.
        """

    def unregisterProducer():
        """
        Forget the producer given to L{registerProducer}.
        """

    def pauseProducing():
        """
        Stop delivering data to the receiver (our consumer is full); the
        stream stops sending window updates so the far end stops too.
        """

    def resumeProducing():
        """
        Deliver data to the receiver again.
        """

    def stopProducing():
        """
        The receiver is gone: close the stream (END reason DONE).
        """

    def write(data):
        """
        Send C{data}; honours the stream window (backpressure, not drops).
        """

    def halfClose():
        """
        Send what is buffered, then END (DONE) for our direction; keep
        reading.  Does nothing if our direction has already ended.
        """

    def close(reason):
        """
        Abort: send END with C{reason} at once, drop what is buffered.  The
        receiver hears L{IStreamReceiver.streamEnded}.  Idempotent: closing
        a closed stream does nothing (the SOCKS side may close it both as
        consumer and protocol).
        """


class ICircuitManager(Interface):
    """
    Picks paths from DHT descriptors, builds ahead of need, rebuilds when a
    hop dies.
    """

    def getCircuit(target=None, isolation=None, packets=False):
        """
        @param target: C{(host, port)} the circuit's exit must accept, or
            C{None} for any.
        @param packets: the circuit carries IP packets (VPN mode): its exit
            must announce C{packet-exit}.
        @param isolation: a hashable isolation key; streams with different
            keys never share a circuit.
        @return: a Deferred firing with an open L{ICircuit}.  Fails with
            L{meshvpn.errors.NoPath} when no suitable relays are known.
        """

    def circuits():
        """
        @return: a list of the open circuits, for status.
        """

    def getSecondLeg(circuit):
        """
        Build a second leg for a multipath set: a new circuit to the exit of
        C{circuit} (one this manager handed out) through a guard and middle
        unrelated to its path.

        @return: a Deferred firing with the open L{ICircuit}; fails with
            L{meshvpn.errors.NoPath} when no such relays are known.
        """

    def addObserver(observer):
        """
        Tell C{observer} (an L{ICircuitObserver}) of every circuit this
        manager builds from now on, the moment it is built, and of its close.
        """

    def streamTimedOut(circuit):
        """
        A stream on C{circuit} (one this manager handed out) got no answer
        in time: no new stream is given C{circuit}; its open streams go on.

        @return: C{True} if C{circuit} was in use and is now retired.
        """

    def circuitUnanswered(circuit):
        """
        C{circuit} answered no end-to-end probe (a hung middle or exit): as
        L{streamTimedOut}, and its middle and exit are avoided for a while,
        within the manager's bounds.

        @return: C{True} if C{circuit} was in use and is now retired.
        """

    def whenSuspect(circuit):
        """
        @return: a Deferred firing (with C{None}) once C{circuit}'s guard, or
            a relay past it, is suspected of being hung or cut (at once if
            it is now; a relay past the guard: its previous hop said so,
            NEXT_HOP_SUSPECTED), so a
            stream still waiting for an answer on it can move; it never
            fails.  Cancel it when the answer came.
        """


class IMultipathLeg(Interface):
    """
    One circuit as a leg of a multipath set
    (L{meshvpn.circuits.mpset.MultipathSet}): what the set's scheduler
    needs to choose a leg and send on it.
    """

    def sendRelay(command, streamId, body):
        """Put one relay message on the leg's circuit (to its last hop)."""

    def room():
        """
        @return: sequenced cells the leg's congestion window takes now
            (0 when it is shut or the circuit is closed).
        """

    def rtt():
        """
        @return: the leg's smoothed round trip in seconds (from its
            congestion controller), or C{None} before the first sample.
        """

    def close():
        """Close the leg's circuit (the set broke the protocol or ended)."""


class ICircuitObserver(Interface):
    """
    Hears of the circuit manager's circuits as they come and go (the control
    plane's circuit list and its C{circuit.built} and C{circuit.closed} events).
    """

    def circuitBuilt(circuit):
        """
        C{circuit} was built and is now among the manager's C{circuits()}
        (a spare, or assigned to the request that built it).
        """

    def circuitClosed(circuit, reason):
        """
        C{circuit}, announced by L{circuitBuilt}, closed with C{reason} (what
        its C{whenClosed()} fired with).
        """


class IStreamReceiver(Interface):
    """
    What an L{IStream} delivers to (e.g. the SOCKS server's connection).
    """

    def streamDataReceived(data):
        """
        C{data} (bytes) arrived on the stream.
        """

    def streamReadEnded():
        """
        The far end half-closed: no more data will arrive, we may still write.
        """

    def streamEnded(reason):
        """
        The stream is gone (END received or sent, or its circuit died).  A
        clean end from the far end (C{DONE}) always follows
        L{streamReadEnded}.

        @param reason: a L{meshvpn.onion.endreasons.EndReason}; C{DONE} for a
            normal close, C{DESTROY} when the circuit died.
        """


class IStreamOpener(Interface):
    """
    What the client's edge (SOCKS server) needs from the layer below: open
    streams and resolve names at an exit.  The circuit layer provides it by
    picking a circuit per isolation key and target (ICircuitManager); tests
    and the local "direct" mode provide it without circuits.

    Names are never resolved on this machine: C{host} is passed as given.
    """

    def openStream(host, port, isolationKey, early=None):
        """
        Open a stream to C{host}:C{port} through an exit.

        @param host: C{str}: an IPv4 or IPv6 literal or a DNS name (resolved
            at the exit).
        @param port: C{int}, 1..65535.
        @param isolationKey: a hashable key; streams with different keys
            never share a circuit (SOCKS username/password, listener, ...).
        @param early: the application's bytes sent before the stream opened
            (L{meshvpn.streams.optimistic.OptimisticData}, still filling while
            the stream opens), or C{None}.  An opener that can sends them
            right after BEGIN on every attempt (optimistic data); the
            caller writes L{OptimisticData.unsent} once the stream is open.
        @return: a Deferred firing with an L{IStream} once the exit reports
            CONNECTED.  Fails with L{meshvpn.errors.StreamRefused} whose
            C{reason} is a L{meshvpn.onion.endreasons.EndReason} (EXITPOLICY
            when the exit's policy rejects the target, RESOLVEFAILED,
            CONNECTREFUSED, TIMEOUT, NOROUTE, DESTROY when the circuit died,
            ...) or L{meshvpn.errors.NoPath} when no exit accepts the target.
        """

    def resolve(name, isolationKey):
        """
        Resolve C{name} at an exit (RESOLVE/RESOLVED).

        @return: a Deferred firing with a non-empty C{list} of IPv4/IPv6
            address strings.  Fails with L{meshvpn.errors.StreamRefused}
            (reason RESOLVEFAILED, TIMEOUT, ...) or L{meshvpn.errors.NoPath}.
        """

    def resolvePTR(address, isolationKey):
        """
        Reverse-resolve the IP literal C{address} at an exit.

        @return: a Deferred firing with a non-empty C{list} of names
            (C{str}); fails like L{resolve}.
        """


class IRelayCircuit(Interface):
    """
    A relay's hop of someone's circuit, as an L{ICircuitEdge} sees it
    (L{meshvpn.onion.relaycircuit.RelayCircuit}).
    """

    edgeState = Attribute("Free for the edge's use (the exit keeps its StreamMux here); starts C{None}.")
    closed = Attribute("C{bool}: the circuit is torn down.")
    maxData = Attribute("C{int}: data bytes per relay message on this hop (494; 488 with CGO relay crypto).")

    def sendRelay(command, streamId, data):
        """
        Send one relay message toward the origin.

        @return: C{False} if nothing was sent (closed, or DATA/PACKET that
            does not fit the circuit window).
        """

    def circuitRoom():
        """
        @return: the DATA/PACKET cells the circuit window takes now.
        """

    def sendPackets(packets):
        """
        Send IP packets toward the origin; those that do not fit the circuit
        window are dropped.

        @return: the number of packets sent.
        """

    def destroy(reason, why=""):
        """
        Tear the circuit down both ways with C{reason} (a DESTROY reason number).
        """


class ICircuitEdge(Interface):
    """
    Where relay cells end at the last hop of a circuit (an exit's stream and
    packet code).  Added by onion/: plugged into
    L{meshvpn.onion.switch.CircuitSwitch} as C{edge}.  The C{circuit}
    passed in is an L{IRelayCircuit}.
    """

    def relayReceived(circuit, command, streamId, data):
        """
        A recognized stream cell (BEGIN, DATA, END, RESOLVE, stream SENDME,
        ...) arrived; circuit-level flow control is already done.  An
        exception destroys only this circuit.
        """

    def packetsReceived(circuit, packets):
        """
        IP packets (C{list[bytes]}) arrived in packet mode, to be checked
        against the exit policy and written to the exit's TUN.
        """

    def circuitWindowOpened(circuit):
        """
        A circuit SENDME reopened C{circuit}'s send window: streams waiting
        for it may send again.
        """

    def circuitClosed(circuit, reason):
        """
        C{circuit} is gone (C{reason}: a DESTROY reason number); drop its streams.
        """


# --------------------------------------------------------------------------
# edges (exit/, client/)


class IExitPolicy(Interface):
    """
    Tor's accept/reject policy; first match wins.
    """

    def allows(address, port, protocol="tcp"):
        """
        @param address: an IPv4 or IPv6 address string (already resolved).
        @return: C{True} if the policy accepts the target.
        """

    def summary():
        """
        @return: a compact C{str} for the descriptor (accepted port ranges).
        """

    def allowsResolved(addresses, port):
        """
        The check made after DNS resolution at the exit (no rebinding a
        public name to a private address).

        @param addresses: the resolved address strings, in answer order.
        @return: the C{list} of those the policy accepts for C{port}, in
            order (empty: refuse with END reason EXITPOLICY).
        """


class IExitResolver(Interface):
    """
    DNS at the exit: names are resolved here, never at the client.
    """

    def resolve(name):
        """
        @return: a Deferred firing with a non-empty C{list} of IPv4/IPv6
            address strings (A and AAAA answers, cached by TTL).  Fails with
            L{meshvpn.errors.ResolveFailed}.
        """

    def resolvePTR(address):
        """
        @return: a Deferred firing with a non-empty C{list} of names for the
            IP literal C{address}.  Fails with L{meshvpn.errors.ResolveFailed}.
        """


class ITokenBucket(Interface):
    """
    A rate limiter driven by C{IReactorTime}.
    """

    def consume(amount):
        """
        @return: the number of seconds to wait before C{amount} bytes may be
            sent (0 if they may go now).  The tokens are taken either way.
        """

    def available():
        """
        @return: the tokens (bytes) available now; negative while in debt.
        """

    def tryConsume(amount=1):
        """
        Admission control (requests, handshakes, answers): take C{amount}
        tokens if they are there and return C{True}; otherwise take nothing
        and return C{False}.
        """


class ITunDevice(Interface):
    """
    A TUN network device, read and written through the reactor.
    """

    name = Attribute("C{str}: interface name.")
    mtu = Attribute("C{int}: the device MTU.")
    index = Attribute("C{int}: the kernel's interface index (routes name it).")

    def configure(addresses=(), routes=(), mtu=None):
        """
        Give the device C{addresses} (C{"a.b.c.d/len"}), C{routes} (CIDRs
        into it) and an MTU, and bring it up.
        """

    def addRoute(cidr, table=None, metric=None, mtu=None):
        """
        Route C{cidr} into the device (the route dies with it).
        """

    def status():
        """
        @return: a JSON-able dict (name, MTU, packet counters).
        """

    def setPacketReceiver(receiver):
        """
        C{receiver(packets: list[bytes])} gets every batch of IP packets read.
        """

    def writePackets(packets):
        """
        Write IP packets (a list of C{bytes}) to the device; a device may
        join a burst of TCP segments into one write (the kernel still checks
        every byte).
        """

    def close():
        """
        Close the fd; the kernel removes the device.
        """


class IRouteController(Interface):
    """
    Privileged routing changes for whole-system VPN mode: capture, kill
    switch, DNS, restore.  Kept behind an interface so everything above it
    runs without root.
    """

    keptPorts = Attribute("C{set} of C{(protocol, ip, port)} the kill switch lets out now.")

    def capture(tun, keepRoutes):
        """
        Route all traffic into C{tun} except to C{keepRoutes}
        (C{(protocol, ip, port)}: the DHT bootstrap nodes; more come
        through L{keep}).

        @return: a Deferred firing when routes and the kill switch are in place.
        """

    def restore():
        """
        @return: a Deferred firing when everything changed by L{capture} is
            undone.
        """

    def keep(destinations):
        """
        Keep more destinations (C{(protocol, ip, port)}) off the tunnel, in
        one batch: a host route via the route the address would take without
        the tunnel, and a kill-switch exception for the protocol and port.

        @return: the set of those that could not be kept (no route outside
            the tunnel).
        """

    def unkeep(destinations):
        """
        Remove the kill-switch exceptions of C{destinations}, and the host
        route of each address that has none left.
        """

    def refresh():
        """
        Look the route of every kept address up again and move its host
        route if it changed (a new default gateway), or put it back if the
        kernel removed it.

        @return: the addresses whose route changed.
        """


class IStatusSource(Interface):
    """
    Something that contributes to ``meshvpn status``.
    """

    def status():
        """
        @return: a JSON-serialisable C{dict}.  No key material, no payload.
        """


# --------------------------------------------------------------------------
# peer-measured bandwidth (measure/)


class ITrafficMeter(Interface):
    """
    Counts the bytes a relay exchanges with each authenticated neighbour,
    per link (never per cell), for its per-epoch report.
    """

    def drain():
        """
        @return: C{{peerNodeId: bytes}} exchanged (both directions) since
            the last call; the counts start again from zero.
        """


class IRelayWeights(Interface):
    """
    Relay weights computed from the relays' signed traffic reports
    (L{meshvpn.measure.aggregate}): the same reports give every client the
    same weights.
    """

    epoch = Attribute("C{int} or C{None}: the epoch the current weights were computed from.")
    epochLength = Attribute("C{int}: seconds per measurement epoch (a streak of n epochs is n times this).")

    def measurement(nodeId):
        """
        @return: the relay's L{meshvpn.measure.aggregate.RelayMeasure}
            (measured bandwidth, weight, streak, flags), or C{None} if the
            reports do not measure it and no probe stands in for them
            (flags C{measured} or C{probed}).
        """

    def weightOf(nodeId):
        """
        @return: the relay's path-selection weight (C{int}, 0 when reports
            name it but do not measure it), or C{None} if no report names it.
        """

    def report(nodeId):
        """
        @return: the relay's own last report (a
            L{meshvpn.measure.reports.Report}) the weights used, or C{None}.
        """

    def probedCapacity(nodeId):
        """
        @return: the relay's probed capacity (bytes/s: what its capacity
            probes' teams read it forwarding, L{meshvpn.measure.probed})
            the weights used, or C{None} if no assigned measurer read it.
        """


class IProbeSeeds(Interface):
    """
    The probe plan's seed as the network carries it: the relays'
    commitments and reveals (L{meshvpn.measure.seedservice}), so every
    relay and client draws an epoch's probe plan from the same seed and
    candidates, and nobody can choose it ahead of time.
    """

    def planInputs(epoch, attested=False):
        """
        @param attested: follow the seed most of the epoch's candidates
            say their plan used, when they agree (a client, after the fact).
        @return: C{(seed, candidates)}: the bytes to draw C{epoch}'s plan
            from and the frozenset of node ids that may be in it, or
            C{(b"", None)} when no commitment is known (the epoch alone,
            every relay: a network that carries no seed).
        """

    def read(epoch, nodeIds, retry=False):
        """
        Read the seed records of C{epoch} of C{nodeIds} (each once; with
        C{retry}, again those not found before).
        @return: a Deferred firing when done (never failing).
        """


# --------------------------------------------------------------------------
# the node (roles/)


class INode(Interface):
    """
    What a node (L{meshvpn.roles.node.Node}, a C{MultiService}) offers the
    services its role gives it, and nothing more: every other collaborator
    a service needs comes from the role, in its constructor or as a named
    child service (C{node.getServiceNamed(name)}).  Nothing is hung on the
    node.
    """

    reactor = Attribute("The reactor every child service uses (time, UDP, TCP).")
    identity = Attribute("The node's L{INodeIdentity}.")
    dataDir = Attribute("C{str}: the directory of the node's keys and state files.")
    udp = Attribute("The node's one UDP socket, an L{IDatagramMultiplexer}.")
    status = Attribute(
        "The node's status writer: C{addSource(name, source)} adds an "
        "L{IStatusSource} to what ``meshvpn status`` shows."
    )
    whenStarted = Attribute(
        "A new Deferred at each read, firing once the reactor runs and every "
        "listener listens, with the addresses the node announced "
        "(C{None} if it failed to start)."
    )

    def addresses():
        """
        @return: C{{"udp": "HOST:PORT", name: "HOST:PORT", ...}}: the UDP
            socket's address and that of every listener that is listening.
        """

    def addListener(name, listener):
        """
        Add C{listener}, a child service with C{whenListening}, C{port} and
        C{address()}; the node is started once it listens, and announces
        its address as C{name}.
        """


# --------------------------------------------------------------------------
# control (control/): what the control API, the dashboard and metrics use


class ICircuitSteering(Interface):
    """
    What the control plane may ask of the client's circuit manager, beyond
    L{ICircuitManager}.
    """

    relayFilter = Attribute(
        "C{None} or C{callable(relays) -> relays}: applied to the directory's "
        "L{RelayInfo} list before every path is chosen (pinned and excluded relays)."
    )

    def newIdentity():
        """
        No new stream may use a circuit built before now (Tor's NEWNYM):
        spare circuits close, circuits in use close once their streams end.

        @return: how many circuits were closed or retired.
        """


class IControlEvents(Interface):
    """
    The node's live events for the control API (C{/v1/events}): a bounded
    history, each event numbered so a client resumes where it stopped.
    An event's data never holds a key, a payload or a stream target unless
    the user turned history on.
    """

    def publish(kind, data):
        """
        Record event C{kind} (e.g. C{"circuit.built"}) with C{data} (a
        JSON-ready dict) and hand it to every subscriber.

        @return: the event, a dict C{{"id", "type", "time", "data"}}.
        """

    def subscribe(callback, since=None):
        """
        Call C{callback(event)} for every event from now on, after replaying
        the events numbered above C{since} still held (C{None}: none).

        @return: a callable that unsubscribes.
        """


class IControlModel(Interface):
    """
    What a running node shows and lets its user do, as JSON-ready dicts:
    the control API serves it, the dashboard and the CLI read it, metrics
    sample it.  Every read is cheap and synchronous; actions that cannot
    be done raise L{meshvpn.errors.ControlError} with a one-line reason.
    """

    def node():
        """@return: id, role, addresses, version, uptime."""

    def summary():
        """@return: one dict with node, nat, dht, links, circuits, vpn, bandwidth."""

    def circuits():
        """@return: a list: id, state, hops (id, flags, address), age, bytes each way."""

    def relays():
        """@return: the relays the node knows, with pinned/excluded marks and what the reports measure of each."""

    def weightsSummary():
        """@return: the epoch the relay weights come from and how many relays they measure, or C{None}."""

    def links():
        """@return: counts and one entry per open link."""

    def streams():
        """@return: open streams with their targets, only when history is on."""

    def vpn():
        """@return: the VPN's state, detail and kill switch, or C{configured: False}."""

    def bandwidth(seconds):
        """@return: up to C{seconds} per-second samples, oldest first."""

    def logs(level, limit):
        """@return: the last C{limit} log lines at C{level} or above."""

    def settings():
        """@return: the settings that can change at run time, with their values."""

    def newIdentity():
        """New circuits for new streams."""

    def closeCircuit(circuitId):
        """Close circuit C{circuitId} (an id from L{circuits})."""

    def steerRelay(relayId, action, position=None):
        """C{action}: C{"pin"} (at C{position}), C{"exclude"} or C{"clear"}."""

    def setVpn(up):
        """Start or stop VPN mode. @return: a Deferred firing with L{vpn}."""

    def setSetting(key, value):
        """
        Change a run-time setting, validated as in the config file.
        @raise meshvpn.errors.ConfigError: the same one line; nothing changed.
        """


# --------------------------------------------------------------------------
# payments (payments/, doc/payments.md)


class ISpentTokenStore(Interface):
    """
    The double-spending check: which tokens, per issuer key (one per epoch),
    were accepted.  Durable: an accepted spend survives a crash.
    """

    def spend(keyId, nullifier):
        """
        Record the token with C{nullifier} (32 bytes) under issuer key
        C{keyId} (its 32-byte token_key_id), on disk before returning.

        @return: C{True} if it was not spent before (it is now), C{False}
            if it was: a double spend.
        """

    def isSpent(keyId, nullifier):
        """@return: whether the token was already accepted."""

    def forgetKey(keyId):
        """Drop the whole list of C{keyId} (its epoch's tokens have expired)."""


class IIssuerKeys(Interface):
    """
    The public keys an exit checks tokens with: for each accepted issuer,
    the keys it published (signed by its node key) for the epochs whose
    tokens are spendable now.
    """

    def lookup(tokenKeyId):
        """
        @return: a L{meshvpn.payments.records.KnownKey} (issuer id, epoch,
            public key, and the window in which its tokens are spendable)
            if C{tokenKeyId} is a key an accepted issuer published, else
            C{None}.  The caller checks the window against its clock.
        """


class IMoneroWallet(Interface):
    """
    The part of a Monero wallet (monero-wallet-rpc) that selling and buying
    need.  Amounts are integers in atomic units (1 XMR = 10**12).
    """

    def createAddress(label):
        """
        A fresh subaddress of account 0, one per purchase.

        @return: a Deferred firing with C{(index, address)}.
        """

    def incoming(indices):
        """
        Incoming transfers to the subaddresses C{indices} of account 0,
        confirmed and in the pool.

        @return: a Deferred firing with a list of
            L{meshvpn.payments.monero.Incoming}.
        """

    def transfer(address, amount):
        """
        Pay C{amount} to C{address}.

        @return: a Deferred firing with C{(txid, fee)}.
        """

    def refresh():
        """Scan new blocks now. @return: a Deferred."""


class ITokenWallet(Interface):
    """
    A user's bandwidth tokens on disk, shared by the ``meshvpn wallet``
    command (which adds them) and the client node (which spends them).
    """

    def balance(now):
        """@return: C{{issuer id hex: {"usable": n, "waiting": n, "expired": n}}}."""

    def take(issuerId, now):
        """
        Claim one spendable token of C{issuerId} for spending (atomic across
        processes: no token is handed out twice).

        @return: a L{meshvpn.payments.tokens.Token} or C{None} if none is left.
        """
