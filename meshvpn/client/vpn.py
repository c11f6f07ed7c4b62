"""The client's VPN mode (``twistd meshvpn-client --tun``): every app's IP traffic into circuits.

The TUN device gets the node's mesh address (L{meshvpn.client.mesh}) and
the routes and kill switch of L{meshvpn.client.capture}; packets read from
it go, in batches, to the mesh router (mesh addresses) or to one packet-mode
circuit (everything else), whose exit NATs them to the internet.  Replies
come back on the circuit and are written to the TUN.  IPv6 (C{--tun-ipv6},
on by default) goes the same way: the TUN gets a ULA address of the node's
own (L{CLIENT_NET6}), routes C{::/1} and C{8000::/1} take every global IPv6
destination into it, and the exit NATs it behind its IPv6 address; DNS
answers AAAA from the exit.  Non-global IPv6 (link-local, multicast, ULA)
is never sent to an exit.  An exit without IPv6 answers "administratively
prohibited", so apps fall back to IPv4 at once.  With C{--tun-ipv6 false},
or where the host has IPv6 turned off, IPv6 is dropped here and blocked by
the kill switch, as before.

What the node itself sends outside the tunnel (links to guards, DHT and
STUN datagrams) passes the egress gate (L{meshvpn.client.egress}), which
gives each destination its host route and kill-switch exception before the
first packet.

MTU: packets ride PACKET cells as C{length(2) | packet} records cut into
494-byte cell bodies (L{meshvpn.onion.packets}); the default 1480 makes a
full-size packet exactly three cells.  While no circuit is up (first start,
a hop died) a bounded queue holds the first packets and the rest are
dropped: TCP retransmits, and the kill switch keeps them from leaking.

State (L{VpnState}, in the log and in C{meshvpn status}): the VPN is I{up}
only once a circuit has carried traffic end to end -- the exit answered a
probe (a RESOLVE of the literal C{127.0.0.1}, the same for every client,
which the exit answers without asking any DNS server) or a packet came back
from it.  Before that the state says what it waits for.

What the circuit delivers is filtered before it reaches the TUN
(L{circuitPacketAllowed}): the far end of a circuit is an exit we do not
trust, and a packet in our TUN is believed by every local app.  Only
IPv4 packets to our TUN address from internet sources pass: never from
loopback, private, link-local, multicast or reserved space (which local
services trust), never from a mesh address (those come only from the mesh
router, authenticated per peer), except the exit's own ICMP errors from its
pool in 100.64.0.0/10 (path MTU discovery needs them).
"""

import enum
import ipaddress

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger
from zope.interface import implementer

from meshvpn.client.egress import EgressHold
from meshvpn.client.mesh import MESH_MTU, MESH_NET, MeshRouter, isMesh, meshAddress
from meshvpn.errors import StreamRefused
from meshvpn.interfaces import IStatusSource
from meshvpn.onion.flow import FLOW_GSO
from meshvpn.tun.offload import plainPackets

DEFAULT_MTU = 1480
MAX_WAITING = 256
MAX_WAITING_BYTES = MAX_WAITING * DEFAULT_MTU  # offloaded reads are up to 64 KB: the count alone would hold 16 MB
ISOLATION = ("tun",)

# First octets of sources never allowed from a circuit: 0/8, 10/8, 127/8,
# 224/4 (multicast), 240/4 (reserved, broadcast).  100, 169, 172 and 192
# are decided by the next octets (L{circuitPacketAllowed}).
_NEVER = frozenset((0, 10, 127, *range(224, 256)))
_ICMP_ERRORS = frozenset((3, 11))  # destination unreachable, time exceeded
# The client's own IPv6 on the TUN: a ULA per node (only ever a source the
# exit rewrites).  The exits' ICMPv6 errors come from their own /48.
CLIENT_NET6 = ipaddress.ip_network("fd6d:6573:6800::/48")
EXIT_NET6_PREFIX = ipaddress.ip_network("fd6d:6573:6801::/48").network_address.packed[:6]
PROBE_NAME = "127.0.0.1"
PROBE_TIMEOUT = 10.0


