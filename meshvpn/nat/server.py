"""The STUN server a relay runs: Binding responses, RFC 5780 behaviour discovery.

It answers on the node's one UDP socket (through the node's L{StunEndpoint}).
Given a second address it also listens on the three other combinations of
{primary, alternate} IP x {primary, alternate} port, so that CHANGE-REQUEST
can be honoured and OTHER-ADDRESS / RESPONSE-ORIGIN can be reported
(RFC 5780 section 6).  Without one it refuses CHANGE-REQUEST with 420, which
is what tells a client the server cannot do behaviour discovery.

Abuse limits, because a STUN server answers strangers:
 - amplification: a response is never more than L{AMPLIFICATION} (4) times
   the size of the request it answers; optional attributes (SOFTWARE,
   OTHER-ADDRESS, RESPONSE-ORIGIN, ...) are left out, lowest value first,
   until it fits.  XOR-MAPPED-ADDRESS alone (32 or 44 bytes) always fits,
   since the smallest request is 20 bytes.  PADDING is echoed only within
   the same bound, so it cannot be used to amplify either.
 - rate: each source IP gets a token bucket (L{RATE} per second, burst
   L{BURST}); excess requests are dropped silently.  The table of sources is
   bounded (L{MAX_SOURCES}, least recently seen forgotten first).
"""

import ipaddress
from collections import Counter

from twisted.application import service
from twisted.internet import defer
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from meshvpn.hostport import formatHostPort
from meshvpn.nat import stun
from meshvpn.ratelimit import BucketTable

AMPLIFICATION = 4
RATE = 20.0
BURST = 40.0
MAX_SOURCES = 8192
SOFTWARE = b"meshvpn"
KNOWN_ATTRIBUTES = frozenset({stun.CHANGE_REQUEST, stun.RESPONSE_PORT, stun.PADDING, stun.USERNAME, stun.PRIORITY, stun.USE_CANDIDATE})

PRIMARY = (0, 0)


class StunServer:
    """
    Answers Binding requests.

    @param clock: L{IReactorTime} (for rate limiting).
    @param limiter: a L{BucketTable} keyed by source IP (default: L{RATE},
        L{BURST}, L{MAX_SOURCES}).
    @param sockets: dict mapping C{(ipIndex, portIndex)} (each 0 or 1) to
        C{(send, (host, port))}: how to send from that local address, and the
        address.  C{(0, 0)} is the node's socket.  With only C{(0, 0)} there
        is no RFC 5780 support.
    """

    log = Logger()

    def __init__(self, clock, sockets, software=SOFTWARE, limiter=None):
        self.sockets = dict(sockets)
        self.software = software
        self.limiter = limiter or BucketTable(clock, RATE, BURST, MAX_SOURCES)
        self.rfc5780 = len(self.sockets) == 4
        self.counters = Counter()

    def requestReceived(self, msg, source, arrivedOn=PRIMARY, requestSize=None):
        """Handle a decoded STUN request or indication that arrived on socket C{arrivedOn}."""
        if msg.method != stun.BINDING or msg.cls != stun.REQUEST:
            # Binding indications are keepalives: nothing to answer.
            return
        if not self.limiter.tryConsume(source[0]):
            self.counters["rate_limited"] += 1
            return
        requestSize = requestSize or (len(msg.raw) if msg.raw is not None else 20)
        self.counters["requests"] += 1
        try:
            response, origin, dest = self._answer(msg, source, arrivedOn)
        except stun.StunParseError:
            self.counters["bad_request"] += 1
            response, origin, dest = self._error(msg, 400, "Bad Request"), arrivedOn, source
        data = self._fit(response, requestSize, msg.hasFingerprint)
        send, _ = self.sockets[origin]
        send(data, dest)

    def _error(self, msg, code, reason, unknown=()):
        resp = msg.response(stun.ERROR).addErrorCode(code, reason)
        if unknown:
            resp.add(stun.UNKNOWN_ATTRIBUTES, stun.encodeUnknownAttributes(unknown))
        return [resp, []]

    def _answer(self, msg, source, arrivedOn):
        unknown = msg.unknownRequired(KNOWN_ATTRIBUTES)
        change = msg.get(stun.CHANGE_REQUEST)
        responsePort = msg.get(stun.RESPONSE_PORT)
        # A dual-stack node's alternate addresses are of its first family:
        # a request of the other family gets a plain Binding server.
        rfc5780 = self.rfc5780 and (":" in source[0]) == (":" in self.sockets[PRIMARY][1][0])
        if not rfc5780:
            # RFC 5780 6.1: a server without an alternate address rejects these.
            unknown += [t for t in (stun.CHANGE_REQUEST, stun.RESPONSE_PORT) if msg.has(t)]
        if unknown:
            return self._error(msg, 420, "Unknown Attribute", unknown), arrivedOn, source
        origin, dest = arrivedOn, source
        if change is not None:
            changeIP, changePort = stun.decodeChangeRequest(change)
            origin = (arrivedOn[0] ^ changeIP, arrivedOn[1] ^ changePort)
        if responsePort is not None:
            dest = (source[0], stun.decodeResponsePort(responsePort))
        resp = msg.response()
        resp.addXorAddress(stun.XOR_MAPPED_ADDRESS, source)
        optional = []
        if rfc5780:
            other = (1 - arrivedOn[0], 1 - arrivedOn[1])
            optional.append((stun.RESPONSE_ORIGIN, stun.encodeAddress(self.sockets[origin][1])))
            optional.append((stun.OTHER_ADDRESS, stun.encodeAddress(self.sockets[other][1])))
        padding = msg.get(stun.PADDING)
        if padding is not None:
            optional.append((stun.PADDING, bytes(len(padding))))
        if self.software:
            optional.append((stun.SOFTWARE, self.software))
        return [resp, optional], origin, dest

    def _fit(self, built, requestSize, fingerprint):
        """Encode with as many optional attributes as the amplification bound allows."""
        resp, optional = built
        limit = AMPLIFICATION * requestSize
        base = len(resp.encode())
        fpSize = 8 if fingerprint else 0
        size = base + fpSize
        for attrType, value in optional:
            cost = 4 + len(value) + (-len(value) % 4)
            if size + cost <= limit:
                resp.add(attrType, value)
                size += cost
            else:
                self.counters["trimmed"] += 1
        return resp.encode(fingerprint=fingerprint and size <= limit)


