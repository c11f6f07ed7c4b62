"""NAT behaviour discovery (RFC 5780 section 4) from one UDP socket.

What this socket's NAT does decides how peers reach us: with
endpoint-independent mapping our STUN-learned address works for everyone,
and filtering decides whether a peer's first packet gets in.  The tests:

 - Test I (to every server): are we reachable at all, what is our mapped
   address, does the server do RFC 5780 (OTHER-ADDRESS)?  If our mapped
   address is our local address, there is no NAT.
 - Filtering, run first because the mapping tests open the filter towards
   the server's alternate address: a request asking the server to answer
   from its other IP and port (CHANGE-REQUEST ip+port); if that answer gets
   in, filtering is endpoint-independent.  Otherwise one asking it to change
   only the port: if that gets in, address-dependent; else
   address-and-port-dependent.
 - Mapping: a request to the alternate IP (primary port).  Same mapped
   address: endpoint-independent.  Otherwise a request to the alternate IP
   and port: same as the last one, address-dependent; else
   address-and-port-dependent.
 - Hairpinning: a request sent to our own mapped address comes back to us.

The report is a plain dict, ready for JSON (see L{NATProbe.probe}).
"""

import socket

from twisted.internet import defer
from twisted.internet.protocol import DatagramProtocol
from zope.interface import implementer

from meshvpn.hostport import formatHostPort
from meshvpn.interfaces import INATProbe
from meshvpn.nat import stun
from meshvpn.nat.endpoint import StunEndpoint
from meshvpn.nat.transaction import StunTimeout

ENDPOINT_INDEPENDENT = "endpoint-independent"
ADDRESS_DEPENDENT = "address-dependent"
ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"
ENDPOINT_DEPENDENT = "endpoint-dependent"  # varies by destination; 5780 tests unavailable to tell which
UNKNOWN = "unknown"

# One-word summaries, in the classic cone vocabulary.
NO_NAT = "no-nat"
UDP_BLOCKED = "udp-blocked"
FULL_CONE = "full-cone"
ADDRESS_RESTRICTED = "address-restricted"
PORT_RESTRICTED = "port-restricted"
SYMMETRIC = "symmetric"


def summarize(udp, nat, mapping, filtering):
    """@return: the one-word NAT type for a report's fields."""
    if not udp:
        return UDP_BLOCKED
    if not nat:
        return NO_NAT
    if mapping in (ADDRESS_DEPENDENT, ADDRESS_AND_PORT_DEPENDENT, ENDPOINT_DEPENDENT):
        return SYMMETRIC
    if mapping == ENDPOINT_INDEPENDENT:
        return {
            ENDPOINT_INDEPENDENT: FULL_CONE,
            ADDRESS_DEPENDENT: ADDRESS_RESTRICTED,
            ADDRESS_AND_PORT_DEPENDENT: PORT_RESTRICTED,
        }.get(filtering, "nat-unknown-filtering")
    return "nat-unknown"


def localAddressFor(server, port):
    """
    The local address the kernel would send from to reach C{server}: a
    connected UDP socket's name (connect() on UDP sends nothing).
    """
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        s.connect(server)
        return (s.getsockname()[0], port)
    except OSError:
        return None
    finally:
        s.close()


def _fmt(addr):
    return None if addr is None else formatHostPort(addr[0], addr[1])


