"""``meshvpn bench multipath``: where multipath pays, a network whose relays are slower than its client.

On loopback every relay is as fast as the machine, so a second circuit
only splits the same two cores (``bench throughput --multipath``).  On a
real network a bulk stream is held to its slowest relay, and a second
circuit through two other relays to the same exit is what multipath is
for.  This bench runs the local testnet twice with its guards and middles
throttled (``--bandwidth-rate``; the exits are not, they carry both legs)
and the same download through each: once with multipath off, once with
the client's default, the automatic rule (L{meshvpn.circuits.mpauto}),
which must itself choose to link a second leg and keep it.  Both downloads
are checked byte for byte; ``multipath_gain`` is the second's throughput
over the first's; ``multipath_chosen_by_rule`` says the rule linked the
second leg, ``multipath_rule_kept`` that its trial found it paid, with the
gain it measured (``multipath_rule_gain``, the set's rate over the single
path's in the seconds before it linked).
"""

from meshvpn.tools.benchthroughput import _linkedStreams, _ruleOutcome, _viaSocks
from meshvpn.tools.benchoutput import report

THROTTLED = ("relay1", "relay2", "relay3", "relay4")


def _download(args, log, multipath):
    from meshvpn.tools.testnet import Testnet

    rate = str(args.relay_rate)

    def nodeArgs(name, host):
        if name in THROTTLED:
            return ["--bandwidth-rate", rate, "--bandwidth-burst", rate]
        if name == "client" and not multipath:
            return ["--multipath-after", "off"]
        return []  # the client's default: --multipath-after auto

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
        rule = _ruleOutcome(net)
    finally:
        net.stop()
    return fetch, nbytes, legs, rule


def run(args):
    log = (lambda *a: None) if args.json else print
    single, nbytes, singleLegs, _ = _download(args, log, multipath=False)
    multi, _, legs, rule = _download(args, log, multipath=True)
    singleMbps = nbytes * 8 / single.total / 1e6
    multiMbps = nbytes * 8 / multi.total / 1e6
    result = {
        "relay_rate_bytes_per_s": args.relay_rate,
        "bytes": nbytes,
        "single_path_mbps": round(singleMbps, 2),
        "multipath_mbps": round(multiMbps, 2),
        "multipath_gain": round(multiMbps / singleMbps, 2),
        "multipath_streams_linked": legs,
        "single_path_legs_linked": singleLegs,
        "multipath_chosen_by_rule": bool(legs) and bool(rule["multipath_rule_links"]),
        **rule,
        "bytes_match": single.matches(nbytes) and multi.matches(nbytes),
    }
    report(result, args.json)
    if not result["bytes_match"] or not result["multipath_chosen_by_rule"] or singleLegs:
        raise SystemExit("bench multipath: a download did not arrive byte-exact, the rule did not link a second leg, "
                         "or the run with multipath off linked one")


def addArguments(p):
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--megabytes", type=int, default=40, help="size of each download (default 40 MB: long enough for the rule's trial to conclude)")
    p.add_argument("--relay-rate", type=int, default=2_000_000,
                   help="bytes per second each guard and middle relays (default 2000000)")
