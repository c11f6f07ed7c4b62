"""A relay's side of the directory through circuits: DHT datagrams from a circuit's origin, sent from our DHT socket.

A client that must not be seen talking to DHT nodes (doc/dht.md, "The
directory through circuits") hands its DHT requests to the last hop of a
short circuit in DHT_SEND messages (L{meshvpn.onion.dhtmsgs}); that hop
sends each from its own DHT socket and returns the one answer in
DHT_RECEIVED.  The client runs its own lookups and checks every signature
itself: this hop is trusted with nothing but carrying bytes.

What this hop refuses, so it is no open UDP reflector or amplifier
(C{DHT_REFUSED} says so to the origin, which only counts it):

  - anything that is not a well-formed DHT *request* marked as a client's
    (a client is never put in anyone's routing table, so no node probes us
    back for it);
  - destinations that are not DHT nodes as far as this relay knows: in its
    own routing table, its bootstrap list, itself, or a contact named in an
    answer this relay carried lately (bounded, expiring);
  - more than C{perCircuitRate} datagrams a second per circuit and
    C{rate} a second in total (token buckets), and more than
    C{pendingPerCircuit} / C{pending} answers outstanding.

Answers are matched by transaction id and source address to a request we
sent, at most one answer per request, within C{answerTimeout}; each is a
well-formed DHT response of the kind the request asked for, at most 1400
bytes (the DHT's cap), so what flows back is bounded by what went out.
Anything else arriving at our socket is the DHT node's, untouched.
"""

import collections
import ipaddress

import attrs
from twisted.logger import Logger
from zope.interface import implementer

from meshvpn.dht import wire
from meshvpn.dht.descriptor import DescriptorError, parseDescriptor
from meshvpn.dht.directory import udpAddress
from meshvpn.dht.records import RecordError, parseRecord
from meshvpn.interfaces import IStatusSource
from meshvpn.onion.cells import CellError, RelayCommand
from meshvpn.onion.dhtmsgs import (
    NOT_A_NODE, NOT_DHT, RATE_LIMITED, DatagramMessageError, Reassembler, encodePieces, encodeRefusal,
)
from meshvpn.ratelimit import TokenBucket

# STORE too: a VPN client's mesh rendezvous publishes its record (client/meshlink.py); a STORE needs the
# target's token for the relay's address and costs the target the signature check it costs from anyone
CLIENT_KINDS = frozenset((wire.PING, wire.FIND_NODE, wire.FIND_VALUE, wire.SAMPLE, wire.STORE))
_TXID = slice(3, 11)  # the header's transaction id (meshvpn.dht.wire._HEADER)


@attrs.define
class DatagramRelayLimits:
    """How much DHT traffic this relay carries for circuits; the defaults fit a client's lookups with room."""

    perCircuitRate: float = 50.0  # datagrams a second per circuit, sustained
    perCircuitBurst: float = 400.0  # one directory sampling asks ~350 questions at once (doc/dht.md)
    rate: float = 500.0  # ... for all circuits together
    burst: float = 2000.0
    pendingPerCircuit: int = 400
    pending: int = 4096
    answerTimeout: float = 10.0
    learned: int = 8192  # contact addresses remembered from answers carried
    learnedFor: float = 3600.0


def descriptorAddresses(raws):
    """
    The UDP addresses named by the relay descriptors among the raw records
    C{raws}, read without checking signatures (the client checks them; here
    an address only says where a DHT node may be).
    """
    out = []
    for raw in raws:
        try:
            d = parseDescriptor(parseRecord(raw).value, verify=False)
        except (RecordError, DescriptorError, ValueError):
            continue
        out.extend(a for a in (udpAddress(d, 4), udpAddress(d, 6)) if a is not None)
    return out


def normalise(addr):
    """C{(host, port)} with the host in the one text form of its address (IPv4-mapped IPv6 unmapped)."""
    host, port = addr[0], addr[1]
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip), port


class _CircuitState:
    __slots__ = ("reassembler", "bucket", "pending")

    def __init__(self, clock, limits):
        self.reassembler = Reassembler()
        self.bucket = TokenBucket(clock, limits.perCircuitRate, limits.perCircuitBurst)
        self.pending = 0


class _Pending:
    __slots__ = ("circuit", "kind", "call")


