"""The NAT testbed's IPv6 side: hosts behind stateful IPv6 firewalls (no NAT66), and peers punching through them.

IPv6 needs no NAT, but home routers still refuse unsolicited inbound
traffic: a host's own outgoing flow opens the way back (conntrack), and
nothing else gets in.  Two such hosts connect only by hole punching: each
sends to the other's address first, so each firewall has seen the flow
outbound by the time the other's probe arrives.  (RFC 6092's recommended
simple security for residential IPv6 gateways is exactly this.)

Layout (2001:2::/48, RFC 5180's benchmarking space; names unique per build)::

    relay 2001:2::5 (meshvpn-relay --nat-relay: signalling) --+
                                                              +-- public bridge 2001:2::/64
    firewall box k (WAN 2001:2::1k, LAN 2001:2:k::1/64) ------+
       host k 2001:2:k::2 (default via the box)
    open host (2001:2::2k, on the public segment itself)

Every namespace on the public segment routes each host's /64 via its box.
L{firewallRules} is the box's nftables script; L{runPairs} connects hosts
with the matrix agent (L{meshvpn.tools.natmatrixagent} C{--family 6}).
"""

import json
import os
import subprocess
import tempfile
import time

from meshvpn.hostport import formatHostPort
from meshvpn.tools.natmatrix import Agent, _agentArgv, _waitAll
from meshvpn.tools.netns import Netns

PUBLIC6 = "2001:2::"
RELAY6 = "2001:2::5"
RELAY_PORT, TURN_PORT = 7000, 3478
HOST_TYPES6 = ("firewall6", "open6")

_RULES = """
table ip6 firewall6 {{
  chain forward {{
    type filter hook forward priority filter; policy drop;
    iifname "{lan}" oifname "{wan}" accept
    iifname "{wan}" oifname "{lan}" ct state established,related accept
  }}
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname "{wan}" meta l4proto udp ct state new drop
  }}
}}
"""


def firewallRules(wan, lan):
    """
    @return: the nftables script of a stateful IPv6 firewall between C{wan}
        and C{lan}: forwarded inbound only as part of a flow the LAN started
        (ICMPv6 errors about it are "related"); nothing is translated.
    """
    return _RULES.format(wan=wan, lan=lan)


class Host6:
    def __init__(self, name, ns, kind, address, box):
        self.name, self.ns, self.kind, self.address, self.box = name, ns, kind, address, box

    def __repr__(self):
        return f"<Host6 {self.name} {self.kind} {self.address}>"


