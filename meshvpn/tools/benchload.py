"""`meshvpn bench load`: many users on a real-process network on loopback, and what it costs the relays.

L{benchloadnet.LoadNet} starts the network; a separate load generator
process (L{benchloadgen}) acts as C{--users} users through the clients'
SOCKS ports; this process samples every relay's RSS (each
C{--sample-every} seconds) and CPU from /proc.  One JSON object:

- C{circuits_per_s}: users' first fetches that succeeded (each on a new
  circuit of its own: clients keep no spares) per second of the arrival
  phase;
- C{build_ms} p50/p95/p99: SOCKS request to SOCKS success of those first
  fetches: a 3-hop build plus one stream open;
- C{stream_success}: fetches with every byte right / all fetches, with the
  failures by SOCKS reply or kind, and C{hung_streams};
- C{aggregate_mbps}: bytes fetched over the run;
- C{relay_rss_mb_max}, C{relay_cpu_percent} (of one core, each relay),
  C{relay_rss_slope_mb_per_min} after the arrival phase, and the most
  circuits any relay carried at once.
"""

import json
import os
import subprocess
import sys
import time

from meshvpn.tools.benchloadnet import LoadNet, findKey, statusOf
from meshvpn.tools.benchloadproc import Sampler


def addArguments(p):
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--users", type=int, default=100, help="simulated users (default 100)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load after the start (default 60; soak: 600)")
    p.add_argument("--ramp", type=float, default=None, help="seconds over which users arrive (default: users/25, >= 5)")
    p.add_argument("--think", type=float, default=10.0, help="mean seconds between a user's page bursts (default 10)")
    p.add_argument("--bulk", type=int, default=None, help="users doing bulk downloads (default: 1%%, >= 1)")
    p.add_argument("--bulk-bytes", type=int, default=4 << 20, help="bytes per bulk download (default 4 MiB)")
    p.add_argument("--guards", type=int, default=6, help="guard/middle relays (default 6)")
    p.add_argument("--exits", type=int, default=4, help="exit relays (default 4)")
    p.add_argument("--clients", type=int, default=None, help="client processes the users share (default: users/250, >= 2)")
    p.add_argument("--sample-every", type=float, default=10.0, help="seconds between RSS samples (default 10)")
    p.add_argument("--fetches-out", default=None, help="also write every fetch (user, start, connect, total, bytes, "
                   "error, first, bulk) to this JSON file")


def _pct(values, q):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _histogram(times, width):
    counts = {}
    for t in times:
        start = int(t // width * width)
        counts[start] = counts.get(start, 0) + 1
    return {f"{k}-{k + int(width)}": counts[k] for k in sorted(counts)}


# what each relay's links and circuits went through (a link closed as silent takes every circuit on it)
RELAY_EVENTS = ("closed_silent", "suspected", "protocol_errors", "queue_overflows", "circuits_destroyed",
                "next_hop_warned_circuits")


def relayEvents(status):
    found = {}
    for key in RELAY_EVENTS:
        value = findKey(status, key)
        if isinstance(value, int) and value:
            found[key] = value
    return found


def summarise(result, wall):
    fetches = result["fetches"]
    ok = [f for f in fetches if f[5] is None]
    firsts = [f for f in ok if f[6]]
    failures = {}
    for f in fetches:
        if f[5] is not None:
            failures[f[5]] = failures.get(f[5], 0) + 1
    arrival = max((f[1] + f[3] for f in firsts), default=0.0)
    total = sum(f[4] for f in ok)
    ms = lambda v: None if v is None else round(v * 1000, 1)  # noqa: E731
    builds = [f[2] for f in firsts]
    return {
        "users": result["users"],
        "users_with_a_circuit": len({f[0] for f in firsts}),
        "streams": len(fetches),
        "stream_success": round(len(ok) / len(fetches), 5) if fetches else None,
        "failed_streams": failures,
        # which fetches failed, and when: a first fetch, a bulk one, in the ramp or at the end
        "failure_examples": [{"kind": f[5], "user": f[0], "at_s": round(f[1], 1), "took_s": round(f[3], 1),
                              "first": f[6], "bulk": f[7]} for f in fetches if f[5] is not None][:10],
        # failures by the 10 s window they started in: one event shows as one tall bar
        "failures_by_start_10s": _histogram([f[1] for f in fetches if f[5] is not None], 10.0),
        "hung_streams": failures.get("hung", 0) + failures.get("stalled", 0),
        "circuits_per_s": round(len(firsts) / arrival, 2) if arrival else None,
        "build_ms": {"p50": ms(_pct(builds, 0.5)), "p95": ms(_pct(builds, 0.95)), "p99": ms(_pct(builds, 0.99))},
        "page_ms": {q: ms(_pct([f[3] for f in ok if not f[7]], v)) for q, v in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))},
        "aggregate_mbps": round(total * 8 / wall / 1e6, 2) if wall else None,
        "bytes": total,
        "bulk_downloads": sum(1 for f in ok if f[7]),
    }


