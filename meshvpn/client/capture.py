"""Whole-system capture on the client: routes, kill switch, resolver (L{IRouteController}).

What C{capture} changes, and how each change is undone:

- IPv4 routes C{0.0.0.0/1} and C{128.0.0.0/1} into the TUN: more specific
  than any default route, and they vanish with the device, so a crash
  cannot leave them behind.  (The IPv6 ones, C{::/1} and C{8000::/1}, are
  added by L{meshvpn.client.vpn.TunClient} when it carries IPv6.)
- A host route (C{/32}, or C{/128} for an IPv6 relay; protocol
  L{RTPROT_MESHVPN}, so C{ip route show proto 196} and C{ip -6 route show
  proto 196} list them) to each address the client talks to outside the tunnel:
  DHT bootstrap nodes at start, then every guard, DHT or STUN peer the
  egress gate (L{meshvpn.client.egress}) lets out, added before its first
  packet and removed when it is no longer used.  The route is the one the
  address would take without the tunnel: L{bestRoute} looks it up in the
  main table ignoring the TUN and our own host routes, and L{refresh}
  moves the host routes when that changes (a new default gateway).
  Removed by C{restore} (and by C{meshvpn vpn-restore} after a crash).
- nftables table C{inet meshvpn-client-<id8>} (the kill switch): output
  policy drop, accepting only loopback, the TUN, TCP to the kept
  C{ip . port} pairs of links and UDP from the node's own sockets to the
  kept C{ip . port} pairs of its DHT/STUN peers (an app cannot reach other
  services on a relay's address outside the tunnel, nor use a relay's UDP
  port from another socket).  One set pair per family (C{keep4tcp},
  C{keep4udp}, C{keep6tcp}, C{keep6udp}): a node whose uplink is IPv6
  reaches its relays over IPv6 the same way.  Such a node must also answer
  and ask IPv6 neighbour discovery on its uplink (ARP's IPv6 counterpart,
  which a drop policy would block): solicitations and advertisements with
  hop limit 255 are let out, which RFC 4861 makes link-local (a receiver
  drops any other hop limit, so they cannot carry data past the first
  router); nothing else of IPv6 leaves outside the tunnel or the kept
  pairs.  A node without an IPv6 socket gets no such exception at all.
  TCP SYNs through the TUN get their MSS clamped to the route MTU.
  A crash leaves this table in place, which fails closed (nothing leaks,
  nothing works) until C{meshvpn vpn-restore} or the next start removes it.
- C{/etc/resolv.conf} rewritten in place (it may be a bind mount, e.g.
  C{ip netns exec}) to name the client's DNS server on its TUN address; the
  original is saved in the data dir first and written back by C{restore} or
  C{meshvpn vpn-restore}.
"""

import ipaddress
import os
import socket
import subprocess

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from meshvpn.interfaces import IRouteController

RESOLV_BACKUP = "resolv.conf.meshvpn-saved"
RTPROT_MESHVPN = 196  # the routing protocol number marking our host routes
MAIN_TABLE = 254
RTN_UNICAST = 1
PROTOCOLS = ("tcp", "udp")


def runNft(script):
    result = subprocess.run(["nft", "-f", "-"], input=script.encode(), capture_output=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"nft failed: {result.stderr.decode(errors='replace').strip()}")


FAMILIES = (4, 6)
_SET_TYPE = {4: "ipv4_addr", 6: "ipv6_addr"}
_DADDR = {4: "ip daddr", 6: "ip6 daddr"}
# What IPv6 neighbour discovery sends: router solicitation, neighbour solicitation and advertisement.
ND_TYPES = "nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert"


def familyOf(ip):
    """4 or 6 for an address string as L{directDestinations} writes it."""
    return 6 if ":" in ip else 4


def _elements(keep, protocol, family):
    return ", ".join(f"{ip} . {port}" for proto, ip, port in sorted(keep)
                     if proto == protocol and familyOf(ip) == family)


