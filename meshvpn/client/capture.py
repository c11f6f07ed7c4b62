"""Whole-system capture on the client: routes, kill switch, resolver (L{IRouteController}).

What C{capture} changes, and how each change is undone:

- IPv4 routes C{0.0.0.0/1} and C{128.0.0.0/1} into the TUN: more specific
  than any default route, and they vanish with the device, so a crash
  cannot leave them behind.
- A C{/32} host route to each relay the client links to (guards, DHT
  bootstrap), through the gateway the original route used, so links to
  guards never enter the tunnel.  Removed by C{restore}; harmless if left.
- nftables table C{inet meshvpn-client-<id8>} (the kill switch): output
  policy drop, accepting only loopback, the TUN and TCP/UDP to the kept
  relay ports (link and DHT ports: an app cannot reach other services on a
  relay's address outside the tunnel); IPv6 has no exception at all (blocked, never leaked); TCP SYNs
  through the TUN get their MSS clamped to the route MTU.  A crash leaves
  this table in place, which fails closed (nothing leaks, nothing works)
  until C{meshvpn vpn-restore} or the next start removes it.
- C{/etc/resolv.conf} rewritten in place (it may be a bind mount, e.g.
  C{ip netns exec}) to name the client's DNS server on its TUN address; the
  original is saved in the data dir first and written back by C{restore} or
  C{meshvpn vpn-restore}.
"""

import ipaddress
import os
import subprocess

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from meshvpn.interfaces import IRouteController

RESOLV_BACKUP = "resolv.conf.meshvpn-saved"


def runNft(script):
    result = subprocess.run(["nft", "-f", "-"], input=script.encode(), capture_output=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"nft failed: {result.stderr.decode(errors='replace').strip()}")


def killSwitchRules(table, tun, keep):
    """
    @param keep: C{(ip, port)} pairs of relays (guard link ports, DHT
        ports) that may be reached directly, over TCP or UDP.
    """
    elements = ", ".join(f"{ip} . {port}" for ip, port in sorted(keep))
    keepSet = f"        elements = {{ {elements} }}\n" if keep else ""
    return f"""table inet {table} {{}}
delete table inet {table}
table inet {table} {{
    set keep4 {{
        type ipv4_addr . inet_service
{keepSet}    }}
    chain output {{
        type filter hook output priority filter; policy drop;
        oifname "lo" accept
        oifname "{tun}" tcp flags syn tcp option maxseg size set rt mtu
        oifname "{tun}" accept
        meta l4proto {{ tcp, udp }} ip daddr . th dport @keep4 accept
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


def _ipv4Only(endpoints):
    """The IPv4, non-loopback C{(ip, port)} pairs of C{endpoints}."""
    out = set()
    for host, port in endpoints:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            continue
        if ip.version == 4 and not ip.is_loopback and isinstance(port, int) and 0 < port < 65536:
            out.add((str(ip), port))
    return out


@implementer(IRouteController)
class RouteController:
    """
    @param tag: names the nftables table (the node id prefix).
    @param dataDir: where the original resolv.conf is saved.
    @param dnsServer: the address to point the resolver at, or C{None} to leave it.
    """

    log = Logger()

    def __init__(self, tag, dataDir, dnsServer=None, resolvConf="/etc/resolv.conf", nft=runNft, ipr=None):
        self.table = f"meshvpn-client-{tag}"
        self.dataDir = dataDir
        self.dnsServer = dnsServer
        self.resolvConf = resolvConf
        self._nft = nft
        self._ipr = ipr
        self.tun = None
        self.kept = {}  # address -> the route kwargs added for it
        self.keptPorts = set()  # (ip, port) pairs the kill switch lets out
        self.captured = False

    def _iproute(self):
        if self._ipr is None:
            from pyroute2 import IPRoute

            self._ipr = IPRoute()
        return self._ipr

    def capture(self, tun, keepRoutes):
        """
        @param keepRoutes: C{(ip, port)} pairs of relays to reach directly:
            a host route per address, a kill-switch exception per pair.
        """
        keep = _ipv4Only(keepRoutes)
        self.tun = tun
        for address in {ip for ip, _ in keep}:
            self._keepRoute(address)
        self.keptPorts = set(keep)
        self._nft(killSwitchRules(self.table, tun.name, keep))
        self.captured = True
        for cidr in ("0.0.0.0/1", "128.0.0.0/1"):
            tun.addRoute(cidr)
        if self.dnsServer is not None:
            self._pointResolver()
        return defer.succeed(None)

    def keep(self, addresses):
        """Add relays (C{(ip, port)} pairs) to keep off the tunnel (guards discovered later)."""
        new = _ipv4Only(addresses) - self.keptPorts
        if not new or not self.captured:
            return
        for address in {ip for ip, _ in new} - set(self.kept):
            self._keepRoute(address)
        self.keptPorts |= new
        self._nft(f"add element inet {self.table} keep4 {{ {', '.join(f'{ip} . {port}' for ip, port in sorted(new))} }}\n")

    def _keepRoute(self, address):
        ipr = self._iproute()
        try:
            found = ipr.route("get", dst=address)
        except Exception as e:
            self.log.warn("no route to relay {a}: {e}", a=address, e=str(e))
            self.kept[address] = None
            return
        attrs = dict(found[0]["attrs"]) if found else {}
        oif = attrs.get("RTA_OIF")
        if self.tun is not None and oif == self.tun.index:
            self.kept[address] = None  # already captured: nothing better to keep
            return
        route = {"dst": f"{address}/32", "oif": oif}
        if attrs.get("RTA_GATEWAY"):
            route["gateway"] = attrs["RTA_GATEWAY"]
        try:
            ipr.route("replace", **route)
        except Exception as e:
            self.log.warn("cannot add host route to relay {a}: {e}", a=address, e=str(e))
            route = None
        self.kept[address] = route

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
        ipr = self._ipr
        for route in self.kept.values():
            if route is not None and ipr is not None:
                try:
                    ipr.route("del", **route)
                except Exception:
                    pass
        self.kept = {}
        self.captured = False
        if ipr is not None:
            ipr.close()
            self._ipr = None
        return defer.succeed(None)


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