class VpnState(enum.Enum):
    WAITING = "waiting-for-relays"  # the directory does not yet hold a path (with a packet exit)
    BUILDING = "building-circuit"  # it does; a circuit is being built
    CHECKING = "checking"  # a circuit is built; waiting for the exit to answer through it
    UP = "up"  # a circuit has carried traffic end to end
    RECONNECTING = "reconnecting"  # was up; the circuit died, a new one is on its way
    MESH_ONLY = "mesh-only"  # --tun-capture false: mesh addresses only, no exit
    STOPPED = "stopped"


def circuitPacketAllowed(packet, address):
    """
    Whether a packet from a circuit may be written to the TUN whose address
    is C{address} (4 bytes).  A few byte comparisons: this runs per packet.
    """
    if len(packet) < 20 or packet[0] >> 4 != 4 or packet[16:20] != address:
        return False
    a, b = packet[12], packet[13]
    if a in _NEVER:
        return False
    if a == 100 and 64 <= b < 128:
        # Shared space: our mesh (100.96/11) never; the exit's pool only for its ICMP errors.
        ihl = (packet[0] & 15) * 4
        return b < 96 and packet[9] == 1 and 20 <= ihl < len(packet) and packet[ihl] in _ICMP_ERRORS
    if a == 169:
        return b != 254
    if a == 172:
        return not 16 <= b < 32
    if a == 192:
        return b != 168 and not (b == 0 and packet[14] == 0)
    return True


def clientAddress6(nodeId):
    """The node's IPv6 address on its TUN (C{str}): its /48 plus the first 80 bits of its id."""
    return str(CLIENT_NET6.network_address + int.from_bytes(nodeId[:10], "big"))


def isGlobal6(address):
    """C{address} (16 bytes) is in 2000::/3, the only IPv6 space an exit is asked to reach."""
    return address[0] & 0xE0 == 0x20


def circuitPacketAllowed6(packet, address6):
    """
    Whether an IPv6 packet from a circuit may be written to the TUN whose
    IPv6 address is C{address6}: to us, from global unicast space, or an
    ICMPv6 error from an exit's own /48 (packet too big, prohibited).
    """
    if len(packet) < 48 or packet[0] >> 4 != 6 or packet[24:40] != address6:
        return False
    if isGlobal6(packet[8:24]):
        return True
    return packet[8:14] == EXIT_NET6_PREFIX and packet[6] == 58 and packet[40] < 128


def resolveProbe(circuit):
    """
    Ask the exit, through C{circuit}, to resolve the literal C{127.0.0.1}:
    whatever it answers (an address, or an error since its policy refuses
    loopback) proves a round trip through every hop.

    @return: a Deferred firing C{True} once the exit answered, C{False} if
        it cannot tell (no stream layer, or the circuit closed first).
    """
    mux = circuit.streamHandler
    if mux is None:
        return defer.succeed(False)

    def refused(failure):
        failure.trap(StreamRefused)
        return mux.closedReason is None  # an END from the exit is an answer too

    return mux.resolve(PROBE_NAME).addCallbacks(lambda _: True, refused)


