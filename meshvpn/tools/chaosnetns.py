"""`meshvpn bench chaos-netns`: the faults only network namespaces can make, and whether anything leaked.

The loopback chaos bench (L{meshvpn.tools.benchchaos}) kills, hangs and
restarts processes.  Cutting a link or losing packets needs a network
between the nodes, and rules on it that touch nothing else on the machine:
this bench builds the whole-world network (L{meshvpn.tools.worldtest.World}:
a made-up internet in 198.18.0.0/15, a bootstrap node, three guards, two
middles, a packet exit, a web and a DNS server; a VPN client behind a
port-restricted NAT and a SOCKS client behind a symmetric NAT, both finding
relays only through the DHT) in namespaces it creates and removes, and puts
its nftables rules only in the made-up internet's router namespace, never
in the root namespace.

Users probe through the whole script: SOCKS users through the SOCKS client
(L{meshvpn.tools.benchloadgen} in probe mode: each its own credentials,
so its own circuits; failures named by their SOCKS reply) and VPN users
inside the VPN client's namespace (L{meshvpn.tools.chaosprobe}: plain
HTTP the TUN carries).  Faults, one at a time, each held C{--fault-seconds}:

- C{cut_guard_links}: the router drops, silently (no RST, as a cut cable
  or a censor's blackhole), every packet to and from the link port of the
  guards the two clients use;
- C{drop_datagrams}: the router drops C{--loss} percent of every UDP
  datagram it forwards (nftables C{numgen random}): the node sockets' DHT,
  STUN and datagram-link traffic;
- C{drop_link_packets}: the same share of TCP segments: the TLS links.

Per fault, as the loopback bench: C{recovery_s}, C{recovered_within_2s_fraction},
the users hit, the failed streams by SOCKS reply (SOCKS users) or socket
error (VPN users, prefixed C{vpn }) and C{hung_streams}, plus the packets
the rule dropped.  The leak check: a capture on each client's uplink,
started before the client, must hold nothing but packets to the relays'
link and DHT ports, through every fault.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from meshvpn.errors import MeshVPNError
from meshvpn.tools.benchchaos import analyse
from meshvpn.tools.netns import Netns, run as runCommand
from meshvpn.tools.tunworld import DOMAIN, WEB

FAULTS = ("cut_guard_links", "drop_datagrams", "drop_link_packets")
TABLE = "meshvpn_chaos"
TOOLS = ("ip", "nft", "tcpdump", "curl")


def addArguments(p):
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--socks-users", type=int, default=8, help="probing users of the SOCKS client (default 8)")
    p.add_argument("--vpn-users", type=int, default=2, help="probing users inside the VPN client (default 2)")
    p.add_argument("--probe", type=float, default=0.5, help="seconds between a user's fetches (default 0.5)")
    p.add_argument("--warmup", type=float, default=10.0, help="seconds of probing before the first fault (default 10)")
    p.add_argument("--fault-seconds", type=float, default=20.0, help="how long each fault is held (default 20)")
    p.add_argument("--settle", type=float, default=15.0, help="seconds after a fault is lifted (default 15)")
    p.add_argument("--loss", type=int, default=30, help="percent of packets dropped by the loss faults (default 30)")
    p.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated, in order (default {','.join(FAULTS)})")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds before a fetch counts as hung (default 30)")
    p.add_argument("--keep-logs", metavar="DIR", help="copy every node's and prober's log here before the world is removed")


class Cleanups:
    """What L{Netns} and the world register for removal, run last-first even when the bench fails."""

    def __init__(self):
        self._calls = []

    def addCleanup(self, f, *args, **kwargs):
        self._calls.append((f, args, kwargs))

    def run(self):
        while self._calls:
            f, args, kwargs = self._calls.pop()
            try:
                f(*args, **kwargs)
            except Exception as e:  # one failed cleanup must not leave the rest behind
                print(f"bench chaos-netns: cleanup {getattr(f, '__name__', f)} failed: {e}", file=sys.stderr)


def ruleset(rules):
    """An nftables script: one table in the router's namespace, a forward chain holding C{rules}."""
    body = "".join(f"        {r}\n" for r in rules)
    return (f"table inet {TABLE} {{\n    chain forward {{\n        type filter hook forward priority -10; policy accept;\n"
            f"{body}    }}\n}}\n")


def cutRules(endpoints):
    """Drop both directions of every TCP connection to each C{(ip, port)}: a silent cut."""
    out = []
    for ip, port in endpoints:
        out += [f"ip daddr {ip} tcp dport {port} counter drop", f"ip saddr {ip} tcp sport {port} counter drop"]
    return out


def lossRules(percent, proto):
    if not 0 <= percent <= 100 or proto not in ("udp", "tcp"):
        raise ValueError("a loss of 0-100 percent of udp or tcp")
    return [f"meta l4proto {proto} numgen random mod 100 < {percent} counter drop"]


