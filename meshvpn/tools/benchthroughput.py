"""`meshvpn bench throughput`: one 3-hop circuit on loopback, measured as an app sees it.

Starts the `meshvpn testnet` network, then through the client's SOCKS port:
a large download (throughput), repeated small fetches (time to first byte),
the same small fetches without MeshVPN (the baseline), and the CPU seconds
all MeshVPN processes spent per GB moved.
"""

import hashlib
import json
import os
import socket
import statistics
import time


def _cpuSeconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def _directTTFB(host, port, path):
    started = time.monotonic()
    with socket.create_connection((host, port), timeout=30) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        s.recv(65536)
        ttfb = time.monotonic() - started
        while s.recv(65536):
            pass
    return ttfb


def run(args):
    from meshvpn.tools import socksclient, webfixture
    from meshvpn.tools.testnet import Testnet

    log = (lambda line: print(line, flush=True)) if not args.json else (lambda line: None)
    net = Testnet(log)
    try:
        net.start()
        host, port = net.startWeb()
        proxy = net.socksAddress()
        pids = [n.process.pid for n in net.nodes]
        # Warm up the circuit (first stream, path chosen).
        socksclient.httpGet(proxy, host, port, "/bytes/1000")
        nbytes = args.megabytes * 1_000_000
        got = [0]
        digest = hashlib.sha256()

        def sink(chunk):
            got[0] += len(chunk)
            digest.update(chunk)

        cpuBefore = sum(_cpuSeconds(p) for p in pids)
        status, _, ttfb, total = socksclient.httpGet(proxy, host, port, f"/bytes/{nbytes}", sink=sink)
        cpuUsed = sum(_cpuSeconds(p) for p in pids) - cpuBefore
        ok = status == 200 and got[0] == nbytes and digest.hexdigest() == webfixture.expectedDigest(nbytes)
        ttfbs = [socksclient.httpGet(proxy, host, port, "/bytes/100")[2] for _ in range(args.fetches)]
        direct = [_directTTFB(host, port, "/bytes/100") for _ in range(args.fetches)]
        result = {
            "throughput_mbps": round(nbytes * 8 / total / 1e6, 1),
            "bytes": nbytes,
            "bytes_match": ok,
            "ttfb_ms_median": round(statistics.median(ttfbs) * 1000, 2),
            "ttfb_ms_direct_median": round(statistics.median(direct) * 1000, 2),
            "added_ttfb_ms_median": round((statistics.median(ttfbs) - statistics.median(direct)) * 1000, 2),
            "cpu_s_per_gb": round(cpuUsed / (nbytes / 1e9), 2),
            "fetches": args.fetches,
            "processes": len(pids),
        }
        print(json.dumps(result) if args.json else json.dumps(result, indent=1))
        return 0 if ok else 1
    finally:
        net.stop()


def addArguments(p):
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--megabytes", type=int, default=50, help="size of the download (default 50 MB)")
    p.add_argument("--fetches", type=int, default=20, help="small fetches for time to first byte (default 20)")