def _sourcePorts(udpSourcePort):
    """C{udp sport ...} for an int, an iterable of ints, or nothing (C{None}, empty: any port)."""
    if not udpSourcePort:
        return ""
    ports = sorted({int(p) for p in ((udpSourcePort,) if isinstance(udpSourcePort, int) else udpSourcePort) if p})
    if not ports:
        return ""
    if len(ports) == 1:
        return f"udp sport {ports[0]} "
    return f"udp sport {{ {', '.join(map(str, ports))} }} "


def killSwitchRules(table, tun, keep, udpSourcePort=None, ipv6Uplink=False):
    """
    @param keep: C{(protocol, ip, port)} of relays (guard link ports over
        TCP, DHT/STUN ports over UDP) that may be reached directly, either family.
    @param udpSourcePort: the node's own UDP port, or its ports (one per
        socket): UDP is let out only from them (C{None}: from any port).
    @param ipv6Uplink: the node talks IPv6 outside the tunnel (it has an
        IPv6 socket), so it needs neighbour discovery on its uplink.
    """
    sets = ""
    for family in FAMILIES:
        for proto in PROTOCOLS:
            elements = _elements(keep, proto, family)
            listed = f"        elements = {{ {elements} }}\n" if elements else ""
            sets += f"    set keep{family}{proto} {{\n        type {_SET_TYPE[family]} . inet_service\n{listed}    }}\n"
    sport = _sourcePorts(udpSourcePort)
    exceptions = "".join(f"        {_DADDR[f]} . tcp dport @keep{f}tcp accept\n"
                         f"        {sport}{_DADDR[f]} . udp dport @keep{f}udp accept\n" for f in FAMILIES)
    if ipv6Uplink:
        exceptions += f"        icmpv6 type {{ {ND_TYPES} }} ip6 hoplimit 255 accept\n"
    return f"""table inet {table} {{}}
delete table inet {table}
table inet {table} {{
{sets}    chain output {{
        type filter hook output priority filter; policy drop;
        oifname "lo" accept
        oifname "{tun}" tcp flags syn tcp option maxseg size set rt mtu
        oifname "{tun}" accept
{exceptions}        counter drop
    }}
    chain forward {{
        type filter hook forward priority filter; policy drop;
        oifname "{tun}" tcp flags syn tcp option maxseg size set rt mtu
        oifname "{tun}" accept
        iifname "{tun}" ct state established,related accept
    }}
}}
"""


def _elementScript(verb, table, keep):
    lines = []
    for family in FAMILIES:
        for proto in PROTOCOLS:
            elements = _elements(keep, proto, family)
            if elements:
                lines.append(f"{verb} element inet {table} keep{family}{proto} {{ {elements} }}\n")
    return "".join(lines)


def directAddress(host):
    """
    C{host} as the kill switch and the routes name it, or C{None} if it
    needs no exception: loopback and unspecified stay local; IPv6
    link-local and multicast are never a relay (a link-local address needs
    a scope the sets cannot hold); an IPv4-mapped IPv6 address (what a
    dual-stack socket reports for an IPv4 peer) is its IPv4 address, the
    family its packets have on the wire; names are never dialled here.
    """
    try:
        ip = ipaddress.ip_address(str(host).strip("[]").partition("%")[0])
    except ValueError:
        return None
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip.is_link_local or ip.is_multicast:
            return None
    if ip.is_loopback or ip.is_unspecified or ip.is_multicast:
        return None
    return str(ip)


def directDestinations(destinations):
    """
    The non-local C{(protocol, ip, port)} of C{destinations}, either family
    (C{(ip, port)} pairs stand for both protocols); the rest need no route
    (L{directAddress}).
    """
    out = set()
    for item in destinations:
        if len(item) == 2:
            host, port = item
            protocols = PROTOCOLS
        else:
            proto, host, port = item
            protocols = (proto,) if proto in PROTOCOLS else ()
        ip = directAddress(host)
        if ip is not None and isinstance(port, int) and 0 < port < 65536:
            out.update((proto, ip, port) for proto in protocols)
    return out