def droppedPackets(listing):
    """The packets the table's counters saw, from C{nft list table}'s text."""
    return sum(int(n) for n in re.findall(r"counter packets (\d+)", listing))


def leaks(lines, allowed):
    """Packets in a capture (tcpdump text) to anything but C{allowed} (C{"ip.port"} strings)."""
    out = []
    for line in lines:
        parts = line.split()
        if len(parts) < 5 or parts[1] != "IP" or parts[4].rstrip(":") not in allowed:
            out.append(line)
    return out


class Chaos:
    def __init__(self, world, args, out):
        self.w, self.args, self.out = world, args, out

    def _apply(self, rules):
        self.w.netns.exec(self.w.inet, "nft", "-f", "-", input=ruleset(rules).encode())

    def _lift(self):
        listing = self.w.netns.exec(self.w.inet, "nft", "list", "table", "inet", TABLE, check=False)
        self.w.netns.exec(self.w.inet, "nft", "delete", "table", "inet", TABLE, check=False)
        return droppedPackets(listing)

    def fault(self, kind):
        w, args = self.w, self.args
        event = {"fault": kind}
        if kind == "cut_guard_links":
            guards = sorted({g for g in (w.guardOf("client"), w.guardOf("socks-client")) if g})
            if not guards:
                raise RuntimeError("neither client shows a circuit in its status: nothing to cut")
            rules = cutRules([w.endpoints[g][0] for g in guards])
            event["nodes"] = guards
        elif kind == "drop_datagrams":
            rules = lossRules(args.loss, "udp")
            event["loss_percent"] = args.loss
        elif kind == "drop_link_packets":
            rules = lossRules(args.loss, "tcp")
            event["loss_percent"] = args.loss
        else:
            raise ValueError(f"unknown fault {kind!r}")
        event["at"] = time.time()
        self._apply(rules)
        try:
            time.sleep(args.fault_seconds)
        finally:
            event["dropped_packets"] = self._lift()
        event["held_s"] = args.fault_seconds
        return event


def _checkRoot():
    problems = ["not running as root"] if os.geteuid() != 0 else []
    problems += [f"{t} not installed" for t in TOOLS if shutil.which(t) is None]
    if problems:
        raise MeshVPNError("bench chaos-netns needs root network namespaces: " + ", ".join(problems))


def _waitFetch(w, client, seconds):
    via = ["--socks5-hostname", "127.0.0.1:1080"] if client == "socks-client" else []
    ns = w.ns["cl2" if client == "socks-client" else "cl"]
    deadline = time.monotonic() + seconds
    while True:
        code = runCommand("ip", "netns", "exec", ns, "curl", "-sS", "--max-time", "10", *via, "-o", "/dev/null",
                          "-w", "%{http_code}", f"http://{DOMAIN}/bytes/2048", check=False, timeout=20)
        if code == "200":
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{client}: no fetch within {seconds}s: {w.nodeLog(client)[-1500:]}")
        time.sleep(0.5)


def _keepLogs(workdir, dest):
    """Each node's twistd.log as NAME.twistd.log, and the top-level logs (probers, servers), into C{dest}."""
    os.makedirs(dest, exist_ok=True)
    for entry in os.listdir(workdir):
        path = os.path.join(workdir, entry)
        if entry.endswith(".log"):
            shutil.copy(path, os.path.join(dest, entry))
        elif os.path.isfile(os.path.join(path, "twistd.log")):
            shutil.copy(os.path.join(path, "twistd.log"), os.path.join(dest, f"{entry}.twistd.log"))


def _merge(socks, vpn):
    """One result in the load generator's shape: SOCKS users first, then the VPN users, one clock."""
    t0 = min(socks["t0_epoch"], vpn["t0_epoch"])
    fetches = [[f[0], f[1] + socks["t0_epoch"] - t0, *f[2:]] for f in socks["fetches"]]
    for f in vpn["fetches"]:
        error = None if f[5] is None else f"vpn {f[5]}"
        fetches.append([socks["users"] + f[0], f[1] + vpn["t0_epoch"] - t0, f[2], f[3], f[4], error, f[6], f[7]])
    return {"t0_epoch": t0, "users": socks["users"] + vpn["users"], "fetches": fetches}