@implementer(INATProbe)
class NATProbe:
    """
    Classifies the NAT in front of the socket behind C{endpoint}.

    @param reactor: L{IReactorTime}.
    @param endpoint: the socket's L{StunEndpoint}.
    @param localPort: the socket's bound port (for the "no NAT" check).
    @param timing: C{(rto, rc, rm)} for each request; small by default so a
        whole probe of an unreachable network ends in a few seconds.
    """

    def __init__(self, reactor, endpoint, localPort, timing=(0.25, 4, 4), localAddresses=None, onlyTo=False):
        """
        @param onlyTo: send only to the servers given to L{probe}: no
            hairpinning test (a request to our own mapped address) and no
            mapping test through a server's alternate address (mapping is
            then told by comparing the servers' answers).  A running node
            probes so: its VPN's egress gate lets nothing else out.
        """
        self.reactor = reactor
        self.endpoint = endpoint
        self.localPort = localPort
        self.rto, self.rc, self.rm = timing
        self._localAddresses = localAddresses
        self.onlyTo = onlyTo

    def _ask(self, server, change=None, rc=None):
        req = stun.StunMessage(stun.BINDING, stun.REQUEST)
        req.add(stun.SOFTWARE, b"meshvpn netcheck")  # also keeps us clear of amplification trimming
        if change is not None:
            req.add(stun.CHANGE_REQUEST, stun.encodeChangeRequest(*change))
        return self.endpoint.client.request(req, server, self.rto, rc or self.rc, self.rm)

    async def _tryAsk(self, server, change=None, rc=None):
        try:
            return await self._ask(server, change, rc)
        except StunTimeout:
            return None

    def probe(self, servers):
        return defer.Deferred.fromCoroutine(self._probe(list(servers)))

    async def _probe(self, servers):
        report = {
            "udp": False,
            "nat": None,
            "type": UDP_BLOCKED,
            "mapping": UNKNOWN,
            "filtering": UNKNOWN,
            "hairpinning": None,
            "mapped_address": None,
            "mapped_addresses": [],
            "local_addresses": [],
            "rfc5780_server": None,
            "servers": [],
        }
        results = await defer.gatherResults([defer.Deferred.fromCoroutine(self._tryAsk(s)) for s in servers])
        primary = firstMapped = None
        local = set(self._localAddresses or ())
        for server, result in zip(servers, results):
            entry = {"server": _fmt(server), "answered": result is not None, "rtt_ms": None}
            report["servers"].append(entry)
            if self._localAddresses is None:
                mine = localAddressFor(server, self.localPort)
                if mine is not None:
                    local.add(mine)
            if result is None:
                continue
            msg = result.message
            entry["rtt_ms"] = round(result.rtt * 1000, 3)
            if msg.cls == stun.ERROR:
                entry["error"] = msg.errorCode()
                continue
            try:
                mapped = msg.getXorAddress() or msg.getAddress(stun.MAPPED_ADDRESS)
                other = msg.getAddress(stun.OTHER_ADDRESS)
                origin = msg.getAddress(stun.RESPONSE_ORIGIN)
            except stun.StunParseError as e:
                entry["error"] = str(e)
                continue
            if mapped is None:
                entry["error"] = "no mapped address in the response"
                continue
            entry.update(mapped=_fmt(mapped), other_address=_fmt(other), response_origin=_fmt(origin), software=msg.software())
            if _fmt(mapped) not in report["mapped_addresses"]:
                report["mapped_addresses"].append(_fmt(mapped))
            if firstMapped is None:
                firstMapped = mapped
            if primary is None and other is not None:
                primary = (server, mapped, other)
        report["local_addresses"] = sorted(_fmt(a) for a in local)
        answered = [e for e in report["servers"] if e.get("mapped")]
        if not answered:
            report["udp"] = any(e["answered"] for e in report["servers"])
            report["type"] = UDP_BLOCKED if not report["udp"] else "unknown"
            return report
        report["udp"] = True
        first = primary[1] if primary else firstMapped
        report["mapped_address"] = _fmt(first)
        report["nat"] = _fmt(first) not in report["local_addresses"]
        if primary is not None:
            server, m1, other = primary
            report["rfc5780_server"] = _fmt(server)
            report["filtering"] = await self._filtering(server)  # the server answers from elsewhere: nothing sent elsewhere
        if primary is not None and not self.onlyTo:
            report["mapping"] = await self._mapping(server, m1, other)
        elif len(report["mapped_addresses"]) > 1:
            report["mapping"] = ENDPOINT_DEPENDENT
        elif len(answered) > 1:
            report["mapping"] = ENDPOINT_INDEPENDENT
        if report["nat"] and not self.onlyTo:
            report["hairpinning"] = await self._hairpin(first)
        report["type"] = summarize(True, report["nat"], report["mapping"], report["filtering"])
        return report

    async def _filtering(self, server):
        both, portOnly = await defer.gatherResults(
            [
                defer.Deferred.fromCoroutine(self._tryAsk(server, (True, True))),
                defer.Deferred.fromCoroutine(self._tryAsk(server, (False, True))),
            ]
        )
        for r in (both, portOnly):
            if r is not None and (r.message.cls == stun.ERROR or r.source == server):
                # The server refused CHANGE-REQUEST or did not honour it.
                return UNKNOWN
        if both is not None:
            return ENDPOINT_INDEPENDENT
        if portOnly is not None:
            return ADDRESS_DEPENDENT
        return ADDRESS_AND_PORT_DEPENDENT

    async def _mapping(self, server, m1, other):
        r2 = await self._tryAsk((other[0], server[1]))
        m2 = _mappedOf(r2)
        if m2 is None:
            return UNKNOWN
        if m2 == m1:
            return ENDPOINT_INDEPENDENT
        m3 = _mappedOf(await self._tryAsk(other))
        if m3 is None:
            return UNKNOWN
        return ADDRESS_DEPENDENT if m3 == m2 else ADDRESS_AND_PORT_DEPENDENT

    async def _hairpin(self, mapped):
        req = stun.StunMessage(stun.BINDING, stun.REQUEST)
        came = defer.Deferred()
        self.endpoint.watchTransaction(req.transactionId, lambda msg, src: came.called or came.callback(True))
        asked = self.endpoint.client.request(req, mapped, self.rto, 3, 2)
        asked.addErrback(lambda f: None)
        asked.addCallback(lambda _: came.called or came.callback(False))
        try:
            return await came
        finally:
            self.endpoint.unwatchTransaction(req.transactionId)
            asked.cancel()


def _mappedOf(result):
    if result is None or result.message.cls != stun.SUCCESS:
        return None
    try:
        return result.message.getXorAddress() or result.message.getAddress(stun.MAPPED_ADDRESS)
    except stun.StunParseError:
        return None


class _Socket(DatagramProtocol):
    def __init__(self, reactor):
        self.endpoint = StunEndpoint(reactor, self.send)

    def send(self, data, addr):
        try:
            self.transport.write(data, addr)
        except OSError:
            pass

    def datagramReceived(self, data, addr):
        if stun.isStun(data):
            self.endpoint.datagramReceived(data, addr)


async def netcheck(reactor, servers, bind=("0.0.0.0", 0), timing=(0.25, 4, 4)):
    """
    Probe from a fresh UDP socket (fresh, so no earlier traffic has opened
    the NAT's filter) and close it.  @return: the report dict.
    """
    proto = _Socket(reactor)
    port = reactor.listenUDP(bind[1], proto, interface=bind[0])
    try:
        probe = NATProbe(reactor, proto.endpoint, port.getHost().port, timing)
        return await probe.probe(servers)
    finally:
        proto.endpoint.client.cancelAll()
        await defer.maybeDeferred(port.stopListening)
