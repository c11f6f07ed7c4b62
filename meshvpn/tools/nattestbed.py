"""A NAT testbed in network namespaces: real kernel NATs built with nftables.

Layout (all names unique per build, all removed on cleanup):

    STUN ns (198.18.0.1 + .2, meshvpn-relay with RFC 5780)   coturn ns (.3 + .4)
                    \\                                        /
                     +---------- "public" bridge ----------+------ no-NAT host (.10+k)
                    /            198.18.0.0/24              \\
        NAT box k (WAN 198.18.0.10+k) ...              more boxes
              |  LAN 198.19.k.1/24
        host k (198.19.k.2, default route via its box)

Only 198.18.0.0/15 is used: 198.18.0.0/24 is the "internet", 198.19.k.0/24
the private side of box k (kept inside the reserved benchmark range on
purpose, so nothing here can collide with a real network).

Each box emulates one NAT type with nftables (see L{RULES}):
 - full-cone: masquerade (ports preserved => endpoint-independent mapping),
   and any inbound UDP to a port the host has used is DNATed to the host.
   It also hairpins (the only box that does, see L{HAIRPINNING}).
 - address-restricted: same, but inbound is let in only from an IP the host
   has sent to (a dynamic set of destination IP . source port).
 - port-restricted: masquerade, inbound only as conntrack replies
   (exact remote IP and port).
 - symmetric: masquerade with random ports (a new port per destination),
   inbound only as conntrack replies.
 - udp-blocked: masquerade, but the box drops all forwarded UDP.
 - no-nat: the host sits on the public segment itself.

Use L{build}; the object it returns has C{hosts} (name -> L{Host}), the
public STUN addresses, and C{run}/C{popen} to run commands in a host.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

from meshvpn.hostport import formatHostPort
from meshvpn.tools.netns import Netns, run

NAT_TYPES = ("full-cone", "address-restricted", "port-restricted", "symmetric", "no-nat", "udp-blocked")

PUBLIC_NET = "198.18.0"
STUN_PRIMARY = ("198.18.0.1", 3478)
STUN_ALTERNATE = ("198.18.0.2", 3479)
COTURN_PRIMARY = ("198.18.0.3", 3478)
COTURN_ALTERNATE = ("198.18.0.4", 3479)

_COMMON_HEAD = """
table ip natbox {{
  set seenport {{ type inet_service; flags dynamic,timeout; timeout 3m; }}
  set seenaddr {{ type ipv4_addr . inet_service; flags dynamic,timeout; timeout 3m; }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname "{wan}" masquerade {masqFlags}
    {hairpinSnat}
  }}
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    {inbound}
  }}
  chain forward {{
    type filter hook forward priority filter; policy drop;
    {blockUDP}
    iifname "{lan}" oifname "{wan}" meta l4proto udp update @seenport {{ udp sport }} update @seenaddr {{ ip daddr . udp sport }}
    iifname "{lan}" oifname "{wan}" accept
    ct state established,related accept
    ct status dnat accept
  }}
}}
"""

# What differs between the boxes: masquerade flags, which unsolicited
# inbound UDP is DNATed to the host, whether UDP is dropped altogether.
RULES = {
    "full-cone": dict(
        masqFlags="",
        inbound='iifname "{wan}" udp dport @seenport dnat to {host}\n'
        # hairpinning: the host's packet to its own mapped address comes back
        # to it, from that mapped address
        '    iifname "{lan}" ip daddr {wanIP} udp dport @seenport dnat to {host}',
        blockUDP="",
        hairpinSnat='oifname "{lan}" iifname "{lan}" ct status dnat snat to {wanIP}',
    ),
    "address-restricted": dict(
        masqFlags="", inbound='iifname "{wan}" ip saddr . udp dport @seenaddr dnat to {host}', blockUDP=""
    ),
    "port-restricted": dict(masqFlags="", inbound="", blockUDP=""),
    "symmetric": dict(masqFlags="random", inbound="", blockUDP=""),
    "udp-blocked": dict(masqFlags="", inbound="", blockUDP="meta l4proto udp drop"),
}


HAIRPINNING = {"full-cone": True}


def natRules(natType, wan, lan, host, wanIP):
    """@return: the nftables script for a box emulating C{natType}."""
    parts = {"hairpinSnat": ""}
    parts.update({k: v.format(wan=wan, lan=lan, host=host, wanIP=wanIP) for k, v in RULES[natType].items()})
    return _COMMON_HEAD.format(wan=wan, lan=lan, **parts)


class Host:
    """
    One end host.

    @ivar name: e.g. C{"symmetric"}.
    @ivar ns: its namespace.
    @ivar natType: what its box emulates (one of L{NAT_TYPES}).
    @ivar address: its own (private, or public for no-nat) IP.
    @ivar publicAddress: its box's WAN IP (its own IP for no-nat).
    @ivar box: the box namespace, or None.
    """

    def __init__(self, name, ns, natType, address, publicAddress, box):
        self.name, self.ns, self.natType = name, ns, natType
        self.address, self.publicAddress, self.box = address, publicAddress, box

    def __repr__(self):
        return f"<Host {self.name} {self.natType} {self.address} via {self.publicAddress}>"


class Cleanups:
    """
    Stands in for a TestCase outside trial (benchmarks): collects cleanups
    and runs them, last first, when the C{with} block ends.
    """

    def __init__(self):
        self._cleanups = []

    def addCleanup(self, f, *args, **kw):
        self._cleanups.append((f, args, kw))

    def fail(self, why):
        raise RuntimeError(why)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        while self._cleanups:
            f, args, kw = self._cleanups.pop()
            try:
                f(*args, **kw)
            except Exception:
                pass


class Testbed:
    """What L{build} returns."""

    def __init__(self, testCase, netns, public, workdir):
        self.testCase = testCase
        self.netns = netns
        self.public = public
        self.bridge = "br0"
        self.workdir = workdir
        self.hosts = {}
        self.stunServers = []  # [(name, primary, alternate)]
        self._nextPublic = 10

    # ---- running things

    def run(self, host, *argv, **kw):
        """Run C{argv} in C{host} (a L{Host} or its name); @return: stdout."""
        return self.netns.exec(self._ns(host), *argv, **kw)

    def popen(self, host, argv, **kw):
        """Start C{argv} in C{host}; killed at cleanup.  @return: the Popen."""
        return self.netns.popen(self._ns(host), argv, **kw)

    def _ns(self, host):
        if isinstance(host, Host):
            return host.ns
        return self.hosts[host].ns if host in self.hosts else host

    # ---- building

    def addPublic(self, short, addresses):
        """
        A namespace on the public segment with C{addresses} (IPs in
        198.18.0.0/24).  @return: its name.
        """
        ns = self.netns.add(short)
        first, *more = addresses
        _, pubIf = self.netns.veth(ns, f"{first}/24", self.public, None)
        run("ip", "netns", "exec", self.public, "ip", "link", "set", pubIf, "master", self.bridge)
        ifname = _ifIn(self.netns, ns, first)
        for a in more:
            self.netns.exec(ns, "ip", "addr", "add", f"{a}/24", "dev", ifname)
        return ns

    def publicAddress(self):
        """@return: a fresh IP on the public segment."""
        self._nextPublic += 1
        return f"{PUBLIC_NET}.{self._nextPublic}"

    def addHost(self, name, natType):
        """Add end host C{name} behind a box emulating C{natType}.  @return: the L{Host}."""
        k = len(self.hosts) + 1
        wanIP = self.publicAddress()
        if natType == "no-nat":
            ns = self.addPublic(f"h{k}", [wanIP])
            host = Host(name, ns, natType, wanIP, wanIP, None)
        else:
            box = self.addPublic(f"n{k}", [wanIP])
            ns = self.netns.add(f"h{k}")
            lanNet = f"198.19.{k}"
            boxLan, _ = self.netns.veth(box, f"{lanNet}.1/24", ns, f"{lanNet}.2/24")
            self.netns.exec(ns, "ip", "route", "add", "default", "via", f"{lanNet}.1")
            self.netns.exec(box, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            wan = _ifIn(self.netns, box, wanIP)
            self.netns.exec(box, "nft", "-f", "-", input=natRules(natType, wan, boxLan, f"{lanNet}.2", wanIP).encode())
            host = Host(name, ns, natType, f"{lanNet}.2", wanIP, box)
        self.hosts[name] = host
        return host

    def startMeshvpnStun(self, primary=STUN_PRIMARY, alternate=STUN_ALTERNATE, short="stun"):
        """A real C{twistd meshvpn-relay} with RFC 5780 on the public segment."""
        from meshvpn.tools.processes import twistdPath

        ns = self.addPublic(short, [primary[0], alternate[0]])
        dataDir = tempfile.mkdtemp(prefix=f"{short}-", dir=self.workdir)
        argv = [twistdPath(), "-n", "--pidfile=", "--logfile", os.path.join(dataDir, "twistd.log"), "meshvpn-relay"]
        argv += ["--data-dir", dataDir, "--udp", formatHostPort(*primary)]
        argv += ["--listen", f"tcp:0:interface={primary[0]}", "--stun-alternate", formatHostPort(*alternate)]
        proc = self.netns.popen(ns, argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _waitFor(lambda: os.path.exists(os.path.join(dataDir, "node.json")), proc, f"meshvpn-relay in {ns}", dataDir)
        self.stunServers.append(("meshvpn", primary, alternate))
        return ns

    def startCoturn(self, primary=COTURN_PRIMARY, alternate=COTURN_ALTERNATE, short="coturn", extraArgs=()):
        """Debian's coturn C{turnserver} with two listening IPs (so RFC 5780 is on)."""
        ns = self.addPublic(short, [primary[0], alternate[0]])
        logPath = os.path.join(self.workdir, f"{short}.log")
        argv = ["turnserver", "-n", "--no-cli", "--no-tls", "--no-dtls", "--simple-log", "--log-file", logPath]
        argv += ["--pidfile", os.path.join(self.workdir, f"{short}.pid")]
        argv += ["--listening-ip", primary[0], "--listening-ip", alternate[0]]
        argv += ["--listening-port", str(primary[1]), "--alt-listening-port", str(alternate[1])]
        argv += list(extraArgs)
        proc = self.netns.popen(ns, argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def listening():
            out = self.netns.exec(ns, "ss", "-Hlun", check=False)
            return all(formatHostPort(ip, p) in out for ip in (primary[0], alternate[0]) for p in (primary[1], alternate[1]))

        _waitFor(listening, proc, f"coturn in {ns}", None, logPath)
        self.stunServers.append(("coturn", primary, alternate))
        return ns

    # ---- classification

    def netcheck(self, hosts=None, server=STUN_PRIMARY):
        """
        Run C{meshvpn netcheck --json} in every host at once.

        @return: dict host name -> report dict.
        """
        hosts = [self.hosts[h] if isinstance(h, str) else h for h in (hosts or self.hosts.values())]
        argv = [sys.executable, "-m", "meshvpn", "netcheck", "--json", "--stun", formatHostPort(*server)]
        procs = {h.name: self.popen(h, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for h in hosts}
        reports = {}
        for name, p in procs.items():
            out, err = p.communicate(timeout=60)
            if p.returncode != 0:
                raise RuntimeError(f"netcheck in {name} failed ({p.returncode}): {err.decode(errors='replace')[-2000:]}")
            reports[name] = json.loads(out)
        return reports

    def classify(self, server=STUN_PRIMARY):
        """@return: C{[{host, expected, detected, report}]} for every host."""
        reports = self.netcheck(server=server)
        return [
            {"host": name, "expected": self.hosts[name].natType, "detected": reports[name]["type"], "report": reports[name]}
            for name in self.hosts
        ]


def _ifIn(netns, ns, ip):
    """The name of the interface in C{ns} that has C{ip}."""
    out = netns.exec(ns, "ip", "-o", "-4", "addr", "show")
    for line in out.splitlines():
        fields = line.split()
        if fields[3].split("/")[0] == ip:
            return fields[1].split("@")[0]
    raise RuntimeError(f"no interface with {ip} in {ns}")


def _waitFor(ready, proc, what, dataDir, logPath=None, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {_tail(dataDir, logPath)}")
        if ready():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready after {timeout}s: {_tail(dataDir, logPath)}")


def _tail(dataDir, logPath):
    path = logPath or (os.path.join(dataDir, "twistd.log") if dataDir else None)
    try:
        with open(path, errors="replace") as f:
            return f.read()[-2000:]
    except (OSError, TypeError):
        return ""


def build(testCase, natTypes=NAT_TYPES, meshvpnStun=True, coturn=False):
    """
    Build the testbed: the public segment, the STUN server(s), one host per
    entry of C{natTypes} (named after its type).  Everything is removed by
    C{testCase}'s cleanups (a trial TestCase or a L{Cleanups}).

    @return: a L{Testbed}.
    """
    import shutil

    netns = Netns(testCase, prefix="nt")
    workdir = tempfile.mkdtemp(prefix="meshvpn-nattestbed-")
    testCase.addCleanup(shutil.rmtree, workdir, True)
    public = netns.add("pub")
    netns.exec(public, "ip", "link", "add", "br0", "type", "bridge")
    netns.exec(public, "ip", "link", "set", "br0", "up")
    tb = Testbed(testCase, netns, public, workdir)
    if meshvpnStun:
        tb.startMeshvpnStun()
    if coturn:
        tb.startCoturn()
    for natType in natTypes:
        tb.addHost(natType, natType)
    return tb


def classifiedMatrix(natTypes=NAT_TYPES, coturn=False):
    """
    Build the testbed, classify every host (against our STUN server and,
    with C{coturn}, against coturn), tear everything down.  For
    C{meshvpn bench nat}.  Needs root.

    @return: C{[{host, expected, detected, server}]}.
    """
    rows = []
    with Cleanups() as c:
        tb = build(c, natTypes, coturn=coturn)
        servers = [("meshvpn", STUN_PRIMARY)] + ([("coturn", COTURN_PRIMARY)] if coturn else [])
        for label, addr in servers:
            for row in tb.classify(addr):
                rows.append({"host": row["host"], "expected": row["expected"], "detected": row["detected"], "server": label})
    return rows
