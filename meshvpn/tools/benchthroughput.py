"""`meshvpn bench throughput`: one 3-hop circuit of real processes, measured as an app sees it.

Starts the `meshvpn testnet` network, then through the client's SOCKS port:
a large download (throughput), repeated small fetches (time to first
byte), the same with plain TCP (the baseline), and the CPU seconds all
MeshVPN processes spent per GB moved.  Every body is checked byte for byte
(SHA-256 of the known content); a mismatch or short body fails the bench.

``--delay-ms D`` (root) runs it all in a network namespace of its own with D
ms of real one-way delay on every TCP hop (L{meshvpn.tools.delaynet}): the
circuit's path client -> guard -> middle -> exit -> web server then has a
round trip of 8·D.  The baseline is plain TCP over a path with that same
round trip, through the same delay line (C{pipe_throughput_mbps},
C{ttfb_ms_direct_median}); C{rtt_ms_measured} is its TCP handshake time.
With D = 0 everything is on the host's loopback and the baseline is a
direct connection to the web server.

C{ttfb_ms_first_stream_fresh_circuit} is timed after 0.6 s of quiet (the
spare it takes is replaced meanwhile); C{ttfb_ms_warm_circuit_after_pause}
and C{ttfb_ms_direct_after_pause} are a stream on the circuit already in use
and a direct fetch after the same pause, its fair comparison: the other
medians are of fetches made back to back, by processes that never slept.

Time to first byte is timed the same way for both: from before the
connection is opened (for the circuit, the SOCKS handshake and BEGIN
included, as an application sees it) to the first byte of the response.
C{ttfb_ms_optimistic_median} times an application that sends its request
with the SOCKS CONNECT instead of waiting for the reply (a browser does):
the request then follows BEGIN at once (optimistic data).
"""

import hashlib
import json
import os
import re
import socket
import statistics
import time

RELAY_DATA_LEN = 488  # stream bytes per DATA cell on the testnet's circuits (CGO at the exit: meshvpn.onion.cells CGO_RELAY_DATA_LEN)


MULTIPATH_AFTER = 1_000_000  # bytes before the client links a second circuit


def _cpuSeconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


class Fetch:
    """One HTTP GET, timed and checked: status, first response byte, body length and digest."""

    def __init__(self, sock, host, path, started, sent=False):
        self.started = started
        with sock:
            if not sent:
                sock.sendall(request(host, path))
            head = sock.recv(1 << 16)
            self.ttfb = time.monotonic() - started
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(1 << 16)
                if not chunk:
                    raise ConnectionError("connection closed before the HTTP header ended")
                head += chunk
            header, _, rest = head.partition(b"\r\n\r\n")
            self.status = int(header.split(b" ", 2)[1])
            digest = hashlib.sha256(rest)
            got = len(rest)
            buf = bytearray(1 << 18)
            while True:
                n = sock.recv_into(buf)
                if not n:
                    break
                got += n
                digest.update(memoryview(buf)[:n])
        self.total = time.monotonic() - started
        self.bytes = got
        self.digest = digest.hexdigest()

    def matches(self, nbytes):
        from meshvpn.tools import webfixture

        return self.status == 200 and self.bytes == nbytes and self.digest == webfixture.expectedDigest(nbytes)


def request(host, path):
    return f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode()


def _viaSocks(proxy, host, port, path, isolation=None, optimistic=False):
    from meshvpn.tools import socksclient

    started = time.monotonic()
    kw = {} if isolation is None else {"username": isolation, "password": "x"}
    if optimistic:
        kw["early"] = request(host, path)
    return Fetch(socksclient.connect(proxy, host, port, **kw), host, path, started, sent=optimistic)


def _direct(host, port, path):
    started = time.monotonic()
    return Fetch(socket.create_connection((host, port), timeout=60), host, path, started)


def _median_ms(values):
    return round(statistics.median(values) * 1000, 2)


