"""Whole-system capture on the client: routes, kill switch, resolver (L{IRouteController}).

What C{capture} changes, and how each change is undone:

- IPv4 routes C{0.0.0.0/1} and C{128.0.0.0/1} into the TUN: more specific
  than any default route, and they vanish with the device, so a crash
  cannot leave them behind.
- A C{/32} host route (protocol L{RTPROT_MESHVPN}, so C{ip route show proto
  196} lists them) to each address the client talks to outside the tunnel:
  DHT bootstrap nodes at start, then every guard, DHT or STUN peer the
  egress gate (L{meshvpn.client.egress}) lets out, added before its first
  packet and removed when it is no longer used.  The route is the one the
  address would take without the tunnel: L{bestRoute} looks it up in the
  main table ignoring the TUN and our own host routes, and L{refresh}
  moves the host routes when that changes (a new default gateway).
  Removed by C{restore} (and by C{meshvpn vpn-restore} after a crash).
- nftables table C{inet meshvpn-client-<id8>} (the kill switch): output
  policy drop, accepting only loopback, the TUN, TCP to the kept
  C{ip . port} pairs of links and UDP from the node's own socket to the
  kept C{ip . port} pairs of its DHT/STUN peers (an app cannot reach other
  services on a relay's address outside the tunnel, nor use a relay's UDP
  port from another socket); IPv6 has no exception at all (blocked, never
  leaked); TCP SYNs through the TUN get their MSS clamped to the route MTU.
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


def _elements(keep, protocol):
    return ", ".join(f"{ip} . {port}" for proto, ip, port in sorted(keep) if proto == protocol)


def killSwitchRules(table, tun, keep, udpSourcePort=None):
    """
    @param keep: C{(protocol, ip, port)} of relays (guard link ports over
        TCP, DHT/STUN ports over UDP) that may be reached directly.
    @param udpSourcePort: the node's own UDP port: UDP is let out only from
        it (C{None}: from any port).
    """
    sets = ""
    for proto in PROTOCOLS:
        elements = _elements(keep, proto)
        listed = f"        elements = {{ {elements} }}\n" if elements else ""
        sets += f"    set keep4{proto} {{\n        type ipv4_addr . inet_service\n{listed}    }}\n"
    sport = f"udp sport {int(udpSourcePort)} " if udpSourcePort else ""
    return f"""table inet {table} {{}}
delete table inet {table}
table inet {table} {{
{sets}    chain output {{
        type filter hook output priority filter; policy drop;
        oifname "lo" accept
        oifname "{tun}" tcp flags syn tcp option maxseg size set rt mtu
        oifname "{tun}" accept
        ip daddr . tcp dport @keep4tcp accept
        {sport}ip daddr . udp dport @keep4udp accept
        counter drop
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
    for proto in PROTOCOLS:
        elements = _elements(keep, proto)
        if elements:
            lines.append(f"{verb} element inet {table} keep4{proto} {{ {elements} }}\n")
    return "".join(lines)


def directDestinations(destinations):
    """
    The IPv4, non-loopback C{(protocol, ip, port)} of C{destinations}
    (C{(ip, port)} pairs stand for both protocols); the rest need no route
    (loopback stays local, IPv6 is blocked, names are never dialled here).
    """
    out = set()
    for item in destinations:
        if len(item) == 2:
            host, port = item
            protocols = PROTOCOLS
        else:
            proto, host, port = item
            protocols = (proto,) if proto in PROTOCOLS else ()
        try:
            ip = ipaddress.ip_address(str(host).strip("[]"))
        except ValueError:
            continue
        if ip.version == 4 and not ip.is_loopback and not ip.is_unspecified and isinstance(port, int) and 0 < port < 65536:
            out.update((proto, str(ip), port) for proto in protocols)
    return out


# -- route lookup without the tunnel


def routeRows(ipr):
    """
    The main table's IPv4 routes as plain dicts (C{dst}, C{dst_len},
    C{oif}, C{gateway}, C{metric}, C{proto}, C{type}), for L{bestRoute}.
    """
    rows = []
    for msg in ipr.get_routes(family=socket.AF_INET, table=MAIN_TABLE):
        oif, gateway = msg.get_attr("RTA_OIF"), msg.get_attr("RTA_GATEWAY")
        hops = msg.get_attr("RTA_MULTIPATH")
        if oif is None and hops:  # multipath: its first next hop
            oif = hops[0]["oif"]
            gateway = hops[0].get_attr("RTA_GATEWAY")
        rows.append({
            "dst": msg.get_attr("RTA_DST") or "0.0.0.0",
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
    C{ignoreOif} (the TUN) and our own host routes.

    @return: C{{"oif", "gateway"}} or C{None} (no route, or the best match
        is a blackhole/unreachable route).
    """
    ip = int(ipaddress.IPv4Address(address))
    best = None
    for row in rows:
        if row.get("table", MAIN_TABLE) != MAIN_TABLE or row["proto"] == RTPROT_MESHVPN:
            continue
        if ignoreOif is not None and row["oif"] == ignoreOif:
            continue
        length = row["dst_len"]
        mask = (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF if length else 0
        if int(ipaddress.IPv4Address(row["dst"])) & mask != ip & mask:
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
    @param udpSourcePort: C{callable() -> int or None}, the node's UDP port
        (the only source port UDP exceptions apply to).
    """

    log = Logger()

    def __init__(self, tag, dataDir, dnsServer=None, resolvConf="/etc/resolv.conf", nft=runNft, ipr=None,
                 udpSourcePort=lambda: None):
        self.table = f"meshvpn-client-{tag}"
        self.dataDir = dataDir
        self.dnsServer = dnsServer
        self.resolvConf = resolvConf
        self._nft = nft
        self._ipr = ipr
        self._udpSourcePort = udpSourcePort
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
        return routeRows(self._iproute())

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
        self._nft(killSwitchRules(self.table, tun.name, self.keptPorts, self._udpSourcePort()))
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
        ours = {r["dst"]: r for r in rows if r["proto"] == RTPROT_MESHVPN and r["dst_len"] == 32}
        moved = []
        for address in list(self.kept):
            want = bestRoute(rows, address, self._tunIndex())
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
        found = found or bestRoute(rows, address, self._tunIndex())
        if found is None:
            self.counters["no_route"] += 1
            self.log.warn("no route to {a} outside the tunnel", a=address)
            return False
        route = {"dst": f"{address}/32", "oif": found["oif"], "proto": RTPROT_MESHVPN}
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


def deleteHostRoutes(ipr):
    """Delete every IPv4 host route marked L{RTPROT_MESHVPN}. @return: how many."""
    n = 0
    for row in routeRows(ipr):
        if row["proto"] == RTPROT_MESHVPN and row["dst_len"] == 32:
            route = {"dst": f"{row['dst']}/32", "oif": row["oif"], "proto": RTPROT_MESHVPN}
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