@implementer(IStatusSource)
class TunClient(service.Service):
    """
    @param getCircuit: C{callable() -> Deferred(circuit)}, a packet-mode
        circuit (C{sendPackets}, C{setPacketReceiver}, C{whenClosed}).
    @param opener: an L{IStreamOpener} for DNS (C{None}: no DNS server).
    @param keepSource: C{callable() -> iterable of (protocol, ip, port)}
        reached directly from the start (the DHT bootstrap nodes).
    @param routes: an L{IRouteController} or C{None} (no capture: tests, mesh only).
    @param gate: the L{meshvpn.client.egress.EgressGate} on C{routes}, or C{None}.
    @param egressUsers: what consults the gate while captured (the node's
        UDP multiplexer and link manager: C{setEgressGate}).
    @param census: C{callable() -> (relays known, whether a path can be
        built)}, for the state; C{None}: assume it can.
    @param probe: C{callable(circuit) -> Deferred(bool)}, L{resolveProbe}.
    @param meshConnector: a L{PeerConnector} for mesh peers, or C{None}.
    """

    log = Logger()

    def __init__(self, reactor, nodeId, getCircuit, opener=None, keepSource=lambda: (), routes=None, mtu=DEFAULT_MTU,
                 tunName="mvpn%d", tunFactory=None, meshConnector=None, meshPeers=(), dnsPort=53, gate=None,
                 egressUsers=(), census=None, probe=resolveProbe, probeTimeout=PROBE_TIMEOUT, tickEvery=1.0,
                 ipv6=False):
        self.reactor = reactor
        self.nodeId = nodeId
        self.address = meshAddress(nodeId)
        self._addressBytes = ipaddress.IPv4Address(self.address).packed
        self.ipv6 = ipv6  # carry IPv6 (turned off at start if the host cannot)
        self.address6 = clientAddress6(nodeId) if ipv6 else None
        self._address6Bytes = ipaddress.IPv6Address(self.address6).packed if ipv6 else None
        self._getCircuit = getCircuit
        self.opener = opener
        self.keepSource = keepSource
        self.routes = routes
        self.gate = gate
        self.egressUsers = list(egressUsers)
        # From now until the gate is up nothing the users send leaves: a service started
        # before this one (the circuit manager's first spare) waits instead of dialling outside it.
        self._hold = None
        if gate is not None:
            self._hold = EgressHold()
            for user in self.egressUsers:
                user.setEgressGate(self._hold)
        self.census = census
        self.probe = probe
        self.probeTimeout = probeTimeout
        self.tickEvery = tickEvery
        self.mtu = mtu
        self.tunName = tunName
        self._tunFactory = tunFactory
        self.meshConnector = meshConnector
        self.meshPeers = meshPeers
        self.dnsPort = dnsPort
        self.tun = None
        self.mesh = None
        self.dns = None
        self._ports = []
        self._circuit = None
        self._asking = None
        self._waiting = []
        self._tick = None
        self._probeTimer = None
        self._gated = False
        self.state = VpnState.STOPPED
        self.detail = ""
        self.stateSince = None
        self.startedAt = None
        self.upAfter = None  # seconds from start to the first "up"
        self._lostAt = None
        self._lastWhy = None
        self.counters = {"to_circuit": 0, "from_circuit": 0, "from_circuit_refused": 0, "ipv6_dropped": 0,
                         "ipv6_to_circuit": 0,
                         "no_circuit_dropped": 0, "circuits_used": 0}

    def startService(self):
        if self._tunFactory is None:
            from functools import partial

            from meshvpn.tun.device import TunDevice

            # virtio headers, so a burst of TCP segments can be one write (meshvpn.tun.coalesce)
            self._tunFactory = partial(TunDevice, offload=True)
        # A start after a stop (the control API's VPN switch) begins afresh: "up" is timed from
        # here, and packets queued before the stop are not sent after it.
        self.startedAt = self.reactor.seconds()
        self.upAfter = self._lostAt = self._lastWhy = None
        self._waiting = []
        self.tun = self._tunFactory(self.reactor, self.tunName, self.mtu)
        self.tun.configure(addresses=[f"{self.address}/32"])
        self._meshRoute()
        self._configure6()
        try:
            if self.routes is not None:
                self.routes.capture(self.tun, set(self.keepSource()))
                if self.ipv6:
                    for cidr in ("::/1", "8000::/1"):
                        self.tun.addRoute(cidr)
                if self.gate is not None:
                    self.gate.start(already=self.routes.keptPorts)
                    for user in self.egressUsers:
                        user.setEgressGate(self.gate)
                    self._gated = True
                    self._releaseHold(self.gate)
            if self.opener is not None:
                from meshvpn.client.vpndns import listenDNS

                self.dns, self._ports = listenDNS(self.reactor, self.address, self.opener, self.dnsPort,
                                                  ipv6=self.ipv6)
        except Exception:
            self._undo()
            raise
        self.mesh = MeshRouter(self.nodeId, self.meshConnector, self.meshPeers, self.tun.writePackets,
                               reactor=self.reactor)
        self.tun.setPacketReceiver(self._fromTun)
        super().startService()
        if self._getCircuit is None:
            self._setState(VpnState.MESH_ONLY, "no exit: mesh addresses only")
            self.log.info("VPN mesh addresses on {tun}: address {a}, mtu {mtu}", tun=self.tun.name, a=self.address,
                          mtu=self.mtu)
            return
        self._tick = task.LoopingCall(self._censusTick)
        self._tick.clock = self.reactor
        self._tick.start(self.tickEvery, now=False)
        self.log.info("VPN capture on {tun} (address {a}, mtu {mtu}); the kill switch holds until a circuit carries "
                      "traffic", tun=self.tun.name, a=self.address, mtu=self.mtu)
        self._waitingState()  # also when a request from before a stop is still out
        self._ensureCircuit()

    def _releaseHold(self, gate):
        hold, self._hold = self._hold, None
        if hold is not None:
            hold.release(gate)

    def _configure6(self):
        if not self.ipv6:
            return
        try:
            self.tun.configure(addresses=[f"{self.address6}/128"])
        except Exception as e:  # IPv6 turned off on this host (disable_ipv6), no IPv6 module...
            self.ipv6 = False
            self.log.warn("VPN: IPv6 stays blocked (the TUN cannot take an IPv6 address: {e})", e=str(e)[:200])

    def setMeshConnector(self, connector):
        """The node's L{PeerConnector} is ready (mesh links can come up after the TUN)."""
        self.meshConnector = connector
        if self.mesh is not None:
            self.mesh.setConnector(connector)

    def _meshRoute(self):
        self.tun.addRoute(str(MESH_NET), mtu=MESH_MTU)

    def stopService(self):
        super().stopService()
        self._setState(VpnState.STOPPED, "")
        self._undo()

    def _undo(self):
        if self._tick is not None and self._tick.running:
            self._tick.stop()
        self._cancelProbe()
        for port in self._ports:
            port.stopListening()
        self._ports = []
        if self._gated or self._hold is not None:
            for user in self.egressUsers:
                user.setEgressGate(None)
            self._gated = False
        self._releaseHold(None)  # not capturing (stopped, or the start failed): straight out
        if self.gate is not None:
            self.gate.stop()
        if self.routes is not None:
            self.routes.restore()
        if self._circuit is not None:
            self._circuit.setPacketReceiver(None)
            self._circuit = None
        if self.tun is not None:
            self.tun.close()

    # -- state

    def _setState(self, state, detail):
        if state is not self.state:
            self.stateSince = self.reactor.seconds()
            if state not in (VpnState.UP, VpnState.STOPPED):
                self.log.info("VPN {state}: {detail}", state=state.value, detail=detail)
        self.state = state
        self.detail = detail

    def _relayCensus(self):
        if self.census is None:
            return None, True
        try:
            return self.census()
        except Exception:
            self.log.failure("relay census failed")
            return None, True

    def _waitingState(self):
        """While asking for a circuit: waiting for relays, building, or reconnecting (with what it knows)."""
        known, enough = self._relayCensus()
        knows = "" if known is None else f"knows {known} relays; "
        last = f"; last try: {self._lastWhy}" if self._lastWhy else ""
        if self.upAfter is not None:
            self._setState(VpnState.RECONNECTING, f"{knows}building a new circuit{last}")
        elif enough:
            self._setState(VpnState.BUILDING, f"{knows}building a circuit{last}")
        else:
            self._setState(VpnState.WAITING,
                           f"{knows}a path needs a guard, a middle and a packet exit in distinct /16s{last}")

    def _censusTick(self):
        if self.state in (VpnState.WAITING, VpnState.BUILDING, VpnState.RECONNECTING):
            self._waitingState()

    # -- circuits

    def _ensureCircuit(self):
        if self._getCircuit is None:
            return  # mesh only: no exit
        if self._circuit is not None or self._asking is not None or not self.running:
            return
        self._waitingState()
        self._asking = defer.maybeDeferred(self._getCircuit)
        self._asking.addCallbacks(self._gotCircuit, self._noCircuit)

    def _gotCircuit(self, circuit):
        self._asking = None
        if not self.running:
            return
        self._circuit = circuit
        self.counters["circuits_used"] += 1
        circuit.setPacketReceiver(self._fromCircuit)
        circuit.whenClosed().addBoth(self._circuitClosed, circuit)
        if self._circuit is not circuit:
            return  # it was already closed
        self._lastWhy = None
        self._setState(VpnState.CHECKING, f"circuit {_describe(circuit)} built; waiting for the exit to answer")
        waiting, self._waiting = self._waiting, []
        if waiting:
            self._send(waiting)
        self._startProbe(circuit)

    def _startProbe(self, circuit):
        if self.state is not VpnState.CHECKING:
            return  # a packet came back already
        probing = defer.maybeDeferred(self.probe, circuit)
        probing.addCallbacks(self._probed, lambda f: False, (circuit,))
        if not probing.called:
            self._probeTimer = self.reactor.callLater(self.probeTimeout, self._probeTimedOut, circuit)

    def _probed(self, answered, circuit):
        if answered and circuit is self._circuit:
            self._carried(circuit, "the exit answered through it")

    def _probeTimedOut(self, circuit):
        self._probeTimer = None
        if circuit is self._circuit and self.state is VpnState.CHECKING:
            self.log.warn("VPN: no answer through circuit {c} after {t:g}s; closing it", c=_describe(circuit),
                          t=self.probeTimeout)
            circuit.close("timeout")

    def _cancelProbe(self):
        if self._probeTimer is not None and self._probeTimer.active():
            self._probeTimer.cancel()
        self._probeTimer = None

    def _carried(self, circuit, how):
        """C{circuit} carried traffic end to end: the VPN is up."""
        self._cancelProbe()
        if self.state is VpnState.UP:
            return
        now = self.reactor.seconds()
        if self.upAfter is None:
            self.upAfter = now - self.startedAt
            self.log.info("VPN up: circuit {c} carries traffic ({how}); {t:.2f}s after start", c=_describe(circuit),
                          how=how, t=self.upAfter)
        else:
            self.log.info("VPN up again: circuit {c} carries traffic ({how}); {t:.2f}s after the last one closed",
                          c=_describe(circuit), how=how, t=now - (self._lostAt or now))
        self._setState(VpnState.UP, f"circuit {_describe(circuit)}")

    def _noCircuit(self, failure):
        self._asking = None
        why = failure.getErrorMessage()
        if why != self._lastWhy:  # retried every second: say each reason once
            self.log.warn("no circuit for the VPN yet: {e}", e=why)
        self._lastWhy = why
        if self.running:
            self._waitingState()
        if self.running:
            self.reactor.callLater(1.0, self._ensureCircuit)

    def _circuitClosed(self, reason, circuit):
        if self._circuit is circuit:
            self._circuit = None
            self._cancelProbe()
            if self.running:
                if self.state is VpnState.UP:
                    self._lostAt = self.reactor.seconds()
                    self.log.info("VPN circuit {c} closed; reconnecting (the kill switch holds)", c=_describe(circuit))
                self._ensureCircuit()

    def _fromCircuit(self, packets):
        address = self._addressBytes
        address6 = self._address6Bytes if self.ipv6 else None
        allowed = [p for p in packets if circuitPacketAllowed(p, address)
                   or (address6 is not None and circuitPacketAllowed6(p, address6))]
        self.counters["from_circuit_refused"] += len(packets) - len(allowed)
        if not allowed:
            return
        self.counters["from_circuit"] += len(allowed)
        self.tun.writePackets(allowed)
        if self.state is not VpnState.UP and self._circuit is not None:
            self._carried(self._circuit, "a packet came back")

    # -- packets from apps

    def _fromTun(self, packets):
        toExit = []
        toMesh = None
        for p in packets:
            if p[0] >> 4 != 4 or len(p) < 20:
                if self.ipv6 and len(p) >= 40 and p[0] >> 4 == 6 and isGlobal6(p[24:40]):
                    self.counters["ipv6_to_circuit"] += 1
                    toExit.append(p)
                else:
                    self.counters["ipv6_dropped"] += 1  # link-local, multicast, ULA: never to an exit
                continue
            if isMesh(p[16:20]):
                if toMesh is None:
                    toMesh = [p]
                else:
                    toMesh.append(p)
                continue
            toExit.append(p)
        if toExit:
            self._send(toExit)
        if toMesh:
            errors = self.mesh.sendPackets(plainPackets(toMesh))
            if errors:
                self.tun.writePackets(errors)

    def _send(self, packets):
        circuit = self._circuit
        if self._getCircuit is None:
            self.counters["no_circuit_dropped"] += len(packets)
            return
        if circuit is None:
            room = MAX_WAITING - len(self._waiting)
            held = sum(len(p) for p in self._waiting)
            kept = 0
            for p in packets[:max(room, 0)]:
                held += len(p)
                if held > MAX_WAITING_BYTES:
                    break
                kept += 1
            self._waiting.extend(packets[:kept])
            self.counters["no_circuit_dropped"] += len(packets) - kept
            self._ensureCircuit()
            return
        if not getattr(circuit, "flowFlags", 0) & FLOW_GSO:
            packets = plainPackets(packets)  # an exit without offload records: cut here, as the kernel would
        self.counters["to_circuit"] += circuit.sendPackets(packets)

    def status(self):
        now = self.reactor.seconds()
        return {
            "state": self.state.value,
            "detail": self.detail,
            "state_for_s": round(now - self.stateSince, 3) if self.stateSince is not None else None,
            "up_after_s": round(self.upAfter, 3) if self.upAfter is not None else None,
            "circuit": _path(self._circuit),
            "tun": self.tun.status() if self.tun is not None else None,
            "address": self.address,
            "address6": self.address6 if self.ipv6 else None,
            "mesh": self.mesh.status() if self.mesh is not None else None,
            "dns_queries": self.dns.queries if self.dns is not None else 0,
            "egress": self.gate.status() if self.gate is not None else None,
            "routes": self.routes.status() if self.routes is not None else None,
            **self.counters,
        }


