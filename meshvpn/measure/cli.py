"""``meshvpn weights``: what the reports say of each relay, as a client computed it (its ``weights.json``).

Read from the client's data directory, so it works whether or not the
control plane is enabled; every number in it is public (the reports are in
the DHT for anyone to read and recompute).
"""

import json
import os

from meshvpn.errors import MeshVPNError
from meshvpn.measure.aggregate import WEIGHED
from meshvpn.measure.service import WEIGHTS_FILE


def addArguments(p, defaultDataDir):
    p.add_argument("--data-dir", default=defaultDataDir, help="the client's data directory")
    p.add_argument("--json", action="store_true", help="print the whole weights.json")
    p.add_argument("--all", action="store_true", help="also list relays the reports do not measure")


def _size(n):
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def formatWeights(body, everyone=False):
    relays = body.get("relays", [])
    total = sum(r["weight"] for r in relays) or 1
    length = body.get("epoch_length") or 1
    stood = sum(1 for r in relays if "probed" in r["flags"] and "measured" not in r["flags"])
    lines = [f"epoch {body.get('epoch')} ({length} s epochs): {body.get('reports', 0)} reports, "
             f"{sum(1 for r in relays if 'measured' in r['flags'])} relays measured"
             + (f", {stood} weighed by their probes" if stood else "")]
    lines.append(f"  {'relay':16}  {'bandwidth':>10}  {'probed':>10}  {'weight':>7}  {'uptime':>8}  {'seen':>4}  {'partners':>8}  "
                 f"{'flags':22}  last report")
    for r in sorted(relays, key=lambda r: -r["weight"]):
        if not everyone and not WEIGHED.intersection(r["flags"]):
            continue
        rep = r.get("report")
        last = f"epoch {rep['epoch']}: {rep['neighbours']} neighbours, {_size(rep['bytes'])}" if rep else "-"
        probed = "-" if r.get("probed") is None else _size(r["probed"]) + "/s"
        # uptime: what its partners say; seen: the epochs of the agreed chain it was seen in, which nobody can name
        seen = "-" if r.get("seen_epochs") is None else str(r["seen_epochs"])
        lines.append(f"  {r['node_id'][:16]}  {_size(r['bandwidth']) + '/s':>10}  {probed:>10}  {100 * r['weight'] / total:6.2f}%  "
                     f"{r['uptime'] / 3600:7.1f}h  {seen:>4}  {r['reporters']:>8}  {','.join(r['flags']) or '-':22}  {last}")
    return "\n".join(lines)


def run(args, out=print):
    path = os.path.join(os.path.abspath(args.data_dir), WEIGHTS_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            body = json.load(f)
    except FileNotFoundError:
        raise MeshVPNError(f"{path}: no weights yet (a client writes them once an epoch's reports are read)") from None
    except (OSError, ValueError) as e:
        raise MeshVPNError(f"{path}: unreadable ({e})") from None
    out(json.dumps(body, indent=1) if args.json else formatWeights(body, args.all))
    return 0
