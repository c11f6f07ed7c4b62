"""``meshvpn bench tun``: the VPN measured in network namespaces (root).

Every download is checked: curl's exit code (a transfer cut by its time
limit fails the bench instead of counting as throughput), HTTP 200, the
exact size and the SHA-256 of the bytes against the web fixture's body.

- C{throughput_mbps}: one TCP download (curl, no proxy) through the TUN, a
  3-hop circuit of real ``twistd`` relays and the packet exit's NAT;
- C{rtt_ms_median} (ping through the tunnel) against C{rtt_ms_direct_median}
  (the same ping on the plain uplink before the VPN is up);
- C{mesh_throughput_mbps} / C{mesh_rtt_ms_median}: a TCP download and pings
  between two mesh clients behind NAT boxes of the NAT testbed (full-cone
  and port-restricted: a hole-punched direct path).

The layouts are L{meshvpn.tools.tunworld.TunWorld.buildTwistd} and
L{meshvpn.tools.meshworld.meshWorld}; everything is removed at the end.
"""

import hashlib
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time

from meshvpn.tools.benchoutput import report
from meshvpn.tools.nattestbed import Cleanups
from meshvpn.tools.netns import Netns, run


def _pingTimes(ns, target, count):
    out = run("ip", "netns", "exec", ns, "ping", "-n", "-c", str(count), "-i", "0.05", "-w", str(5 + count), target,
              check=False)
    return [float(m) for m in re.findall(r"time=([\d.]+) ms", out)]


class DownloadError(RuntimeError):
    """A download failed, was cut short, or its bytes are not the ones served."""