def _path(circuit):
    """The node ids (hex) of C{circuit}'s hops, guard first, if it tells them."""
    return [h.nodeId.hex() for h in circuit.path] if circuit is not None else []


def _describe(circuit):
    return " -> ".join(h[:8] for h in _path(circuit)) or "(path unknown)"


def tunSettings():
    """The client role's VPN settings (appended to its schema)."""
    from meshvpn.config import Setting, parseBool, parseText

    def parsePeers(raw):
        if isinstance(raw, (list, tuple)):
            return list(raw)
        peers = []
        for item in str(raw).split(","):
            item = item.strip()
            if item:
                b = bytes.fromhex(item)
                if len(b) != 32:
                    raise ValueError(f"mesh peer {item!r} is not a 64-hex-digit node id")
                peers.append(b)
        return peers

    def parseMtu(raw):
        mtu = int(raw)
        if not 576 <= mtu <= 9000:
            raise ValueError("tun MTU must be 576..9000")
        return mtu

    return [
        Setting("tun", parseBool, False, "VPN mode: route all IP traffic through circuits (TUN, kill switch, DNS); needs root.",
                flag=True),
        Setting("tun-name", parseText, "mvpn%d", "TUN interface name (%d: first free number)."),
        Setting("tun-mtu", parseMtu, DEFAULT_MTU, "TUN MTU; 1480 makes a full packet exactly 3 cells."),
        Setting("tun-capture", parseBool, True,
                "With --tun: capture all IPv4 (routes, kill switch, DNS); false = mesh addresses only."),
        Setting("tun-dns", parseBool, True, "Serve DNS on the TUN address (resolved at the exit) and point resolv.conf at it."),
        Setting("tun-ipv6", parseBool, True,
                "With --tun: carry IPv6 through the tunnel too (routes ::/1 and 8000::/1); false: block it."),
        Setting("resolv-conf", parseText, "/etc/resolv.conf", "The resolver file --tun rewrites while up (restored on stop)."),
        Setting("mesh-peers", parsePeers, [], "Comma-separated node ids (hex) of mesh peers reachable at their mesh address."),
    ]