def measure(args, net, pipe, extra):
    host, port = net.startWeb()
    pipeHost, pipePort = pipe
    proxy = net.socksAddress()
    pids = [n.process.pid for n in net.nodes]
    # The very first stream (every process's first, on a fresh circuit); at the
    # end, with every process warm, first streams on other fresh circuits (a
    # new isolation key takes a spare): what a fresh circuit itself costs.
    if not _direct(host, port, "/bytes/10").matches(10):
        raise RuntimeError("the web server does not answer")
    first = _viaSocks(proxy, host, port, "/bytes/1000")
    if not first.matches(1000):
        raise RuntimeError("first fetch through the circuit failed")
    nbytes = args.megabytes * 1_000_000
    circuitsBefore = _circuitBytes(net)
    cpuBefore = [_cpuSeconds(p) for p in pids]
    bulk = _viaSocks(proxy, host, port, f"/bytes/{nbytes}")
    cpuEach = [_cpuSeconds(p) - b for p, b in zip(pids, cpuBefore)]
    cpuUsed = sum(cpuEach)
    bulkPath = _grewMost(circuitsBefore, net)
    pipeBulk = _direct(pipeHost, pipePort, f"/bytes/{nbytes}")
    small = [_viaSocks(proxy, host, port, "/bytes/100") for _ in range(args.fetches)]
    optimistic = [_viaSocks(proxy, host, port, "/bytes/100", optimistic=True) for _ in range(args.fetches)]
    direct = [_direct(pipeHost, pipePort, "/bytes/100") for _ in range(args.fetches)]
    loaded, loadedBulk = _underLoad(proxy, host, port, nbytes, args.fetches)
    parallel = _parallel(proxy, host, port, args.parallel, max(1, nbytes // args.parallel)) if args.parallel else []
    # Last: each new isolation key takes a fresh circuit, and the circuits it
    # leaves behind must not weigh on the measurements above.  Each waits
    # 0.6 s first, and a process that slept that long answers slower (cold
    # caches, an idle CPU to wake: doc/protocol.md, "Time to first byte"),
    # so a warm circuit and the direct baseline are timed after the same
    # pause: what the fresh circuit itself costs is the difference.
    fresh, warmPaused, directPaused = [], [], []
    for i in range(args.fresh):
        time.sleep(0.6)  # the spare taken by the last one is replaced meanwhile
        f = _viaSocks(proxy, host, port, "/bytes/1000", isolation=f"fresh-circuit-{i}")
        if not f.matches(1000):
            raise RuntimeError("first fetch through a fresh circuit failed")
        fresh.append(f.ttfb)
        time.sleep(0.6)
        w = _viaSocks(proxy, host, port, "/bytes/1000")
        time.sleep(0.6)
        d = _direct(pipeHost, pipePort, "/bytes/1000")
        if not (w.matches(1000) and d.matches(1000)):
            raise RuntimeError("a fetch after a pause failed")
        warmPaused.append(w.ttfb)
        directPaused.append(d.ttfb)
    checks = {
        "bulk": bulk.matches(nbytes),
        "pipe": pipeBulk.matches(nbytes),
        "small": all(f.matches(100) for f in small + optimistic),
        "direct": all(f.matches(100) for f in direct),
        "loaded": all(f.matches(100) for f in loaded) and loadedBulk[0],
        "parallel": all(f.matches(max(1, nbytes // args.parallel)) for f in parallel),
    }
    from meshvpn.tools.delaynet import connectTime

    throughput = nbytes * 8 / bulk.total / 1e6
    pipeThroughput = nbytes * 8 / pipeBulk.total / 1e6
    ttfb = statistics.median(f.ttfb for f in small)
    ttfbDirect = statistics.median(f.ttfb for f in direct)
    result = {
        "delay_ms": args.delay_ms,
        "throughput_mbps": round(throughput, 1),
        "pipe_throughput_mbps": round(pipeThroughput, 1),
        "share_of_pipe": round(throughput / pipeThroughput, 3),
        "rtt_ms_measured": connectTime(pipeHost, pipePort),
        "bytes": nbytes,
        "bytes_match": all(checks.values()),
        "checks": checks,
        "ttfb_ms_median": round(ttfb * 1000, 2),
        "ttfb_ms_direct_median": round(ttfbDirect * 1000, 2),
        "added_ttfb_ms_median": round((ttfb - ttfbDirect) * 1000, 2),
        "ttfb_ms_optimistic_median": _median_ms([f.ttfb for f in optimistic]),
        "added_ttfb_ms_optimistic_median": round(statistics.median(f.ttfb for f in optimistic) * 1000 - ttfbDirect * 1000, 2),
        "ttfb_ms_first_stream": round(first.ttfb * 1000, 2),
        "ttfb_ms_first_stream_fresh_circuit": _median_ms(fresh) if fresh else None,
        "ttfb_ms_warm_circuit_after_pause": _median_ms(warmPaused) if warmPaused else None,
        "ttfb_ms_direct_after_pause": _median_ms(directPaused) if directPaused else None,
        "ttfb_ms_loaded_median": round(statistics.median(f.ttfb for f in loaded) * 1000, 2) if loaded else None,
        # The goal: an interactive stream beside a download stays within 2x its unloaded time to first byte.
        "ttfb_loaded_ratio": round(statistics.median(f.ttfb for f in loaded) / ttfb, 2) if loaded else None,
        "loaded_fetches": len(loaded),
        "parallel_streams": len(parallel),
        "parallel_mbps_each": [round(f.bytes * 8 / f.total / 1e6, 1) for f in parallel],
        "parallel_spread": round(max(f.total for f in parallel) / min(f.total for f in parallel), 3) if parallel else None,
        "cpu_s_per_gb": round(cpuUsed / (nbytes / 1e9), 2),
        "fetches": args.fetches,
        "processes": len(pids),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    result.update(_perHop(net, cpuEach, nbytes, bulkPath))
    result["quiet_circuits_taken"] = _quietCircuitsTaken(net)
    result.update(extra)
    return result


def _underLoad(proxy, host, port, nbytes, fetches):
    """
    Small fetches while a bulk download runs through the same client (its
    first circuit: the same relays): their time to first byte, and the
    bulk fetch (checked too).  The bulk download runs in a process of its
    own, so the small fetches never wait for this one's GIL.
    """
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()

    def bulk(conn):
        f = _viaSocks(proxy, host, port, f"/bytes/{nbytes}")
        conn.send((f.matches(nbytes), f.bytes, f.total))

    p = ctx.Process(target=bulk, args=(child,))
    p.start()
    time.sleep(0.3)  # let the bulk transfer fill its window
    small = []
    while p.is_alive() and not parent.poll() and len(small) < fetches:
        small.append(_viaSocks(proxy, host, port, "/bytes/100"))
        time.sleep(0.02)
    result = parent.recv() if parent.poll(600) else (False, 0, 0)
    p.join()
    return small, result


def _parallel(proxy, host, port, count, each):
    """C{count} downloads of C{each} bytes at once; @return: their L{Fetch}es."""
    import threading

    out = [None] * count

    def one(i):
        out[i] = _viaSocks(proxy, host, port, f"/bytes/{each}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def _circuitBytes(net):
    """What each of the client's circuits received so far (its status file), by path."""
    from meshvpn.control.status import readStatus

    circuits = (readStatus(net.client.dataDir) or {}).get("circuits", {}).get("circuits", [])
    return {tuple(c["path"]): c.get("bytes_received", 0) for c in circuits if c.get("path")}


def _grewMost(before, net):
    """
    The path of the circuit that received the most since C{before}: the one
    the measured download took (later downloads may take another circuit, so
    the busiest one at the end need not be it).
    """
    time.sleep(1.2)  # the client rewrites its status file every second
    after = _circuitBytes(net)
    if not after:
        return None
    return list(max(after, key=lambda path: after[path] - before.get(path, 0)))


def _perHop(net, cpuEach, nbytes, path=None):
    """
    CPU seconds per GB of each process on the bulk circuit (C{path}, the
    circuit the measured download took; else the client's circuit that
    received the most) and of the four together
    (C{cpu_s_per_gb_path}), and what the middle relay switched
    per CPU second through real sockets and TLS: the counterpart of
    ``bench circuit``'s in-memory C{relay_cells_per_s_inmemory}.
    """
    from meshvpn.control.status import readStatus

    time.sleep(1.2)  # the client rewrites its status file every second
    circuits = (readStatus(net.client.dataDir) or {}).get("circuits", {}).get("circuits", [])
    if not circuits:
        return {}
    busiest = max(circuits, key=lambda c: c.get("bytes_received", 0))
    if path is not None:
        busiest = {"path": path}
    byId = {n.info["node_id"]: i for i, n in enumerate(net.nodes) if n.info}
    out = {}
    clientIndex = net.nodes.index(net.client)
    out["cpu_s_per_gb_client"] = round(cpuEach[clientIndex] / (nbytes / 1e9), 2)
    onPath = {clientIndex}
    for position, nodeId in zip(("guard", "middle", "exit"), busiest["path"]):
        if nodeId in byId:
            out[f"cpu_s_per_gb_{position}"] = round(cpuEach[byId[nodeId]] / (nbytes / 1e9), 2)
            onPath.add(byId[nodeId])
    # The processes off the circuit (the other relays, the DHT bootstrap): their
    # CPU grows with the transfer's duration, not its bytes.
    out["cpu_s_per_gb_others"] = round(sum(c for i, c in enumerate(cpuEach) if i not in onPath) / (nbytes / 1e9), 2)
    if len(onPath) == 4:
        # What the bytes cost: the four processes they crossed (steadier than the total on a loaded machine).
        out["cpu_s_per_gb_path"] = round(sum(cpuEach[i] for i in onPath) / (nbytes / 1e9), 2)
    middleCpu = cpuEach[byId[busiest["path"][1]]] if len(busiest["path"]) == 3 and busiest["path"][1] in byId else 0
    if middleCpu > 0:
        # Both directions: the data cells down and their acknowledgements up are few; count the data.
        out["relay_cells_per_cpu_s_tls"] = int(nbytes / RELAY_DATA_LEN / middleCpu)
    return out


def run(args):
    from meshvpn.tools.testnet import Testnet

    log = (lambda line: print(line, flush=True)) if not args.json else (lambda line: None)
    if args.multipath and args.delay_ms > 0:
        raise SystemExit("bench throughput: --multipath runs on loopback only (not with --delay-ms) for now")
    if args.delay_ms > 0:
        result = _runDelayed(args, log)
    else:
        net = Testnet(log)
        try:
            net.start()
            result = measure(args, net, net.startWeb("127.4.0.1"), {})
            result.update(_multipathChoice(net))
        finally:
            net.stop()
    if args.multipath:
        result.update(_multipath(args, log))
        result["bytes_match"] = result["bytes_match"] and result["multipath_bytes_match"]
        result["checks"]["multipath_linked"] = bool(result["multipath_streams_linked"])
    print(json.dumps(result) if args.json else json.dumps(result, indent=1))
    return 0 if result["bytes_match"] else 1


def _multipath(args, log):
    """
    The same bulk download on a network whose client gives a stream a second
    circuit to its exit after 1 MB (multipath): its throughput, next to the
    single-path figure measured above, and whether both legs carried it.
    """
    from meshvpn.tools.testnet import Testnet

    net = Testnet(log, nodeArgs=lambda name, host: ["--multipath-after", str(MULTIPATH_AFTER)] if name == "client" else [])
    try:
        net.start()
        host, port = net.startWeb()
        proxy = net.socksAddress()
        if not _viaSocks(proxy, host, port, "/bytes/1000").matches(1000):
            raise RuntimeError("first fetch through the multipath network failed")
        nbytes = args.megabytes * 1_000_000
        pids = [n.process.pid for n in net.nodes]
        cpuBefore = [_cpuSeconds(p) for p in pids]
        bulk = _viaSocks(proxy, host, port, f"/bytes/{nbytes}")
        cpuUsed = sum(_cpuSeconds(p) - b for p, b in zip(pids, cpuBefore))
        legs = _linkedStreams(net)
    finally:
        net.stop()
    return {
        "multipath_throughput_mbps": round(nbytes * 8 / bulk.total / 1e6, 1),
        "multipath_bytes_match": bulk.matches(nbytes),
        "multipath_after_bytes": MULTIPATH_AFTER,
        "multipath_cpu_s_per_gb": round(cpuUsed / (nbytes / 1e9), 2),
        "multipath_streams_linked": legs,
    }


def _multipathChoice(net):
    """
    What the client's automatic multipath rule (its default, doc/protocol.md
    "When") did with this run's streams, from its log: second legs linked,
    and bulk streams it kept on one circuit because the client itself was
    the bottleneck.  On loopback the client's CPU is, so 0 legs is right.
    """
    return {"multipath_legs_linked": _linkedStreams(net), "multipath_stayed_single_busy": _logCount(net, "multipath: staying on one circuit"),
            **_ruleOutcome(net)}


def _ruleOutcome(net):
    """What the client's rule decided (from its log): links asked for, legs kept or given back, its measured gain."""
    gains = []
    try:
        with open(net.client.logPath) as f:
            for line in f:
                m = re.search(r"\(two legs move ([0-9.]+)x|does not pay: ([0-9.]+)x", line)
                if m:
                    gains.append(float(m.group(1) or m.group(2)))
    except OSError:
        pass
    return {
        "multipath_rule_links": _logCount(net, "-> linking"),
        "multipath_rule_kept": _logCount(net, "-> multipath"),
        "multipath_rule_gave_back": sum(_logCount(net, t) or 0 for t in ("(the second leg does not pay", "(client busy", "(two legs now move")),
        "multipath_rule_gain": gains[-1] if gains else None,
    }


def _logCount(net, text):
    try:
        with open(net.client.logPath) as f:
            return sum(1 for line in f if text in line)
    except OSError:
        return None


def _linkedStreams(net):
    """Second legs the client linked (from its log): 0 means every stream stayed on one circuit."""
    return _logCount(net, "carried by two circuits")


def _quietCircuitsTaken(net):
    """
    Times the client gave a new stream a circuit of its own because the one
    it would have shared carried a bulk transfer (doc/socks.md, from its
    log): 0 means the loaded fetches shared the download's circuit.
    """
    try:
        with open(net.client.logPath) as f:
            return sum(1 for line in f if "a quiet circuit for a new stream" in line)
    except OSError:
        return None


def _runDelayed(args, log):
    from meshvpn.tools import delaynet
    from meshvpn.tools.nattestbed import Cleanups
    from meshvpn.tools.netns import Netns
    from meshvpn.tools.netnsenter import netnsEntered
    from meshvpn.tools.testnet import Testnet, hopAddresses

    delaynet.requireDelayTools()
    with Cleanups() as c:
        ns = Netns(c, "mvd").add("net")
        with netnsEntered(ns):
            hops = delaynet.DelayedHops(c, args.delay_ms, hopAddresses())
            net = Testnet(log)
            try:
                net.start(timeout=180.0)
                result = measure(args, net, net.startWeb(delaynet.PIPE_HOST), {})
                result.update(_multipathChoice(net))
                hops.check()
            finally:
                net.stop()
            result.update(hops.stop())
    return result


def addArguments(p):
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--megabytes", type=int, default=50, help="size of the download (default 50 MB)")
    p.add_argument("--fetches", type=int, default=20, help="small fetches for time to first byte (default 20)")
    p.add_argument("--fresh", type=int, default=5, help="first streams on fresh circuits to time (default 5)")
    p.add_argument("--parallel", type=int, default=8, help="simultaneous downloads sharing the bulk size (default 8; 0 skips)")
    p.add_argument("--multipath", action="store_true",
                   help="also download through a network whose client uses two circuits (multipath) and print both")
    p.add_argument("--delay-ms", type=float, default=0.0,
                   help="one-way delay on every TCP hop, in its own network namespace (root; default 0: loopback)")
