"""``meshvpn bench multipath``: where multipath pays, a network whose relays are slower than its client.

On loopback every relay is as fast as the machine, so a second circuit
only splits the same two cores (``bench throughput --multipath``).  On a
real network a bulk stream is held to its slowest relay, and a second
circuit through two other relays to the same exit is what multipath is
for.  This bench runs the local testnet twice with its guards and middles
throttled (``--bandwidth-rate``; the exits are not, they carry both legs)
and the same download through each: once with multipath off, once with
the client linking a second circuit after 1 MB.  Both downloads are
checked byte for byte; ``multipath_gain`` is the second's throughput over
the first's.
"""

from meshvpn.tools.benchthroughput import MULTIPATH_AFTER, _linkedStreams, _viaSocks
from meshvpn.tools.benchoutput import report

THROTTLED = ("relay1", "relay2", "relay3", "relay4")


def _download(args, log, multipath):
    from meshvpn.tools.testnet import Testnet

    rate = str(args.relay_rate)

    def nodeArgs(name, host):
        if name in THROTTLED:
            return ["--bandwidth-rate", rate, "--bandwidth-burst", rate]
        if name == "client" and multipath:
            return ["--multipath-after", str(MULTIPATH_AFTER)]
        return []

    net = Testnet(log, nodeArgs=nodeArgs)
    try:
        net.start()
        net.waitForDirectory()  # two disjoint paths need every relay known
        host, port = net.startWeb()
        proxy = net.socksAddress()
        if not _viaSocks(proxy, host, port, "/bytes/1000").matches(1000):
            raise RuntimeError("first fetch through the throttled network failed")
        nbytes = args.megabytes * 1_000_000
        fetch = _viaSocks(proxy, host, port, f"/bytes/{nbytes}")
        legs = _linkedStreams(net)
    finally:
        net.stop()
    return fetch, nbytes, legs


def run(args):
    log = (lambda *a: None) if args.json else print
    single, nbytes, _ = _download(args, log, multipath=False)
    multi, _, legs = _download(args, log, multipath=True)
    singleMbps = nbytes * 8 / single.total / 1e6
    multiMbps = nbytes * 8 / multi.total / 1e6
    result = {
        "relay_rate_bytes_per_s": args.relay_rate,
        "bytes": nbytes,
        "single_path_mbps": round(singleMbps, 2),
        "multipath_mbps": round(multiMbps, 2),
        "multipath_gain": round(multiMbps / singleMbps, 2),
        "multipath_streams_linked": legs,
        "bytes_match": single.matches(nbytes) and multi.matches(nbytes),
    }
    report(result, args.json)
    if not result["bytes_match"] or not legs:
        raise SystemExit("bench multipath: a download did not arrive byte-exact, or the stream was never linked")


def addArguments(p):
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--megabytes", type=int, default=20, help="size of each download (default 20 MB)")
    p.add_argument("--relay-rate", type=int, default=2_000_000,
                   help="bytes per second each guard and middle relays (default 2000000)")
