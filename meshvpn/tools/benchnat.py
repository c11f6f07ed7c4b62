"""`meshvpn bench nat`: the NAT connectivity matrix as a benchmark (root only).

Builds the namespace testbed, connects every pair of NAT types with the
datagram link (punched, or relayed through TURN), pushes data both ways,
classifies every host with ``meshvpn netcheck`` (RFC 5780), tears it all
down, and prints one JSON object (``--json``) or a table.  With ``--ipv6``
the IPv6 pairs follow (L{meshvpn.tools.firewall6}: stateful firewalls, no
NAT66; every pair must punch through directly).
"""

import json
import os

from meshvpn.errors import MeshVPNError


def run(args, out):
    if os.geteuid() != 0:
        raise MeshVPNError("bench nat needs root (network namespaces and nftables)")
    from meshvpn.tools import natmatrix as matrix
    from meshvpn.tools.nattestbed import Cleanups

    with Cleanups() as cleanups:
        result = matrix.runMatrix(cleanups, size=args.bytes, classify=not args.no_classify, coturn=args.coturn)
    if args.ipv6:
        from meshvpn.tools import firewall6

        with Cleanups() as cleanups:
            result["pairs"] += firewall6.runPairs(cleanups, size=args.bytes)["pairs"]
    result["turn_server"] = "coturn" if args.coturn else "meshvpn"
    for r in result["pairs"]:
        r["ok"] = pairOk(r)
    result["all_ok"] = all(r["ok"] for r in result["pairs"])
    code = 0 if result["all_ok"] else 1
    if args.json:
        out(json.dumps(result))
        return code
    out(f"{'a':20} {'b':20} {'expected':8} {'path':8} {'connect s':>9} {'transfer s':>10}  verified ok")
    for r in result["pairs"]:
        ct = "-" if r["connect_time_s"] is None else f"{r['connect_time_s']:.3f}"
        tt = f"{r.get('transfer_s', 0):.3f}" if r.get("transfer_s") is not None else "-"
        out(f"{r['a']:20} {r['b']:20} {r['expected_path']:8} {str(r['path']):8} {ct:>9} {tt:>10}  {r['verified']} {r['ok']}")
    for c in result["classified"]:
        out(f"classified {c['host']:22} expected {c['expected']:20} detected {c['detected']}")
    out(f"total {result['total_s']} s (setup {result['setup_s']} s), {result['bytes_each_way']} bytes each way")
    if code:
        out("FAILED: " + ", ".join(f"{r['a']}/{r['b']}" for r in result["pairs"] if not r["ok"]))
    return code


def pairOk(row):
    """A pair passes only if it connected, its bytes were verified, and it took the path expected of it."""
    return bool(row["connected"] and row["verified"] and row["path"] == row["expected_path"])