@implementer(IStatusSource)
class DHTDatagramRelay:
    """
    @param send: C{callable(data, addr)}: our DHT socket (the node's
        C{udp.sendDatagram}).
    @param isNode: C{callable((host, port)) -> bool}: whether our DHT knows
        that address as a node's (routing table, bootstrap list, ourselves).
    """

    log = Logger()

    def __init__(self, clock, send, isNode, limits=None):
        self.clock = clock
        self._send = send
        self._isNode = isNode
        self.limits = c = limits or DatagramRelayLimits()
        self._total = TokenBucket(clock, c.rate, c.burst)
        self._circuits = {}  # RelayCircuit -> _CircuitState
        self._pending = {}  # (txid, addr) -> _Pending
        self._learned = collections.OrderedDict()  # addr -> when it stops counting as a node
        self.counters = collections.Counter()

    # -- from circuits

    def received(self, circuit, body):
        """
        One DHT_SEND body from C{circuit}'s origin.

        @raise CellError: the body breaks the protocol (the circuit is destroyed).
        """
        state = self._circuits.get(circuit)
        if state is None:
            state = self._circuits[circuit] = _CircuitState(self.clock, self.limits)
        whole = state.reassembler.feedCell(body, self.counters, "refused_malformed", "DHT_SEND")
        if whole is None:
            return
        datagram, addr = whole
        addr = normalise(addr)
        msg, refusal = self._check(state, datagram, addr)
        if refusal is not None:
            circuit.sendRelay(RelayCommand.DHT_REFUSED, 0, encodeRefusal(refusal))
            return
        p = _Pending()
        p.circuit, p.kind = circuit, msg.kind
        key = (bytes(msg.txid), addr)
        old = self._pending.get(key)
        if old is not None:  # a retry of the same request: one answer still
            old.call.cancel()
            self._forget(key, old)
        p.call = self.clock.callLater(self.limits.answerTimeout, self._expired, key)
        self._pending[key] = p
        state.pending += 1
        self.counters["sent"] += 1
        self._send(datagram, addr)

    def _check(self, state, datagram, addr):
        """@return: C{(request, None)} if it may go, else C{(None, refusal reason)}."""
        c = self.limits
        try:
            msg = wire.decode(datagram)
        except wire.WireError:
            msg = None
        if msg is None or msg.kind not in CLIENT_KINDS or not msg.clientMode:
            self.counters["refused_not_dht"] += 1
            return None, NOT_DHT
        if not self._knownNode(addr):
            self.counters["refused_not_a_node"] += 1
            return None, NOT_A_NODE
        if state.pending >= c.pendingPerCircuit or len(self._pending) >= c.pending:
            self.counters["refused_pending"] += 1
            return None, RATE_LIMITED
        if not state.bucket.tryConsume() or not self._total.tryConsume():
            self.counters["refused_rate"] += 1
            return None, RATE_LIMITED
        return msg, None

    def _knownNode(self, addr):
        until = self._learned.get(addr)
        if until is not None:
            if until > self.clock.seconds():
                return True
            del self._learned[addr]
        return bool(self._isNode(addr))

    def circuitClosed(self, circuit):
        """C{circuit} is gone: its answers, if they come, are the DHT node's to drop."""
        if self._circuits.pop(circuit, None) is None:
            return
        for key, p in list(self._pending.items()):
            if p.circuit is circuit:
                del self._pending[key]
                p.call.cancel()

    # -- from our DHT socket

    def datagramReceived(self, data, addr):
        """
        A datagram at our DHT socket, before the DHT node sees it.

        @return: C{True} if it answered a request we relayed (it is ours,
            carried back or dropped), C{False} if it is the DHT node's.
        """
        if len(data) < wire.HEADER_LEN or not self._pending:
            return False
        try:
            addr = normalise(addr)
        except ValueError:
            return False
        key = (bytes(data[_TXID]), addr)
        p = self._pending.get(key)
        if p is None:
            return False
        try:
            msg = wire.decode(data)
        except wire.WireError:
            msg = None
        if msg is None or msg.kind not in wire.RESPONSES:
            # our own request looping to our own address, or junk: not an answer to anyone
            return msg is None and self._dropped("dropped_malformed")
        self._forget(key, p)
        p.call.cancel()
        if msg.kind != wire.REQUESTS[p.kind]:
            return self._dropped("dropped_wrong_kind")
        self._learn(msg)
        try:
            pieces = encodePieces(bytes(data), addr, p.circuit.maxData)
        except DatagramMessageError:
            return self._dropped("dropped_malformed")
        for piece in pieces:
            p.circuit.sendRelay(RelayCommand.DHT_RECEIVED, 0, piece)
        self.counters["answered"] += 1
        return True

    def _dropped(self, counter):
        self.counters[counter] += 1
        return True

    def _learn(self, msg):
        if msg.kind == wire.NODES:
            addrs = [peer.address for peer in msg.payload]
        elif msg.kind == wire.VALUE:
            # contacts, and the DHT addresses of the relay descriptors among the records (a
            # client's live check pings those)
            addrs = [peer.address for peer in msg.payload[1]] + descriptorAddresses(msg.payload[0])
        else:
            return
        until = self.clock.seconds() + self.limits.learnedFor
        learned = self._learned
        for addr in addrs:
            try:
                addr = normalise(addr)
            except ValueError:
                continue
            learned[addr] = until
            learned.move_to_end(addr)
        while len(learned) > self.limits.learned:
            learned.popitem(last=False)

    def _forget(self, key, p):
        self._pending.pop(key, None)
        state = self._circuits.get(p.circuit)
        if state is not None:
            state.pending -= 1

    def _expired(self, key):
        p = self._pending.get(key)
        if p is not None:
            self._forget(key, p)
            self.counters["timeouts"] += 1

    def status(self):
        return {"circuits": len(self._circuits), "pending": len(self._pending), "learned": len(self._learned),
                "counters": dict(self.counters)}