def directPeers(bootstrap, finder, links=None):
    """
    C{(protocol, host, port)} the client talks to directly and keeps while
    listed: DHT bootstrap nodes (UDP), every relay in the directory (its DHT
    port over UDP, its link ports over TCP), and the peer of every open link.
    """
    out = set()
    for host, port in bootstrap or ():
        out.add(("udp", host.strip("[]"), port))
    for d in (finder.relays if finder is not None else {}).values():
        for transport, address in d.addresses:
            host, _, port = address.rpartition(":")
            if port.isdigit():
                out.add(("udp" if transport == "udp" else "tcp", host.strip("[]"), int(port)))
    for link in links.links() if links is not None else ():
        try:
            peer = link.transport.getPeer()
            out.add(("tcp", peer.host, peer.port))
        except Exception:
            continue  # not a TCP link, or already gone
    return out


def relayCensus(finder):
    """C{callable() -> (relays known, whether a VPN path can be built)} for L{TunClient}."""
    from meshvpn.circuits.relayinfo import pathPossible

    def census():
        usable = finder.usable() if finder is not None else []
        return len(usable), pathPossible(usable, packets=True)

    return census


def attachTun(node, settings, finder=None, getCircuit=None, opener=None, keepSource=None, meshConnector=None,
              links=None):
    """
    With C{--tun}, a L{TunClient} on C{node}: packet circuits from
    C{getCircuit} and DNS through C{opener} (both given by the role when it
    captures); when it captures, an egress gate on C{node.udp} and C{links}
    (the node's L{ILinkManager}).
    @return: the L{TunClient} or C{None}.
    """
    if not settings.get("tun"):
        return None
    from meshvpn.client.egress import EgressGate
    from meshvpn.client.capture import RouteController
    from meshvpn.tun.privileges import privilegeProblem

    problem = privilegeProblem()
    if problem and getCircuit is None:
        raise SystemExit(f"meshvpn-client: --tun {problem}")
    capture = settings.get("tun_capture", True)
    tag = node.identity.nodeId.hex()[:8]
    dnsServer = meshAddress(node.identity.nodeId) if opener is not None else None
    bootstrap = settings.get("bootstrap") or ()
    routes = gate = None
    egressUsers = []
    if capture:
        sockets = [s for s in (node.udpService, getattr(node, "udp6Service", None)) if s is not None]

        def udpPorts():
            return [s.port.getHost().port for s in sockets if s.port is not None]

        def ipv6Uplink():
            # An IPv6 socket talks IPv6 outside the tunnel (an IPv6-only node, or --udp6).
            return any(s.port is not None and ":" in s.port.getHost().host for s in sockets)

        routes = RouteController(tag, node.dataDir, dnsServer, settings.get("resolv_conf", "/etc/resolv.conf"),
                                 udpSourcePort=udpPorts, ipv6Uplink=ipv6Uplink)
        gate = EgressGate(node.reactor, routes, lambda: directPeers(bootstrap, finder, links))
        egressUsers = [u for u in (node.udp, links) if u is not None]
    client = TunClient(
        node.reactor, node.identity.nodeId, getCircuit, opener,
        # Open links too: after a stop and a start (the control API's VPN switch) the link to the
        # guard is already up, and no dial through the egress gate would give it its exception.
        keepSource or (lambda: directPeers(bootstrap, None, links)), routes,
        mtu=settings.get("tun_mtu", DEFAULT_MTU), tunName=settings.get("tun_name", "mvpn%d"),
        meshConnector=meshConnector,
        meshPeers=settings.get("mesh_peers", ()), gate=gate, egressUsers=egressUsers,
        census=relayCensus(finder) if finder is not None else None,
        ipv6=bool(capture and getCircuit is not None and settings.get("tun_ipv6", True)),
    )
    client.setServiceParent(node)
    node.status.addSource("tun", client)
    return client