# -- route lookup without the tunnel


_AF = {4: socket.AF_INET, 6: socket.AF_INET6}
_ANY = {4: "0.0.0.0", 6: "::"}
_HOST_LEN = {4: 32, 6: 128}


def routeRows(ipr, family=4):
    """
    The main table's routes of one family as plain dicts (C{dst}, C{dst_len},
    C{oif}, C{gateway}, C{metric}, C{proto}, C{type}), for L{bestRoute}.
    """
    rows = []
    for msg in ipr.get_routes(family=_AF[family], table=MAIN_TABLE):
        oif, gateway = msg.get_attr("RTA_OIF"), msg.get_attr("RTA_GATEWAY")
        hops = msg.get_attr("RTA_MULTIPATH")
        if oif is None and hops:  # multipath: its first next hop
            oif = hops[0]["oif"]
            gateway = hops[0].get_attr("RTA_GATEWAY")
        rows.append({
            "dst": msg.get_attr("RTA_DST") or _ANY[family],
            "dst_len": msg["dst_len"],
            "oif": oif,
            "gateway": gateway,
            "metric": msg.get_attr("RTA_PRIORITY") or 0,
            "proto": msg["proto"],
            "type": msg["type"],
            "table": msg.get_attr("RTA_TABLE") or msg["table"],
        })
    return rows


def bestRoute(rows, address, ignoreOif=None):
    """
    The route C{address} takes without the tunnel: longest prefix, then
    lowest metric, among C{rows} (L{routeRows}), ignoring routes through
    C{ignoreOif} (the TUN) and our own host routes.  C{rows} and
    C{address} are of one family, either.

    @return: C{{"oif", "gateway"}} or C{None} (no route, or the best match
        is a blackhole/unreachable route).
    """
    ip = ipaddress.ip_address(address)
    bits = ip.max_prefixlen
    full = (1 << bits) - 1
    ip = int(ip)
    best = None
    for row in rows:
        if row.get("table", MAIN_TABLE) != MAIN_TABLE or row["proto"] == RTPROT_MESHVPN:
            continue
        if ignoreOif is not None and row["oif"] == ignoreOif:
            continue
        length = row["dst_len"]
        mask = (full << (bits - length)) & full if length else 0
        try:
            dst = ipaddress.ip_address(row["dst"])
        except ValueError:
            continue
        if dst.max_prefixlen != bits or int(dst) & mask != ip & mask:
            continue
        key = (-length, row["metric"] or 0)
        if best is None or key < best[0]:
            best = (key, row)
    if best is None or best[1]["type"] != RTN_UNICAST or best[1]["oif"] is None:
        return None
    row = best[1]
    return {"oif": row["oif"], "gateway": row["gateway"]}