class _AlternateSocket(DatagramProtocol):
    """One of the three extra RFC 5780 sockets: STUN requests only."""

    def __init__(self, server, index):
        self.server = server
        self.index = index

    def datagramReceived(self, data, addr):
        if not stun.isStun(data):
            return
        try:
            msg = stun.StunMessage.decode(data)
        except stun.StunParseError:
            return
        self.server.requestReceived(msg, addr, self.index)

    def send(self, data, addr):
        try:
            self.transport.write(data, addr)
        except OSError:
            pass


def checkAlternate(udp, alternate):
    """
    @raise ValueError: C{alternate} cannot serve RFC 5780 next to the node's C{udp} address.
    """
    if alternate is None:
        return
    if ipaddress.ip_address(udp[0]).is_unspecified:
        raise ValueError("needs --udp bound to a specific IP address (the primary STUN address)")
    if alternate[0] == udp[0] or alternate[1] == udp[1] or alternate[1] == 0:
        raise ValueError("must differ from --udp in both IP and port (and not be port 0)")
    if ipaddress.ip_address(alternate[0]).version != ipaddress.ip_address(udp[0]).version:
        raise ValueError("must be the same IP version as --udp")


class StunServerService(service.Service):
    """
    Runs a L{StunServer} on the node's socket C{udp} (an
    L{IDatagramMultiplexer}) through that socket's L{StunEndpoint}, plus the
    RFC 5780 sockets when C{alternate} (an C{(ip, port)}) is given.
    """

    log = Logger()

    def __init__(self, reactor, udp, endpoint, alternate=None):
        self.reactor = reactor
        self.udp = udp
        self.endpoint = endpoint
        self.alternate = alternate
        self.server = None
        self._ports = []

    def startService(self):
        super().startService()
        reactor = self.reactor
        ep = self.endpoint
        host = self.udp.getHost()
        sockets = {PRIMARY: (self.udp.sendDatagram, (host.host, host.port))}
        if self.alternate is not None:
            altHost, altPort = self.alternate
            checkAlternate((host.host, host.port), self.alternate)
            self.server = StunServer(reactor, {})
            for index, addr in (((0, 1), (host.host, altPort)), ((1, 0), (altHost, host.port)), ((1, 1), (altHost, altPort))):
                proto = _AlternateSocket(self.server, index)
                self._ports.append(reactor.listenUDP(addr[1], proto, interface=addr[0]))
                sockets[index] = (proto.send, addr)
            self.server.sockets = sockets
            self.server.rfc5780 = True
        else:
            self.server = StunServer(reactor, sockets)
        ep.setMethodHandler(stun.BINDING, self.server.requestReceived)
        self.log.info(
            "STUN server on {addr}{extra}",
            addr=formatHostPort(host.host, host.port),
            extra=f" with RFC 5780 alternate {formatHostPort(*self.alternate)}" if self.alternate else "",
        )

    def stopService(self):
        super().stopService()
        self.endpoint.removeMethodHandler(stun.BINDING)
        ports, self._ports = self._ports, []
        return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports])
