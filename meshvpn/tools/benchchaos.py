"""`meshvpn bench chaos`: the load network under scripted faults, and how fast every user works again.

Users (L{benchloadgen} in probe mode: each fetches 2 KiB through its own
circuits every C{--probe} seconds, checked byte for byte) run through the
whole script.  After a warm-up, faults come one at a time, C{--settle}
seconds apart:

- C{kill_guard}: kill -9 the guard carrying the most circuits (restarted,
  same keys, at the next fault);
- C{kill_exit}: kill -9 the exit carrying the most circuits (restarted likewise);
- C{sigstop_relay}: SIGSTOP the busiest remaining guard for C{--stop-seconds}
  (a hung relay: its links stay open), then SIGCONT;
- C{sigstop_middle}: the same for the relay that is the middle of the most
  users' circuits and the guard of none (the clients' own link PINGs see
  nothing: only the guards before it do, NEXT_HOP_SUSPECTED);
- C{restart_relay}: SIGTERM and restart the busiest middle/guard;
- C{restart_bootstrap}: kill -9 the DHT bootstrap node and restart it.

For each fault: how long until every user had a fetch succeed that started
after the fault (C{recovery_s}), the share of users who did within 2 s,
the same for the users the fault hit (a fetch of theirs failed, or one in
flight at the fault took over 2 s), the
failed streams by SOCKS reply or kind, and C{hung_streams} (no answer within
the generator's timeout).  Link cuts and packet loss with nftables, and the
leak check, need root namespaces: C{meshvpn bench chaos-netns}
(L{meshvpn.tools.chaosnetns}).
"""

import json
import os
import signal
import subprocess
import sys
import time

from meshvpn.tools.benchloadnet import LoadNet, findKey, statusOf
from meshvpn.roles.node import NODE_FILE

FAULTS = ("kill_guard", "kill_exit", "sigstop_relay", "sigstop_middle", "restart_relay", "restart_bootstrap")


def addArguments(p):
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--users", type=int, default=40, help="probing users (default 40)")
    p.add_argument("--probe", type=float, default=0.5, help="seconds between a user's fetches (default 0.5)")
    p.add_argument("--warmup", type=float, default=20.0, help="seconds of load before the first fault (default 20)")
    p.add_argument("--settle", type=float, default=20.0, help="seconds between faults (default 20)")
    p.add_argument("--stop-seconds", type=float, default=30.0, help="how long the SIGSTOPped relay hangs (default 30)")
    p.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated, in order (default {','.join(FAULTS)})")
    p.add_argument("--guards", type=int, default=6)
    p.add_argument("--exits", type=int, default=4)
    p.add_argument("--clients", type=int, default=2)
    p.add_argument("--timeout", type=float, default=30.0, help="seconds before a fetch counts as hung (default 30)")


def _busiest(nodes, exclude=()):
    best, most = None, -1
    for node in nodes:
        if node.name in exclude or node.process.poll() is not None:
            continue
        ends = findKey(statusOf(node), "circuit_ends")
        ends = ends if isinstance(ends, int) else 0
        if ends > most:
            best, most = node, ends
    return best, most


def _middleOfMost(net):
    """The relay in the middle of the most circuits clients use now that is none's guard, and that count."""
    middles, guards = {}, set()
    for client in net.clientNodes:
        for circuit in (statusOf(client).get("circuits") or {}).get("circuits") or []:
            path = circuit.get("path") or []
            if len(path) >= 3:
                guards.add(path[0])
                middles[path[1]] = middles.get(path[1], 0) + 1
    byId = {n.info["node_id"]: n for n in net.relays if n.process.poll() is None}
    ranked = sorted(((n, i) for i, n in middles.items() if i not in guards and i in byId), reverse=True)
    if not ranked:
        return None, 0
    return byId[ranked[0][1]], ranked[0][0]


def _restart(node):
    """Start C{node} again with the same keys and data directory (it binds new ports)."""
    if node.process.poll() is None:
        node.stop()
    try:
        os.unlink(os.path.join(node.dataDir, NODE_FILE))
    except FileNotFoundError:
        pass
    node.start()
    node.waitReady(timeout=60)


class Script:
    def __init__(self, net, args, out):
        self.net, self.args, self.out = net, args, out
        self.killed = []  # nodes to restart at the next fault
        self.events = []

    def _restartKilled(self):
        for node in self.killed:
            _restart(node)
        self.killed = []

    def _guards(self):
        return [n for n in self.net.relays if n.name.startswith("relay")]

    def _exits(self):
        return [n for n in self.net.relays if n.name.startswith("exit")]

    def fault(self, kind):
        self._restartKilled()
        if kind == "kill_guard" or kind == "kill_exit":
            node, circuits = _busiest(self._guards() if kind == "kill_guard" else self._exits())
            at = time.time()
            node.process.send_signal(signal.SIGKILL)
            node.process.wait()
            self.killed.append(node)
            return {"fault": kind, "node": node.name, "circuits_through_it": circuits, "at": at}
        if kind in ("sigstop_relay", "sigstop_middle"):
            if kind == "sigstop_middle":
                node, circuits = _middleOfMost(self.net)
                if node is None:
                    return {"fault": kind, "node": None, "at": time.time(), "skipped": "no relay is only a middle"}
            else:
                node, circuits = _busiest(self._guards())
            at = time.time()
            node.process.send_signal(signal.SIGSTOP)
            time.sleep(self.args.stop_seconds)
            node.process.send_signal(signal.SIGCONT)
            return {"fault": kind, "node": node.name, "circuits_through_it": circuits, "at": at,
                    "stopped_s": self.args.stop_seconds}
        if kind == "restart_relay":
            node, circuits = _busiest(self._guards())
            at = time.time()
            _restart(node)
            return {"fault": kind, "node": node.name, "circuits_through_it": circuits, "at": at,
                    "restart_s": round(time.time() - at, 2)}
        if kind == "restart_bootstrap":
            node = self.net.boot
            at = time.time()
            node.process.send_signal(signal.SIGKILL)
            node.process.wait()
            _restart(node)
            return {"fault": kind, "node": node.name, "at": at, "restart_s": round(time.time() - at, 2)}
        raise ValueError(f"unknown fault {kind!r}")