def _download(ns, url, expected, timeout=120):
    """
    Fetch C{url} with curl inside C{ns} (C{None}: here) and check what came: curl's exit code
    (a transfer cut by C{--max-time} is a failure, not a throughput), HTTP
    200, exactly C{expected} bytes, and their SHA-256 against the web
    fixture's known body.  The body is hashed as it streams (never stored).

    @return: C{(bytes, seconds)}, seconds as curl timed the transfer.
    @raise DownloadError: any of these checks failed.
    """
    from meshvpn.tools import webfixture

    inside = ["ip", "netns", "exec", ns] if ns else []
    proc = subprocess.Popen([*inside, "curl", "-sS", "--max-time", str(timeout), "-o", "-",
                             "-w", "%{stderr}%{http_code} %{size_download} %{time_total}", url],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    digest, got = hashlib.sha256(), 0
    try:
        while True:
            chunk = proc.stdout.read(1 << 20)
            if not chunk:
                break
            digest.update(chunk)
            got += len(chunk)
        err = proc.stderr.read().decode(errors="replace")
        rc = proc.wait(timeout + 10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    words = err.split()
    if rc != 0 or len(words) < 3:
        raise DownloadError(f"curl {url} failed (exit {rc}): {err[-300:]}")
    code, size, total = words[-3:]
    if code != "200":
        raise DownloadError(f"download of {url} failed: HTTP {code}")
    if got != expected or int(size) != expected:
        raise DownloadError(f"download of {url} is {got} bytes, expected {expected}")
    if digest.hexdigest() != webfixture.expectedDigest(expected):
        raise DownloadError(f"download of {url}: the bytes are not the ones served")
    return got, float(total)


def _dropCounters(status, keys=("drop", "dropped", "drops", "written", "read", "joined", "to_circuit", "from_circuit")):
    """The counters of the client's status that tell where packets went (or were lost)."""
    out = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}{k}.", v)
        elif isinstance(value, (int, float)) and any(k in prefix for k in keys):
            out[prefix[:-1]] = value

    walk("", status)
    return out


_TICK = os.sysconf("SC_CLK_TCK")


def _cpuSeconds(procs):
    """
    C{{name: user+system CPU seconds}} of each running process in C{procs}
    (C{{name: Popen}}; ``ip netns exec`` execs, so the pid is the node's).
    """
    out = {}
    for name, proc in procs.items():
        try:
            with open(f"/proc/{proc.pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue  # gone: nothing to charge
        out[name] = (int(fields[11]) + int(fields[12])) / _TICK
    return out


def _cpuPerGB(before, after, moved):
    """CPU seconds per GB moved, per process and in total (robust where Mbit/s on a shared machine is not)."""
    per = {name: round((after[name] - before[name]) * 1e9 / moved, 2) for name in after if name in before}
    return per, round(sum(per.values()), 2)


def _median(values):
    return round(statistics.median(values), 3) if values else None


def benchVPN(size, pings):
    from meshvpn.tools.tunworld import DOMAIN, WEB, TunWorld

    with Cleanups() as c:
        workdir = tempfile.mkdtemp(prefix="mvbench-tun-")
        c.addCleanup(shutil.rmtree, workdir, True)
        w = TunWorld(Netns(c, "mvb"), c.addCleanup, workdir).buildTwistd()
        direct = _pingTimes(w.ns["cl"], WEB, pings)
        w.startTwistdClient()
        deadline = time.monotonic() + 40
        while True:  # the first circuit
            try:
                _download(w.ns["cl"], f"http://{DOMAIN}/bytes/1000", 1000, timeout=10)
                break
            except DownloadError:
                if time.monotonic() > deadline:
                    raise RuntimeError("no circuit after 40s: " + w.nodeLog("client")[-1500:]) from None
                time.sleep(0.5)
        before = _cpuSeconds(w.procs)
        got, seconds = _download(w.ns["cl"], f"http://{DOMAIN}/bytes/{size}", size)
        perProcess, total = _cpuPerGB(before, _cpuSeconds(w.procs), got)
        tunnel = _pingTimes(w.ns["cl"], WEB, pings)
        time.sleep(1.2)  # the status file is rewritten every second
        from meshvpn.control.status import readStatus

        status = readStatus(w.dataDirs["client"]) or {}
        # The exit's side: how many packets crossed its TUN offloaded (64 KB segments) and what it dropped.
        exitStatus = (readStatus(w.dataDirs["exit"]) or {}).get("packet_exit") or {}
        return {
            "throughput_mbps": round(got * 8 / seconds / 1e6, 2),
            "bytes": got,
            "seconds": round(seconds, 3),
            "rtt_ms_median": _median(tunnel),
            "rtt_ms_direct_median": _median(direct),
            "pings_answered": len(tunnel),
            "cpu_s_per_gb": total,
            "cpu_s_per_gb_by_process": perProcess,
            "load_average_1m": round(os.getloadavg()[0], 2),  # Mbit/s on a shared machine means little without it
            "client_status": _dropCounters(status),
            "exit_status": _dropCounters(exitStatus, keys=("malformed", "oversize", "rejected", "no_lease", "gated",
                                                           "to_internet", "from_internet", "offload", "packets_read",
                                                           "packets_written", "write_drops")),
        }


def benchMesh(size, pings):
    from meshvpn.tools.meshworld import meshPeers, meshWorld

    with Cleanups() as c:
        workdir = tempfile.mkdtemp(prefix="mvbench-mesh-")
        c.addCleanup(shutil.rmtree, workdir, True)
        tb, infos, names = meshWorld(c, (("full-cone", "port-restricted", "direct"),), workdir)
        a, b = names
        portFile = os.path.join(workdir, "web.port")
        log = open(os.path.join(workdir, "web.log"), "wb")
        c.addCleanup(log.close)
        import sys

        web = tb.popen(b, [sys.executable, "-m", "meshvpn.tools.webfixture", "--listen", f"tcp:8080:interface={infos[b]['address']}",
                     "--port-file", portFile], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not os.path.exists(portFile) and time.monotonic() < deadline:
            time.sleep(0.05)
        times = _pingTimes(tb.hosts[a].ns, infos[b]["address"], pings)
        procs = {name: infos[name]["proc"] for name in names}
        procs["web"] = web
        before = _cpuSeconds(procs)
        got, seconds = _download(tb.hosts[a].ns, f"http://{infos[b]['address']}:8080/bytes/{size}", size)
        perProcess, total = _cpuPerGB(before, _cpuSeconds(procs), got)
        deadline = time.monotonic() + 5
        while infos[b]["address"] not in meshPeers(infos[a]) and time.monotonic() < deadline:
            time.sleep(0.2)  # the status file is rewritten every second
        peers = meshPeers(infos[a])
        from meshvpn.control.status import readStatus

        receiver = _dropCounters((readStatus(infos[a]["dataDir"]) or {}).get("tun") or {},
                                 keys=("drop", "written", "read", "joined", "spoofed"))
        return {
            "mesh_throughput_mbps": round(got * 8 / seconds / 1e6, 2),
            "mesh_bytes": got,
            "mesh_rtt_ms_median": _median(times),
            "mesh_path": peers.get(infos[b]["address"], {}).get("path"),
            "mesh_cpu_s_per_gb": total,
            "mesh_cpu_s_per_gb_by_process": perProcess,
            "mesh_load_average_1m": round(os.getloadavg()[0], 2),
            "mesh_receiver_status": receiver,
        }


def benchTun(size=20_000_000, pings=20, meshSize=None, mesh=True, vpn=True):
    result = {"benchmark": "tun", "size_bytes": size}
    if vpn:
        result.update(benchVPN(size, pings))
    if mesh:
        result.update(benchMesh(meshSize or size, pings))
    return result


def addArguments(p):
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--bytes", type=int, default=20_000_000, help="bytes per download (default 20 MB)")
    p.add_argument("--pings", type=int, default=20, help="pings per RTT median (default 20)")
    p.add_argument("--no-mesh", action="store_true", help="skip the mesh measurement")
    p.add_argument("--no-vpn", action="store_true", help="skip the VPN (3-hop) measurement")


def command(args):
    result = benchTun(args.bytes, args.pings, mesh=not args.no_mesh, vpn=not args.no_vpn)
    report(result, args.json)
    return 0