def run(args, out=lambda line: print(line, file=sys.stderr, flush=True)):
    users = args.users
    ramp = args.ramp if args.ramp is not None else max(5.0, users / 25)
    clients = args.clients or max(2, users // 250)
    bulk = args.bulk if args.bulk is not None else max(1, users // 100)
    loadBefore = os.getloadavg()
    net = LoadNet(out, guards=args.guards, exits=args.exits, clients=clients)
    try:
        net.start()
        pids = net.relayPids()
        resultPath = os.path.join(net.net.base, "load.json")
        gen = subprocess.Popen(
            [sys.executable, "-m", "meshvpn.tools.benchloadgen", "--socks", ",".join(net.socksAddresses()),
             "--web", f"{net.web[0]}:{net.web[1]}", "--users", str(users), "--duration", str(args.duration),
             "--ramp", str(ramp), "--think", str(args.think), "--bulk", str(bulk), "--bulk-bytes", str(args.bulk_bytes),
             "--out", resultPath],
            stdout=open(os.path.join(net.net.base, "loadgen.log"), "wb"), stderr=subprocess.STDOUT)
        out(f"bench load: {users} users ({bulk} bulk) on {clients} clients for {args.duration:.0f}s, arriving over {ramp:.0f}s")
        sampler = Sampler({**pids, "loadgen": gen.pid, **{c.name: c.process.pid for c in net.clientNodes}})
        sampler.start()
        mostCircuits = {}
        nextSample = time.monotonic() + args.sample_every
        while gen.poll() is None:
            time.sleep(0.5)
            sampler.sampleCPU("loadgen")
            for node in net.relays:
                ends = findKey(statusOf(node), "circuit_ends")
                if isinstance(ends, int):
                    mostCircuits[node.name] = max(mostCircuits.get(node.name, 0), ends)
            if time.monotonic() >= nextSample:
                sampler.sample()
                nextSample += args.sample_every
        wall = sampler.stop()
        events = {node.name: relayEvents(statusOf(node)) for node in [*net.relays, *net.clientNodes]}
        if gen.returncode != 0:
            with open(os.path.join(net.net.base, "loadgen.log"), errors="replace") as f:
                raise RuntimeError(f"load generator exited {gen.returncode}: {f.read()[-2000:]}")
        with open(resultPath) as f:
            result = json.load(f)
        if args.fetches_out:
            with open(args.fetches_out, "w") as f:
                json.dump(result["fetches"], f)
        summary = summarise(result, result["wall_s"])
        relayNames = list(pids)
        summary.update({
            "relays": len(relayNames),
            "clients": clients,
            "duration_s": args.duration,
            "relay_rss_mb_max": round(max(sampler.maxRSS(n) or 0 for n in relayNames), 1),
            "relay_rss_mb": {n: round(sampler.maxRSS(n) or 0, 1) for n in relayNames},
            "relay_cpu_percent": {n: sampler.cpu.get(n) for n in relayNames},
            "relay_rss_slope_mb_per_min": {n: sampler.slopeMBPerMin(n, after=ramp) for n in relayNames},
            "relay_circuits_max": mostCircuits,
            "link_events": events,
            "rss_samples_every_s": args.sample_every,
            "loadgen_cpu_percent": sampler.cpu.get("loadgen"),
            "client_cpu_percent": {c.name: sampler.cpu.get(c.name) for c in net.clientNodes},
            "client_rss_mb_max": {c.name: round(sampler.maxRSS(c.name) or 0, 1) for c in net.clientNodes},
            # the machine is shared: its load average says how much of it the network had
            "machine": {"cores": os.cpu_count(), "loadavg_before": loadBefore, "loadavg_after": os.getloadavg()},
        })
        return summary
    finally:
        net.stop()


def command(args):
    summary = run(args)
    if args.json:
        print(json.dumps(summary))
    else:
        for k, v in summary.items():
            print(f"{k}: {v}")
    return 0 if summary["stream_success"] is not None else 1