def analyse(result, events, windowEnd):
    t0 = result["t0_epoch"]
    users = result["users"]
    fetches = [(f[0], t0 + f[1], t0 + f[1] + f[3], f[5]) for f in result["fetches"]]  # user, start, end, error
    out = []
    for i, event in enumerate(events):
        tf = event["at"]
        tn = events[i + 1]["at"] if i + 1 < len(events) else windowEnd
        recovery, hit, failed = {}, set(), {}
        for user, start, end, error in fetches:
            if error is not None and tf <= end < tn:
                hit.add(user)
                failed[error] = failed.get(error, 0) + 1
            elif start < tf <= end and end - start > 2.0:
                hit.add(user)
            if error is None and start >= tf and start < tn:
                took = end - tf
                if user not in recovery or took < recovery[user]:
                    recovery[user] = took
        never = [u for u in range(users) if u not in recovery]
        times = list(recovery.values())
        hitTimes = [recovery[u] for u in hit if u in recovery]
        row = {k: v for k, v in event.items() if k != "at"}
        row.update({
            "recovery_s": None if never else round(max(times), 2),
            "users_never_recovered": len(never),
            "recovered_within_2s_fraction": round(sum(t <= 2.0 for t in times) / users, 4),
            "users_hit": len(hit),
            "hit_recovery_s_max": round(max(hitTimes), 2) if hitTimes else None,
            "hit_recovered_within_2s_fraction": round(sum(t <= 2.0 for t in hitTimes) / len(hit), 4) if hit else None,
            "failed_streams": failed,
            # "hung" and "stalled", for SOCKS users and (prefixed "vpn ") the namespace bench's VPN users
            "hung_streams": sum(n for kind, n in failed.items() if kind.split()[-1] in ("hung", "stalled")),
        })
        out.append(row)
    return out


def run(args, out=lambda line: print(line, file=sys.stderr, flush=True)):
    faults = [f for f in args.faults.split(",") if f]
    for f in faults:
        if f not in FAULTS:
            raise ValueError(f"unknown fault {f!r}; known: {', '.join(FAULTS)}")
    net = LoadNet(out, guards=args.guards, exits=args.exits, clients=args.clients)
    try:
        net.start()
        resultPath = os.path.join(net.net.base, "chaos.json")
        stopFile = os.path.join(net.net.base, "chaos.stop")
        gen = subprocess.Popen(
            [sys.executable, "-m", "meshvpn.tools.benchloadgen", "--socks", ",".join(net.socksAddresses()),
             "--web", f"{net.web[0]}:{net.web[1]}", "--users", str(args.users), "--stop-file", stopFile,
             "--ramp", "5", "--probe", str(args.probe), "--timeout", str(args.timeout), "--out", resultPath],
            stdout=open(os.path.join(net.net.base, "loadgen.log"), "wb"), stderr=subprocess.STDOUT)
        out(f"bench chaos: {args.users} users probing every {args.probe}s; faults {', '.join(faults)}")
        script = Script(net, args, out)
        time.sleep(args.warmup)
        events = []
        for kind in faults:
            event = script.fault(kind)
            out(f"bench chaos: {kind} {event.get('node')} at +{event['at'] - events[0]['at'] if events else 0:.0f}s")
            events.append(event)
            time.sleep(args.settle)
        windowEnd = time.time()
        open(stopFile, "w").close()
        gen.wait(timeout=args.timeout * 4 + 120)
        if gen.returncode != 0:
            with open(os.path.join(net.net.base, "loadgen.log"), errors="replace") as f:
                raise RuntimeError(f"load generator exited {gen.returncode}: {f.read()[-2000:]}")
        with open(resultPath) as f:
            result = json.load(f)
        rows = analyse(result, events, windowEnd)
        fetches = result["fetches"]
        ok = sum(1 for f in fetches if f[5] is None)
        deaths = [r for r in rows if r["fault"] in ("kill_guard", "kill_exit")]
        return {
            "users": args.users,
            "probe_s": args.probe,
            "faults": rows,
            "streams": len(fetches),
            "stream_success": round(ok / len(fetches), 5) if fetches else None,
            "hung_streams": sum(r["hung_streams"] for r in rows),
            "recovered_within_2s_fraction": round(min((r["recovered_within_2s_fraction"] for r in deaths), default=1.0), 4),
            "leak_check": "not applicable: SOCKS users on loopback (meshvpn bench chaos-netns captures both clients' uplinks)",
            "not_run": ["nftables link cuts and packet loss (nftables numgen): meshvpn bench chaos-netns (root)"],
            "machine": {"cores": os.cpu_count(), "loadavg": os.getloadavg()},
        }
    finally:
        net.stop()


def command(args):
    summary = run(args)
    print(json.dumps(summary) if args.json else json.dumps(summary, indent=2))
    return 0