def run(args, out=lambda line: print(line, file=sys.stderr, flush=True)):
    from meshvpn.tools.worldtest import World

    faults = [f for f in args.faults.split(",") if f]
    for f in faults:
        if f not in FAULTS:
            raise MeshVPNError(f"unknown fault {f!r}; known: {', '.join(FAULTS)}")
    _checkRoot()
    cleanups = Cleanups()
    previous = signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))  # SIGTERM still removes the namespaces
    workdir = tempfile.mkdtemp(prefix="mvchaos-")
    cleanups.addCleanup(shutil.rmtree, workdir, True)
    netns = Netns(cleanups, "mvc")
    if args.keep_logs:
        cleanups.addCleanup(_keepLogs, workdir, args.keep_logs)  # runs before the workdir is removed
    try:
        started = time.time()
        out(f"bench chaos-netns: building the world (namespaces {netns.tag}-*)")
        w = World(netns, cleanups.addCleanup, workdir).build()
        pcaps = {}
        for client, short in (("client", "cl"), ("socks-client", "cl2")):
            pcaps[client] = os.path.join(workdir, f"{client}.pcap")
            capture = netns.popen(w.ns[short], ["tcpdump", "-i", w.uplink[short], "-Q", "out", "-nn", "-U",
                                                "--immediate-mode", "-w", pcaps[client], "not", "arp"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            capture.stderr.readline()  # "listening on": live before the client exists
            pcaps[client] = (pcaps[client], capture)
        w.startTwistdClient()
        w.startSocksClient()
        _waitFetch(w, "client", 90)
        _waitFetch(w, "socks-client", 90)
        built = time.time() - started
        stopFile = os.path.join(workdir, "chaos.stop")
        results = {"socks": os.path.join(workdir, "socks.json"), "vpn": os.path.join(workdir, "vpn.json")}
        w.python(w.ns["cl2"], "socks-users", "-m", "meshvpn.tools.benchloadgen", "--socks", "127.0.0.1:1080",
                 "--web", f"{WEB}:80", "--users", str(args.socks_users), "--stop-file", stopFile, "--ramp", "2",
                 "--probe", str(args.probe), "--timeout", str(args.timeout), "--out", results["socks"])
        w.python(w.ns["cl"], "vpn-users", "-m", "meshvpn.tools.chaosprobe", "--web", f"{WEB}:80", "--users", str(args.vpn_users),
                 "--probe", str(args.probe), "--timeout", str(args.timeout), "--stop-file", stopFile, "--out", results["vpn"])
        out(f"bench chaos-netns: {args.socks_users} SOCKS + {args.vpn_users} VPN users probing; faults {', '.join(faults)}")
        time.sleep(args.warmup)
        for name in ("socks-users", "vpn-users"):
            if w.procs[name].poll() is not None:
                raise RuntimeError(f"{name} exited {w.procs[name].returncode} before the first fault: {w.log(name)[-2000:]}")
        chaos, events = Chaos(w, args, out), []
        for kind in faults:
            event = chaos.fault(kind)
            out(f"bench chaos-netns: {kind} held {args.fault_seconds:g}s, {event['dropped_packets']} packets dropped")
            events.append(event)
            time.sleep(args.settle)
        windowEnd = time.time()
        open(stopFile, "w").close()
        loaded = {}
        for name, proc in (("socks", w.procs["socks-users"]), ("vpn", w.procs["vpn-users"])):
            proc.wait(timeout=args.timeout * 4 + 60)
            if proc.returncode != 0:
                raise RuntimeError(f"{name} users exited {proc.returncode}: {w.log(name + '-users')[-2000:]}")
            with open(results[name]) as f:
                loaded[name] = json.load(f)
        merged = _merge(loaded["socks"], loaded["vpn"])
        rows = analyse(merged, events, windowEnd)
        # -- the leak check: every packet either client sent went to a relay's link or DHT port
        time.sleep(0.3)
        allowed = {f"{ip}.{port}" for link, dht in w.endpoints.values() for ip, port in (link, dht)}
        leak = {}
        for client, (pcap, capture) in pcaps.items():
            capture.terminate()
            capture.wait(10)
            lines = [line for line in runCommand("tcpdump", "-nn", "-r", pcap, check=False).splitlines() if line.strip()]
            outside = leaks(lines, allowed)
            leak[client] = {"packets": len(lines), "outside_relays": len(outside), "examples": outside[:5]}
        fetches = merged["fetches"]
        ok = sum(1 for f in fetches if f[5] is None)
        return {
            "world": {"namespaces": netns.tag, "relays": len(w.endpoints), "build_s": round(built, 1)},
            "users": {"socks": args.socks_users, "vpn": args.vpn_users},
            "probe_s": args.probe,
            "faults": rows,
            "streams": len(fetches),
            "stream_success": round(ok / len(fetches), 5) if fetches else None,
            "hung_streams": sum(r["hung_streams"] for r in rows),
            "recovered_within_2s_fraction": round(min((r["recovered_within_2s_fraction"] for r in rows), default=1.0), 4),
            "leak_check": {"clients": leak, "leaked": any(v["outside_relays"] or not v["packets"] for v in leak.values())},
            "machine": {"cores": os.cpu_count(), "loadavg": os.getloadavg()},
        }
    finally:
        cleanups.run()
        signal.signal(signal.SIGTERM, previous)


def command(args):
    summary = run(args)
    print(json.dumps(summary) if args.json else json.dumps(summary, indent=2))
    return 1 if summary["leak_check"]["leaked"] else 0
