"""The packet exit: IP packets from circuits to the internet and back.

Each circuit in packet mode gets a lease: one address from the exit's pool
(default 100.64.0.0/16, shared address space never routed on the internet;
the pool is only ever a *source*, the exit policy still rejects 100.64/10 as
a destination).  A packet from a circuit is parsed (strictly, see
L{meshvpn.tun.packets}), checked against the exit policy, its source
rewritten to the lease address and written to the exit's TUN; the kernel
forwards it and nftables masquerades it behind the exit's own address.
Replies come back out of the TUN addressed to the lease, are rewritten to
the client's own address and sent down that circuit.

Policy per packet: TCP uses the policy as streams do; UDP is judged by the
same address/port rules (Tor policies are port lists, operators think in
ports); ICMP echo is allowed when some port of the address is.  A rejected
packet is answered with ICMP "administratively prohibited"; an oversize
one with "fragmentation needed"; later fragments are dropped (counted).

IPv6 (with C{--packet-exit-pool6}, a ULA network): each lease also gets the
address at the same offset in that pool, packets are parsed by
L{meshvpn.tun.packets6} (routing headers and fragments refused), judged by
the same policy (its C{accept6}/C{reject6} rules), rewritten and
masqueraded behind the exit's own IPv6 address (NAT66: clients get no
address of their own on the internet, as with IPv4).  An oversize IPv6
packet is answered "packet too big" (IPv6 routers never fragment).  Without
the pool, IPv6 from a circuit is answered "administratively prohibited", so
the client's apps fall back to IPv4 at once.  Turning IPv6 forwarding on
makes Linux ignore router advertisements on interfaces with C{accept_ra=1}:
an exit whose own IPv6 comes from SLAAC needs C{accept_ra=2} first.  Leases are bounded (pool size, least recently used evicted) and
freed when their circuit closes or idles out.

nftables: one table per node (C{meshvpn-exit-<id8>}) holds the masquerade,
a forward filter (nothing from the internet opens a connection into the
pool; circuits cannot reach each other), MSS clamping and an input filter
(circuits cannot reach the exit host itself); it is replaced at start
(a crashed run's leftovers) and deleted at stop.
"""

import collections
import ipaddress
import subprocess

from twisted.application import service
from twisted.logger import Logger
from zope.interface import implementer

from meshvpn.interfaces import ICircuitEdge, IStatusSource
from meshvpn.onion.flow import FLOW_GSO
from meshvpn.onion.packets import OffloadPacket
from meshvpn.tun.offload import plainPackets, segmentPayloadSize

from meshvpn.tun.privileges import privilegeProblem
from meshvpn.tun.packets import (
    ICMP_ECHO,
    ICMP_UNREACH,
    PROTO_ICMP,
    PROTO_TCP,
    PROTO_UDP,
    UNREACH_ADMIN_PROHIBITED,
    UNREACH_FRAG_NEEDED,
    PacketError,
    icmpError,
    ipStr,
    parseIPv4,
    rewrite,
)
from meshvpn.tun.packets6 import (
    ICMP6_ECHO,
    ICMP6_PACKET_TOO_BIG,
    ICMP6_UNREACH,
    PROTO_ICMPV6,
    UNREACH6_ADMIN_PROHIBITED,
    icmp6Error,
    ip6Str,
    parseIPv6,
    rewrite6,
)

DEFAULT_POOL = "100.64.0.0/16"
# The source of an exit's ICMPv6 errors when it has no IPv6 pool; clients
# accept ICMPv6 errors from this /48 (meshvpn.client.vpn).
EXIT_NET6 = ipaddress.ip_network("fd6d:6573:6801::/48")
DEFAULT_GATEWAY6 = EXIT_NET6.network_address + 1
DEFAULT_MTU = 1480  # 3 cells of 494 data bytes minus the 2-byte record length
IDLE_TIMEOUT = 600.0


def packetAllowed(policy, info):
    """The exit policy verdict for one parsed packet (see the module docstring)."""
    dst = ipStr(info.dst)
    if info.proto == PROTO_TCP or info.proto == PROTO_UDP:
        if info.dport is None:
            return False  # later fragment: no port to judge
        return policy.allows(dst, info.dport, "tcp")
    if info.proto == PROTO_ICMP:
        return info.icmpType == ICMP_ECHO and policy.allowsAddress(dst)
    return False


