"""``meshvpn bench ...``: every benchmark's subcommand, in one place.

Benchmarks are tools, not tests: each prints one JSON object (with
``--json``) and the tests only check that they run.
"""


def addBenchCommands(sub):
    bench = sub.add_parser("bench", help="run a benchmark and print its numbers", description="Benchmarks (loopback only).")
    benchSub = bench.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    p = benchSub.add_parser("link", help="cells/s and Mbps over one TLS link on loopback")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--cells", type=int, default=200_000, help="cells to send each way (default 200000)")
    p.add_argument("--batch", type=int, default=64, help="cells per sendCells call (default 64)")
    p.add_argument("--bidirectional", action="store_true", help="send the same number back at the same time")
    p.add_argument("--processes", action="store_true", help="receive in a separate process (one core per end)")
    p.set_defaults(func=_benchLinkCommand)
    p = benchSub.add_parser("circuit", help="onion crypto per cell per hop and relay switching rate",
                            description="Onion crypto cost and one relay's cell switching rate (in memory).")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--cells", type=int, default=200_000, help="cells to switch per direction (default 200000)")
    p.add_argument("--batch", type=int, default=64, help="cells per link read (default 64)")
    p.add_argument("--builds", type=int, default=50, help="in-memory circuit builds to time (default 50)")
    p.add_argument("--tls-builds", type=int, default=30, help="builds over real TLS links on loopback (default 30; 0 skips)")
    p.add_argument("--real-builds", type=int, default=30, help="builds through real relay processes (default 30; 0 skips)")
    p.set_defaults(func=_benchCircuitCommand)
    p = benchSub.add_parser("throughput", help="SOCKS download through one 3-hop circuit on loopback (real processes)")
    from meshvpn.tools import benchthroughput

    benchthroughput.addArguments(p)
    p.set_defaults(func=lambda args: benchthroughput.run(args))
    p = benchSub.add_parser("multipath", help="a download with multipath off and on through throttled relays (real processes)")
    from meshvpn.tools import benchmultipath

    benchmultipath.addArguments(p)
    p.set_defaults(func=benchmultipath.run)
    p = benchSub.add_parser("exit-begin", help="the exit's BEGIN -> CONNECTED on loopback (in process, real reactor)")
    from meshvpn.tools import benchexitbegin

    benchexitbegin.addArguments(p)
    p.set_defaults(func=benchexitbegin.run)
    p = benchSub.add_parser("dht", help="simulated DHT network with churn and loss (real DHT code)")
    from meshvpn.tools.benchdht import addArguments

    addArguments(p)
    p.set_defaults(func=_benchDHTCommand)
    p = benchSub.add_parser("nat", help="NAT connectivity matrix in network namespaces (root)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--bytes", type=int, default=1 << 20, help="bytes pushed each way per pair (default 1 MiB)")
    p.add_argument("--no-classify", action="store_true", help="skip the netcheck classification of every host")
    p.add_argument("--coturn", action="store_true", help="relay through a stock coturn instead of our TURN server")
    p.add_argument("--ipv6", action="store_true",
                   help="also the IPv6 pairs: hosts behind stateful IPv6 firewalls (no NAT66) and open hosts")
    p.set_defaults(func=_benchNatCommand)
    p = benchSub.add_parser("datagram-link", help="per-packet cost of the datagram link (in process)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--count", type=int, default=50000, help="packets to send")
    p.add_argument("--size", type=int, default=1200, help="bytes per packet")
    p.set_defaults(func=_benchDatagramLinkCommand)
    p = benchSub.add_parser("tun", help="VPN throughput and RTT through 3 hops, and mesh, in namespaces (root)")
    from meshvpn.tools import benchtun

    benchtun.addArguments(p)
    p.set_defaults(func=benchtun.command)
    p = benchSub.add_parser("paths", help="share of circuits a hostile fraction of relays sees (real path and guard code)",
                            description="Hostile share of guards and exits, in memory: real path selection and guards.")
    from meshvpn.tools import benchpaths

    benchpaths.addArguments(p)
    p.set_defaults(func=benchpaths.command)
    p = benchSub.add_parser("flood", help="honest circuit builds through a relay flooded with CREATE2 and links (real process)",
                            description="One peer floods a relay process with CREATE2, another with links; honest "
                                        "clients build circuits through it (loopback).")
    from meshvpn.tools import benchflood

    benchflood.addArguments(p)
    p.set_defaults(func=lambda args: benchflood.run(args))
    p = benchSub.add_parser("tokens", help="bandwidth tokens: issue (blind sign) and verify rates (in process)")
    from meshvpn.tools import benchtokens

    benchtokens.addArguments(p)
    p.set_defaults(func=lambda args: benchtokens.run(args, lambda line: print(line, flush=True)))
    p = benchSub.add_parser("weights", help="peer-measured relay weights against liars (simulation, real aggregation)",
                            description="Relays with known capacities report traffic; a hostile fraction lies; "
                                        "prints how weights track capacity and what the liars gain.")
    from meshvpn.tools import benchweights

    benchweights.addArguments(p)
    p.set_defaults(func=lambda args: benchweights.run(args, lambda line: print(line, flush=True)))
    p = benchSub.add_parser("load", help="many users (own circuits, browsing and bulk) on a real-process network",
                            description="A load generator acting as many users through real clients, relays and exits "
                                        "on loopback; prints build rates and times, stream success, Mbps, relay RSS/CPU.")
    from meshvpn.tools import benchload

    benchload.addArguments(p)
    p.set_defaults(func=benchload.command)
    p = benchSub.add_parser("chaos", help="the load network under kill -9, SIGSTOP and restarts: recovery per fault",
                            description="Users probe through their own circuits while relays, exits and the bootstrap "
                                        "node are killed, hung and restarted; prints recovery times per fault.")
    from meshvpn.tools import benchchaos

    benchchaos.addArguments(p)
    p.set_defaults(func=benchchaos.command)
    p = benchSub.add_parser("chaos-netns", help="link cuts and packet loss with nftables in namespaces, and a leak check (root)",
                            description="The whole-world network in namespaces the bench creates and removes: guard links "
                                        "cut, UDP and TCP packets dropped at random by nftables in the made-up internet's "
                                        "router; prints recovery per fault and what left each client's uplink.")
    from meshvpn.tools import chaosnetns

    chaosnetns.addArguments(p)
    p.set_defaults(func=chaosnetns.command)

def _benchDHTCommand(args):
    from meshvpn.tools import benchdht as bench

    return bench.main(args, lambda line: print(line, flush=True))



def _benchDatagramLinkCommand(args):
    from meshvpn.tools.benchdatagram import run

    return run(args, lambda line: print(line, flush=True))


def _benchNatCommand(args):
    from meshvpn.tools.benchnat import run

    return run(args, lambda line: print(line, flush=True))


def _benchLinkCommand(args):
    from meshvpn.tools import benchlink as bench

    return bench.main(args)


def _benchCircuitCommand(args):
    from meshvpn.tools import benchonion as bench

    return bench.main(args)