@implementer(IRouteController)
class RouteController:
    """
    @param tag: names the nftables table (the node id prefix).
    @param dataDir: where the original resolv.conf is saved.
    @param dnsServer: the address to point the resolver at, or C{None} to leave it.
    @param udpSourcePort: C{callable() -> int, ints or None}, the node's UDP
        port(s) (the only source ports UDP exceptions apply to).
    @param ipv6Uplink: C{callable() -> bool}, whether the node talks IPv6
        outside the tunnel (has an IPv6 socket): its neighbour discovery is let out.
    """

    log = Logger()

    def __init__(self, tag, dataDir, dnsServer=None, resolvConf="/etc/resolv.conf", nft=runNft, ipr=None,
                 udpSourcePort=lambda: None, ipv6Uplink=lambda: False):
        self.table = f"meshvpn-client-{tag}"
        self.dataDir = dataDir
        self.dnsServer = dnsServer
        self.resolvConf = resolvConf
        self._nft = nft
        self._ipr = ipr
        self._udpSourcePort = udpSourcePort
        self._ipv6Uplink = ipv6Uplink
        self.tun = None
        # address -> the host route added for it (kwargs); None while its
        # route is gone (refresh puts it back once one exists again)
        self.kept = {}
        self.keptPorts = set()  # (protocol, ip, port) the kill switch lets out
        self.captured = False
        self.counters = {"routes_moved": 0, "no_route": 0}

    def _iproute(self):
        if self._ipr is None:
            from pyroute2 import IPRoute

            self._ipr = IPRoute()
        return self._ipr

    def _rows(self):
        """The main table of each family (an empty IPv6 one where the host has IPv6 turned off)."""
        ipr = self._iproute()
        rows = {4: routeRows(ipr, 4)}
        try:
            rows[6] = routeRows(ipr, 6)
        except Exception:
            rows[6] = []
        return rows

    def _tunIndex(self):
        return self.tun.index if self.tun is not None else None

    def capture(self, tun, keepRoutes):
        """
        @param keepRoutes: C{(protocol, ip, port)} to reach directly (the
            DHT bootstrap nodes): a host route per address, a kill-switch
            exception per entry.
        """
        keep = directDestinations(keepRoutes)
        self.tun = tun
        rows = self._rows()
        failed = set()
        for address in {ip for _, ip, _ in keep}:
            if not self._install(address, rows):
                failed |= {k for k in keep if k[1] == address}
        self.keptPorts = keep - failed
        self._nft(killSwitchRules(self.table, tun.name, self.keptPorts, self._udpSourcePort(), self._ipv6Uplink()))
        self.captured = True
        for cidr in ("0.0.0.0/1", "128.0.0.0/1"):
            tun.addRoute(cidr)
        if self.dnsServer is not None:
            self._pointResolver()
        return defer.succeed(None)

    def keep(self, destinations):
        new = directDestinations(destinations) - self.keptPorts
        if not new or not self.captured:
            return set()
        rows = self._rows()
        failed = set()
        for address in {ip for _, ip, _ in new}:
            if self.kept.get(address) is None and not self._install(address, rows):
                failed |= {k for k in new if k[1] == address}
        ok = new - failed
        if ok:
            self._nft(_elementScript("add", self.table, ok))
            self.keptPorts |= ok
        return failed

    def unkeep(self, destinations):
        gone = directDestinations(destinations) & self.keptPorts
        if not gone or not self.captured:
            return
        self._nft(_elementScript("delete", self.table, gone))
        self.keptPorts -= gone
        still = {ip for _, ip, _ in self.keptPorts}
        for address in {ip for _, ip, _ in gone} - still:
            self._deleteRoute(self.kept.pop(address, None))

    def refresh(self):
        if not self.captured or not self.kept:
            return []
        rows = self._rows()
        ours = {r["dst"]: r for family, table in rows.items() for r in table
                if r["proto"] == RTPROT_MESHVPN and r["dst_len"] == _HOST_LEN[family]}
        moved = []
        for address in list(self.kept):
            want = bestRoute(rows[familyOf(address)], address, self._tunIndex())
            have = ours.get(address)
            if want is None:
                if have is not None:
                    self._deleteRoute(self.kept[address])
                self.kept[address] = None
                continue
            if have is not None and (have["oif"], have["gateway"]) == (want["oif"], want["gateway"]):
                continue
            if self._install(address, rows, want):
                moved.append(address)
                self.counters["routes_moved"] += 1
                self.log.info("host route to {a} now via {gw} (interface {oif})", a=address,
                              gw=want["gateway"] or "on-link", oif=want["oif"])
        return moved

    def _install(self, address, rows, found=None):
        """
        Add (or replace) the host route to C{address} and record it in
        C{kept}.  @return: whether it has one now.
        """
        family = familyOf(address)
        found = found or bestRoute(rows[family], address, self._tunIndex())
        if found is None:
            self.counters["no_route"] += 1
            self.log.warn("no route to {a} outside the tunnel", a=address)
            return False
        route = _hostRoute(family, address, found["oif"])
        if found["gateway"]:
            route["gateway"] = found["gateway"]
        try:
            self._iproute().route("replace", **route)
        except Exception as e:
            self.log.warn("cannot add host route to {a}: {e}", a=address, e=str(e))
            return False
        self.kept[address] = route
        return True

    def _deleteRoute(self, route):
        if route is None or self._ipr is None:
            return
        try:
            self._ipr.route("del", **route)
        except Exception:
            pass  # already gone (its interface went away)

    def status(self):
        return {"host_routes": sum(1 for r in self.kept.values() if r is not None), "exceptions": len(self.keptPorts),
                **self.counters}

    def _pointResolver(self):
        backup = os.path.join(self.dataDir, RESOLV_BACKUP)
        try:
            with open(self.resolvConf, "rb") as f:
                original = f.read()
        except FileNotFoundError:
            original = b""
        if not os.path.exists(backup):  # a crashed run's backup is the real original
            tmp = backup + ".tmp"
            with open(tmp, "wb") as f:
                f.write(original)
            os.replace(tmp, backup)
        _writeInPlace(self.resolvConf, f"# written by meshvpn-client --tun; restored on stop\nnameserver {self.dnsServer}\n".encode())

    def restore(self):
        restoreSystem(self.table, self.dataDir, self.resolvConf, self._nft)
        for route in self.kept.values():
            self._deleteRoute(route)
        if self._ipr is not None:
            deleteHostRoutes(self._ipr)
        self.kept = {}
        self.keptPorts = set()
        self.captured = False
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None
        return defer.succeed(None)