class Testbed6:
    """The IPv6 testbed: the public segment, the relay, and hosts behind firewalls or open."""

    def __init__(self, testCase, prefix="n6"):
        import shutil

        self.netns = Netns(testCase, prefix=prefix)
        self.workdir = tempfile.mkdtemp(prefix="meshvpn-fw6-")
        testCase.addCleanup(shutil.rmtree, self.workdir, True)
        self.public = self.netns.add("pub")
        self.netns.exec(self.public, "ip", "link", "add", "br0", "type", "bridge")
        self.netns.exec(self.public, "ip", "link", "set", "br0", "up")
        self.onPublic = []  # namespaces with an address on the public segment (they get every host's route)
        self.routes = []  # (prefix, via)
        self.hosts = {}

    def addPublic(self, short, address):
        ns = self.netns.add(short)
        own, pubIf = self.netns.veth(ns, None, self.public, None)
        self.netns.exec(self.public, "ip", "link", "set", pubIf, "master", "br0")
        self.netns.exec(ns, "ip", "-6", "addr", "add", f"{address}/64", "dev", own, "nodad")
        for prefix, via in self.routes:
            self.netns.exec(ns, "ip", "-6", "route", "add", prefix, "via", via)
        self.onPublic.append(ns)
        return ns, own

    def addHost(self, name, kind):
        """A host of C{kind}: C{"firewall6"} (behind its own stateful box) or C{"open6"}."""
        k = len(self.hosts) + 1
        if kind == "open6":
            ns, _ = self.addPublic(f"h{k}", f"{PUBLIC6}2{k}")
            host = Host6(name, ns, kind, f"{PUBLIC6}2{k}", None)
        else:
            wan6 = f"{PUBLIC6}1{k}"
            box, wan = self.addPublic(f"b{k}", wan6)
            ns = self.netns.add(f"h{k}")
            lanPrefix = f"2001:2:{k}::"
            lan, own = self.netns.veth(box, None, ns, None)
            self.netns.exec(box, "ip", "-6", "addr", "add", f"{lanPrefix}1/64", "dev", lan, "nodad")
            self.netns.exec(ns, "ip", "-6", "addr", "add", f"{lanPrefix}2/64", "dev", own, "nodad")
            self.netns.exec(ns, "ip", "-6", "route", "add", "default", "via", f"{lanPrefix}1")
            self.netns.exec(box, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
            self.netns.exec(box, "nft", "-f", "-", input=firewallRules(wan, lan).encode())
            route = (f"{lanPrefix}/64", wan6)
            for other in self.onPublic:
                if other != box:
                    self.netns.exec(other, "ip", "-6", "route", "add", route[0], "via", route[1])
            self.routes.append(route)
            host = Host6(name, ns, kind, f"{lanPrefix}2", box)
        self.hosts[name] = host
        return host

    def startRelay(self):
        """A real C{twistd meshvpn-relay --nat-relay true}, IPv6 only.  @return: its node id (hex)."""
        from meshvpn.tools.nattestbed import _waitFor
        from meshvpn.tools.processes import twistdPath

        ns, _ = self.addPublic("rly", RELAY6)
        dataDir = tempfile.mkdtemp(prefix="relay6-", dir=self.workdir)
        argv = [twistdPath(), "-n", "--pidfile=", "--logfile", os.path.join(dataDir, "twistd.log"), "meshvpn-relay",
                "--data-dir", dataDir, "--udp", formatHostPort(RELAY6, RELAY_PORT),
                "--listen", "tcp6:0:interface=" + RELAY6.replace(":", "\\:"), "--nat-relay", "true"]
        proc = self.netns.popen(ns, argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        nodeFile = os.path.join(dataDir, "node.json")
        _waitFor(lambda: os.path.exists(nodeFile), proc, f"meshvpn-relay in {ns}", dataDir)
        self.relayNs = ns
        with open(nodeFile) as f:
            return json.load(f)["node_id"]

    def startAgents(self, relayId, size, punchDeadline=2.5):
        agents = {}
        for name, host in self.hosts.items():
            argv = _agentArgv("peer", "--family", "6", "--relay", formatHostPort(RELAY6, RELAY_PORT),
                              "--relay-id", relayId, "--turn", formatHostPort(RELAY6, TURN_PORT),
                              "--bytes", str(size), "--punch-deadline", str(punchDeadline))
            agents[name] = Agent(name, self.netns.popen(host.ns, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                        stderr=subprocess.PIPE))
        ready = _waitAll(list(agents.values()), lambda e: e.get("event") in ("ready", "error"), 60)
        for name, e in ready.items():
            if e.get("event") != "ready":
                raise RuntimeError(f"agent {name} failed: {e}")
            agents[name].info = e
        return agents

    def sendFrom(self, ns, target, data):
        """One UDP datagram from namespace C{ns} to C{target} (an attacker's unsolicited packet)."""
        import sys

        code = ("import socket,sys; s=socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); "
                "s.sendto(bytes.fromhex(sys.argv[3]), (sys.argv[1], int(sys.argv[2])))")
        self.netns.exec(ns, sys.executable, "-c", code, target[0], str(target[1]), data.hex())


def build(testCase, kinds=(("firewall6-1", "firewall6"), ("firewall6-2", "firewall6"), ("open6-1", "open6")), size=1 << 16):
    """@return: C{(testbed, agents)} with the relay and an agent per host running."""
    tb = Testbed6(testCase)
    relayId = tb.startRelay()
    for name, kind in kinds:
        tb.addHost(name, kind)
    return tb, tb.startAgents(relayId, size)


def runPairs(testCase, size=1 << 20, pairs=(("firewall6-1", "firewall6-2"), ("open6-1", "firewall6-2"),
                                             ("firewall6-1", "open6-1"))):
    """
    Connect each pair (the first offers) and push C{size} bytes each way.
    Every IPv6 pair must be direct: no address is translated, so both
    firewalls open to each other's probes.  @return: the rows.
    """
    started = time.monotonic()
    tb, agents = build(testCase, size=size)
    return _run(tb, agents, pairs, size, started)


def _run(tb, agents, pairs, size, started):
    from meshvpn.tools.natmatrix import runPair

    setup = time.monotonic() - started
    rows = []
    for a, b in pairs:
        row = runPair(_Named(agents, a, b), "A", "B")
        row.update(a=a, b=b, expected_path="direct")
        rows.append(row)
    return {"pairs": rows, "setup_s": round(setup, 2), "total_s": round(time.monotonic() - started, 2),
            "bytes_each_way": size}


class _Named(dict):
    """Presents agents C{a} and C{b} as L{runPair}'s C{"A-1"} and C{"B-2"}."""

    def __init__(self, agents, a, b):
        super().__init__({"A-1": agents[a], "B-2": agents[b]})