def packetAllowed6(policy, info):
    """The exit policy verdict for one parsed IPv6 packet."""
    dst = ip6Str(info.dst)
    if info.proto == PROTO_TCP or info.proto == PROTO_UDP:
        return policy.allows(dst, info.dport, "tcp")
    if info.proto == PROTO_ICMPV6:
        return info.icmpType == ICMP6_ECHO and policy.allowsAddress(dst)
    return False


def runNft(script):
    """Apply an nftables script (C{nft -f -}); @raise RuntimeError: with nft's message."""
    result = subprocess.run(["nft", "-f", "-"], input=script.encode(), capture_output=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"nft failed: {result.stderr.decode(errors='replace').strip()}")


def deleteTable(family, name, nft=runNft):
    """Delete an nftables table if it exists (C{destroy} needs nft >= 1.0.8, so add-then-delete)."""
    nft(f"table {family} {name} {{}}\ndelete table {family} {name}\n")


class _Lease:
    __slots__ = ("address", "address6", "circuit", "clientAddress", "clientAddress6", "lastUsed")

    def __init__(self, address, circuit, now, address6=None):
        self.address = address
        self.address6 = address6
        self.circuit = circuit
        self.clientAddress = None
        self.clientAddress6 = None
        self.lastUsed = now


@implementer(IStatusSource)
class PacketExit(service.Service):
    """
    @param policy: an L{meshvpn.interfaces.IExitPolicy}.
    @param tunFactory: C{callable(reactor, name, mtu)} returning an
        L{ITunDevice} with C{configure(addresses=...)} (tests pass a fake).
    @param nft: C{callable(script)} applying an nftables script.
    """

    log = Logger()

    def __init__(self, reactor, policy, tag, pool=DEFAULT_POOL, mtu=DEFAULT_MTU, tunName="mvx%d",
                 tunFactory=None, nft=runNft, idleTimeout=IDLE_TIMEOUT, forwarding=True, pool6=None):
        self.reactor = reactor
        self.policy = policy
        self.table = f"meshvpn-exit-{tag}"
        self.pool = ipaddress.ip_network(pool)
        if self.pool.version != 4 or self.pool.num_addresses < 4:
            raise ValueError(f"packet exit pool must be an IPv4 network with room: {pool}")
        self.mtu = mtu
        self.tunName = tunName
        self._tunFactory = tunFactory
        self._nft = nft
        self.idleTimeout = idleTimeout
        self._forwarding = forwarding
        self._oldForward = None
        hosts = self.pool.hosts()
        self.gateway = next(hosts)
        self._gatewayBytes = self.gateway.packed
        self.pool6 = ipaddress.ip_network(pool6) if pool6 else None
        if self.pool6 is not None and (self.pool6.version != 6 or self.pool6.num_addresses < self.pool.num_addresses):
            raise ValueError(f"packet exit pool6 must be an IPv6 network at least as large as the IPv4 pool: {pool6}")
        self.gateway6 = self.pool6.network_address + 1 if self.pool6 is not None else DEFAULT_GATEWAY6
        self._gateway6Bytes = self.gateway6.packed
        self._oldForward6 = None
        self._byAddress6 = {}
        self._free = collections.deque(a.packed for a in hosts)
        self.maxLeases = len(self._free)
        self._byCircuit = {}
        self._byAddress = collections.OrderedDict()  # address -> lease, least recently used first
        self.tun = None
        self._sweeper = None
        self.counters = collections.Counter()
        # C{callable(circuit, packets) -> packets that may go}: a token-gated exit charges replies too.
        self.downloadGate = None

    # -- lifetime

    def startService(self):
        if self._tunFactory is None:
            from meshvpn.tun.device import TunDevice

            def factory(reactor, name, mtu):
                # Offload for the 64 KB segments circuits with FLOW_GSO carry; plain packets are never joined.
                return TunDevice(reactor, name, mtu, offload=True, join=False)

            self._tunFactory = factory
        self.tun = self._tunFactory(self.reactor, self.tunName, self.mtu)
        addresses = [f"{self.gateway}/{self.pool.prefixlen}"]
        if self.pool6 is not None:
            addresses.append(f"{self.gateway6}/{self.pool6.prefixlen}")
        self.tun.configure(addresses=addresses)
        self._nft(self.rules(self.tun.name))
        if self.pool6 is not None:
            self._nft(self.rules6(self.tun.name))
        if self._forwarding:
            self._oldForward = _setForwarding("1")
            if self.pool6 is not None:
                self._oldForward6 = _setForwarding("1", FORWARD6)
        self.tun.setPacketReceiver(self._fromTun)
        self._sweeper = self.reactor.callLater(self.idleTimeout / 4, self._sweep)
        super().startService()
        self.log.info("packet exit on {tun}: pool {pool}, mtu {mtu}", tun=self.tun.name, pool=str(self.pool), mtu=self.mtu)

    def stopService(self):
        super().stopService()
        if self._sweeper is not None and self._sweeper.active():
            self._sweeper.cancel()
        for family in ("ip", "ip6") if self.pool6 is not None else ("ip",):
            try:
                deleteTable(family, self.table, self._nft)
            except Exception as e:
                self.log.warn("could not delete nftables table {f} {t}: {e}", f=family, t=self.table, e=str(e))
        if self._oldForward is not None:
            _setForwarding(self._oldForward)
        if self._oldForward6 is not None:
            _setForwarding(self._oldForward6, FORWARD6)
        if self.tun is not None:
            self.tun.close()

    def rules(self, tun):
        pool = str(self.pool)
        return f"""table ip {self.table} {{}}
delete table ip {self.table}
table ip {self.table} {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr {pool} oifname != "{tun}" masquerade
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        iifname "{tun}" tcp flags syn tcp option maxseg size set rt mtu
        oifname "{tun}" tcp flags syn tcp option maxseg size set rt mtu
        iifname "{tun}" oifname "{tun}" drop
        oifname "{tun}" ct state established,related accept
        oifname "{tun}" drop
    }}
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname "{tun}" drop
    }}
}}
"""

    def rules6(self, tun):
        """The IPv6 table: the same masquerade and filters for the IPv6 pool."""
        return self.rules(tun).replace("table ip ", "table ip6 ").replace(f"ip saddr {self.pool}",
                                                                          f"ip6 saddr {self.pool6}")

    # -- the edge's packet sink

    def circuitPackets(self, circuit, packets):
        """Packets from C{circuit} (the relay-side circuit) to the internet."""
        out = []
        errors = []
        lease = None
        out6 = []
        for packet in packets:
            if packet and packet[0] >> 4 == 6:
                lease = self._circuitPacket6(circuit, packet, out6, errors, lease)
                continue
            try:
                info = parseIPv4(packet)
            except PacketError:
                self.counters["malformed"] += 1
                continue
            offloaded = type(packet) is OffloadPacket
            if (segmentPayloadSize(packet) if offloaded else info.total) > self.mtu:
                if info.dontFragment:
                    err = icmpError(packet, info, ICMP_UNREACH, UNREACH_FRAG_NEEDED, self._gatewayBytes, self.mtu)
                    if err is not None:
                        errors.append(err)
                self.counters["oversize"] += 1
                continue
            if info.fragOffset != 0 or not packetAllowed(self.policy, info):
                self.counters["rejected"] += 1
                err = icmpError(packet, info, ICMP_UNREACH, UNREACH_ADMIN_PROHIBITED, self._gatewayBytes)
                if err is not None:
                    errors.append(err)
                continue
            if lease is None:
                lease = self._lease(circuit)
            lease.clientAddress = info.src
            rewritten = rewrite(packet, info, src=lease.address, partial=offloaded)
            out.append(OffloadPacket(rewritten, packet.offload, packet.gsoSize) if offloaded else rewritten)
        out += out6
        if out:
            lease.lastUsed = self.reactor.seconds()
            self._byAddress.move_to_end(lease.address)
            self.counters["to_internet"] += len(out)
            self.tun.writePackets(out)
        if errors:
            circuit.sendPackets(errors)

    def _circuitPacket6(self, circuit, packet, out, errors, lease):
        """One IPv6 packet from C{circuit}: appended to C{out} rewritten, or answered in C{errors}.  @return: the lease."""
        try:
            info = parseIPv6(packet)
        except PacketError:
            self.counters["malformed6"] += 1
            return lease
        if self.pool6 is None or not packetAllowed6(self.policy, info):
            self.counters["rejected6"] += 1
            err = icmp6Error(packet, info, ICMP6_UNREACH, UNREACH6_ADMIN_PROHIBITED, self._gateway6Bytes)
            if err is not None:
                errors.append(err)
            return lease
        offloaded = type(packet) is OffloadPacket
        if (segmentPayloadSize(packet) if offloaded else len(packet)) > self.mtu:
            self.counters["oversize6"] += 1
            err = icmp6Error(packet, info, ICMP6_PACKET_TOO_BIG, 0, self._gateway6Bytes, self.mtu)
            if err is not None:
                errors.append(err)
            return lease
        if lease is None:
            lease = self._lease(circuit)
        lease.clientAddress6 = info.src
        rewritten = rewrite6(packet, info, src=lease.address6, partial=offloaded)
        out.append(OffloadPacket(rewritten, packet.offload, packet.gsoSize) if offloaded else rewritten)
        return lease

    def circuitClosed(self, circuit):
        lease = self._byCircuit.pop(circuit, None)
        if lease is not None:
            self._release(lease)

    def _lease(self, circuit):
        lease = self._byCircuit.get(circuit)
        if lease is not None:
            return lease
        if not self._free:
            _, oldest = self._byAddress.popitem(last=False)
            self._byCircuit.pop(oldest.circuit, None)
            self._free.append(oldest.address)
            if oldest.address6 is not None:
                self._byAddress6.pop(oldest.address6, None)
            self.counters["evicted"] += 1
        address = self._free.popleft()
        address6 = None
        if self.pool6 is not None:
            offset = int.from_bytes(address, "big") - int(self.pool.network_address)
            address6 = (self.pool6.network_address + offset).packed
        lease = _Lease(address, circuit, self.reactor.seconds(), address6)
        self._byCircuit[circuit] = lease
        self._byAddress[lease.address] = lease
        if address6 is not None:
            self._byAddress6[address6] = lease
        return lease

    def _release(self, lease):
        if self._byAddress.pop(lease.address, None) is not None:
            self._free.append(lease.address)
        if lease.address6 is not None:
            self._byAddress6.pop(lease.address6, None)

    def _sweep(self):
        cutoff = self.reactor.seconds() - self.idleTimeout
        while self._byAddress:
            address, lease = next(iter(self._byAddress.items()))
            if lease.lastUsed > cutoff:
                break
            self._byCircuit.pop(lease.circuit, None)
            self._release(lease)
        self._sweeper = self.reactor.callLater(self.idleTimeout / 4, self._sweep)

    # -- replies

    def _fromTun(self, packets):
        batches = {}
        for packet in packets:
            if packet and packet[0] >> 4 == 6:
                reply = self._reply6(packet)
                if reply is None:
                    continue
                lease, rewritten = reply
            else:
                try:
                    info = parseIPv4(packet)
                except PacketError:
                    self.counters["malformed_in"] += 1
                    continue
                lease = self._byAddress.get(info.dst)
                if lease is None or lease.clientAddress is None:
                    self.counters["no_lease"] += 1
                    continue
                if type(packet) is OffloadPacket:
                    rewritten = OffloadPacket(rewrite(packet, info, dst=lease.clientAddress, partial=True),
                                              packet.offload, packet.gsoSize)
                else:
                    rewritten = rewrite(packet, info, dst=lease.clientAddress)
            batch = batches.get(lease)
            if batch is None:
                batch = batches[lease] = []
            batch.append(rewritten)
        for lease, batch in batches.items():
            if self.downloadGate is not None:
                allowed = self.downloadGate(lease.circuit, batch)
                self.counters["gated_in"] += len(batch) - len(allowed)
                batch = allowed
                if not batch:
                    continue
            if not getattr(lease.circuit, "flowFlags", 0) & FLOW_GSO:
                batch = plainPackets(batch)  # a client without offload records: cut here, as the kernel would
            self.counters["from_internet"] += len(batch)
            lease.circuit.sendPackets(batch)

    def _reply6(self, packet):
        try:
            info = parseIPv6(packet)
        except PacketError:
            self.counters["malformed_in6"] += 1
            return None
        lease = self._byAddress6.get(info.dst)
        if lease is None or lease.clientAddress6 is None:
            self.counters["no_lease"] += 1
            return None
        if type(packet) is OffloadPacket:
            return lease, OffloadPacket(rewrite6(packet, info, dst=lease.clientAddress6, partial=True), packet.offload,
                                        packet.gsoSize)
        return lease, rewrite6(packet, info, dst=lease.clientAddress6)

    def status(self):
        return {"pool": str(self.pool), "pool6": str(self.pool6) if self.pool6 else None, "leases": len(self._byAddress),
                "mtu": self.mtu, "tun": self.tun.status() if self.tun is not None else None, **self.counters}