def _hostRoute(family, address, oif):
    """The keyword arguments of pyroute2's C{route()} for our host route to C{address}."""
    route = {"dst": f"{address}/{_HOST_LEN[family]}", "oif": oif, "proto": RTPROT_MESHVPN}
    if family == 6:
        route["family"] = socket.AF_INET6
    return route


def deleteHostRoutes(ipr):
    """Delete every host route (either family) marked L{RTPROT_MESHVPN}. @return: how many."""
    n = 0
    for family in FAMILIES:
        try:
            rows = routeRows(ipr, family)
        except Exception:
            continue  # IPv6 turned off on this host
        for row in rows:
            if row["proto"] == RTPROT_MESHVPN and row["dst_len"] == _HOST_LEN[family]:
                route = _hostRoute(family, row["dst"], row["oif"])
                if row["gateway"]:
                    route["gateway"] = row["gateway"]
                try:
                    ipr.route("del", **route)
                    n += 1
                except Exception:
                    pass
    return n


def _writeInPlace(path, data):
    # Not rename: /etc/resolv.conf may be a bind mount or a symlink target we must keep.
    with open(path, "r+b" if os.path.exists(path) else "wb") as f:
        f.seek(0)
        f.write(data)
        f.truncate()


def restoreSystem(table, dataDir, resolvConf="/etc/resolv.conf", nft=runNft):
    """
    Undo what survives a crash: the kill-switch table and the resolver.
    Used by L{RouteController.restore} and ``meshvpn vpn-restore``.
    @return: a list of what was restored (for the command's output).
    """
    done = []
    try:
        nft(f"table inet {table} {{}}\ndelete table inet {table}\n")
        done.append(f"nftables table inet {table} deleted")
    except Exception as e:
        done.append(f"nftables: {e}")
    backup = os.path.join(dataDir, RESOLV_BACKUP)
    if os.path.exists(backup):
        with open(backup, "rb") as f:
            _writeInPlace(resolvConf, f.read())
        os.unlink(backup)
        done.append(f"{resolvConf} restored")
    return done