@implementer(ICircuitEdge)
class PacketExitEdge:
    """
    Wraps the exit's stream edge (an L{meshvpn.interfaces.ICircuitEdge}) so
    packet mode goes to a L{PacketExit} and closed circuits free their lease.
    """

    def __init__(self, inner, packetExit):
        self.inner = inner
        self.packetExit = packetExit

    def relayReceived(self, circuit, command, streamId, data):
        self.inner.relayReceived(circuit, command, streamId, data)

    def circuitWindowOpened(self, circuit):
        self.inner.circuitWindowOpened(circuit)

    def packetsReceived(self, circuit, packets):
        self.packetExit.circuitPackets(circuit, packets)

    def circuitClosed(self, circuit, reason):
        self.packetExit.circuitClosed(circuit)
        self.inner.circuitClosed(circuit, reason)


FORWARD4 = "/proc/sys/net/ipv4/ip_forward"
FORWARD6 = "/proc/sys/net/ipv6/conf/all/forwarding"


def _setForwarding(value, path=FORWARD4):
    with open(path) as f:
        old = f.read().strip()
    with open(path, "w") as f:
        f.write(value)
    return old


def attachPacketExit(node, settings, onion, exitParts, tunFactory=None):
    """
    The relay role's hook: with C{--packet-exit} on an exit, a L{PacketExit}
    on C{node} and the switch's edge wrapped so packet mode reaches it.
    @return: the L{PacketExit} or C{None}.
    """
    if not settings.get("packet_exit"):
        return None
    if exitParts is None:
        raise SystemExit("meshvpn-relay: config error: --packet-exit needs 'exit' in --flags")
    problem = privilegeProblem()
    if problem and tunFactory is None:
        raise SystemExit(f"meshvpn-relay: --packet-exit: {problem}")
    pe = PacketExit(node.reactor, exitParts.policy, node.identity.nodeId.hex()[:8], pool=settings["packet_exit_pool"],
                    tunFactory=tunFactory, pool6=settings.get("packet_exit_pool6"))
    pe.setServiceParent(node)
    onion.switch.edge = PacketExitEdge(onion.switch.edge, pe)
    node.status.addSource("packet_exit", pe)
    return pe


def packetExitSettings():
    from meshvpn.config import Setting, parseBool, parseText

    return [
        Setting("packet-exit", parseBool, False, "Carry IP packets (VPN mode) for circuits: needs root, a TUN and nftables.",
                flag=True),
        Setting("packet-exit-pool", parseText, DEFAULT_POOL, "IPv4 network whose addresses the packet exit gives to circuits."),
        Setting("packet-exit-pool6", parsePool6, None,
                "IPv6 (ULA) network for circuits' IPv6, e.g. fd6d:6573:6801::/112; unset: IPv6 refused "
                "(turns on IPv6 forwarding: see doc/vpn.md about accept_ra)."),
    ]


def parsePool6(raw):
    if raw in (None, "", "none"):
        return None
    try:
        net = ipaddress.ip_network(raw)
    except (TypeError, ValueError):
        net = None
    if net is None or net.version != 6 or not net.subnet_of(ipaddress.ip_network("fc00::/7")):
        raise ValueError("an IPv6 ULA network such as fd6d:6573:6801::/112, or 'none'")
    return str(net)

