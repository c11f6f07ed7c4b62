"""The `meshvpn` commands that talk to a running node's control API.

`status`, `circuits`, `relays`, `events`, `newnym`, `vpn up|down`, `set KEY
VALUE` and `dashboard`, each with `--data-dir` (which node) and `--json`
(the API's answer as is).  They find the node through its data dir only
(L{ControlClient.forDataDir}); an error is the API's one line.  `status`
falls back to the node's C{status.json} when the API cannot be reached
(a node from before the control API, or one that just died).
"""

import json
import sys
import time

from meshvpn.config import defaultDataDir


def addControlCommands(sub):
    """Register the control subcommands on C{sub} (argparse subparsers)."""
    commands = [
        ("status", "show a running node: NAT, DHT, links, circuits, VPN, bandwidth", _status, None),
        ("circuits", "list the node's circuits: hops, state, age, bytes", _circuits, None),
        ("relays", "list the relays the node knows: pins, exclusions and what the traffic reports measure", _relays, _relaysArgs),
        ("events", "follow the node's live events (circuits, VPN, bandwidth, log)", _events, _eventsArgs),
        ("newnym", "new circuits for new streams (new identity)", _newnym, None),
        ("vpn", "turn the node's VPN on or off", _vpn, _vpnArgs),
        ("set", "change a setting of the running node (validated as in the config file)", _set, _setArgs),
        ("dashboard", "print a one-time login link to the node's dashboard", _dashboard, None),
    ]
    for name, help, func, extra in commands:
        p = sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".")
        p.add_argument("--data-dir", default=defaultDataDir("client"), help="the node's data directory")
        p.add_argument("--json", action="store_true", help="print the API's JSON answer")
        if extra is not None:
            extra(p)
        p.set_defaults(func=func)


def _client(args):
    import os

    from meshvpn.control.client import ControlClient

    return ControlClient.forDataDir(os.path.abspath(args.data_dir))


def _print(args, value, text):
    print(json.dumps(value, indent=1) if args.json else text(value))
    return 0


# -- status


def _status(args):
    from meshvpn.control.client import ControlClientError

    try:
        status = _client(args).get("/v1/status")
    except ControlClientError as e:
        return _statusFromFile(args, e)
    return _print(args, status, formatSummary)


def _statusFromFile(args, why):
    import os

    from meshvpn.control.status import formatStatus, readStatus
    from meshvpn.errors import MeshVPNError

    status = readStatus(os.path.abspath(args.data_dir))
    if status is None:
        raise MeshVPNError(str(why))
    print(f"(control API unavailable: {why}; showing status.json)", file=sys.stderr)
    print(json.dumps(status, indent=1) if args.json else formatStatus(status))
    return 0


def formatSummary(s):
    node, nat, dht, links = s.get("node", {}), s.get("nat", {}), s.get("dht", {}), s.get("links", {})
    addresses = "  ".join(f"{k} {v}" for k, v in node.get("addresses", {}).items())
    lines = [f"node {node.get('node_id', '?')[:16]}…  role {node.get('role', '?')}  up {_duration(node.get('uptime_s', 0))}"
             f"  {addresses}"]
    lines.append(f"  nat        {nat.get('type', 'unknown')}  public {nat.get('mapped_address') or '-'}")
    roles = ", ".join(f"{n} {r}" for r, n in dht.get("relays_by_role", {}).items())
    relays = f"; relays known {dht['relays_known']}" + (f" ({roles})" if roles else "") if "relays_known" in dht else ""
    lines.append(f"  dht        {dht.get('contacts', 0)} contacts, {dht.get('records', 0)} records{relays}")
    lines.append(f"  links      {links.get('open', 0)} open, {links.get('handshaking', 0)} handshaking")
    if "circuits" in s:
        c = s["circuits"]
        lines.append(f"  circuits   {c.get('in-use', 0)} in use, {c.get('spare', 0)} spare, "
                     f"{c.get('retired', 0)} retired, {c.get('building', 0)} building; "
                     f"{c.get('post-quantum', 0)} post-quantum on every hop")
    if "relay" in s:
        r = s["relay"]
        lines.append(f"  relaying   {r.get('circuit_ends', 0)} circuits; CREATE accepted {r.get('circuits_created', 0)},"
                     f" refused {r.get('create_refused', 0)}")
    if "exit" in s:
        e = s["exit"].get("streams", {})
        lines.append(f"  exit       streams connected {e.get('connected', 0)}, refused by policy "
                     f"{e.get('refused_policy', 0)}, failed {e.get('failed', 0)}")
    vpn = s.get("vpn", {})
    if vpn.get("configured"):
        lines.append(f"  vpn        {vpn.get('state')}  kill switch {vpn.get('kill_switch')}  {vpn.get('detail', '')}")
    else:
        lines.append("  vpn        off (not started with --tun)")
    bw = s.get("bandwidth", {})
    lines.append(f"  bandwidth  up {_rate(bw.get('up', 0))}  down {_rate(bw.get('down', 0))}  "
                 f"(total {_bytes(bw.get('bytes_out', 0))} up, {_bytes(bw.get('bytes_in', 0))} down)")
    steering = s.get("steering") or {}
    if steering.get("pinned") or steering.get("excluded"):
        pins = ", ".join(f"{p} {h[:8]}" for p, h in steering.get("pinned", {}).items())
        lines.append(f"  steering   pinned: {pins or '-'}; excluded: "
                     f"{', '.join(h[:8] for h in steering.get('excluded', [])) or '-'}")
    return "\n".join(lines)


# -- circuits and relays


def _circuits(args):
    return _print(args, _client(args).get("/v1/circuits"), formatCircuits)


def formatCircuits(value):
    circuits = value.get("circuits", [])
    if not circuits:
        return "no circuits"
    lines = []
    for c in circuits:
        hops = " -> ".join(h["id"][:8] + (" [pq" if h.get("post_quantum") else " [classic")
                           + (" cgo]" if h.get("relay_crypto") == "cgo" else "]")
                           + (f" ({h['address']})" if h.get("address") else "") for h in c["hops"])
        extra = f"  {c['reason']}" if c.get("reason") else ""
        lines.append(f"{c['id']:>4}  {c['state']:8} {_duration(c['age_s']):>7}  up {_bytes(c['bytes_sent']):>9}  "
                     f"down {_bytes(c['bytes_received']):>9}  {hops}{extra}")
    return "\n".join(lines)


def _relaysArgs(p):
    p.add_argument("action", nargs="?", choices=("pin", "exclude", "clear"), help="steer one relay")
    p.add_argument("relay", nargs="?", help="relay id (8 or more hex digits)")
    p.add_argument("--position", choices=("guard", "middle", "exit"), help="for pin: where (default: its best role)")


def _relays(args):
    client = _client(args)
    if args.action:
        from meshvpn.errors import MeshVPNError

        if not args.relay:
            raise MeshVPNError(f"relays {args.action} needs a relay id")
        body = {"position": args.position} if args.position else {}
        result = client.post(f"/v1/relays/{args.relay}/{args.action}", body)
        return _print(args, result, lambda r: f"relay {r['relay'][:16]}…  pinned {','.join(r['pinned']) or '-'}  "
                      f"excluded {'yes' if r['excluded'] else 'no'}"
                      + (f"  ({r['circuits_closed']} circuits closed)" if r.get("circuits_closed") else ""))
    return _print(args, client.get("/v1/relays"), formatRelays)


def formatRelays(value):
    relays = value.get("relays", [])
    weights = value.get("weights")
    head = f"{len(relays)} relays known"
    if weights and weights.get("epoch") is not None:
        head += f"; weights of epoch {weights['epoch']}: {weights['reports']} reports, {weights['measured']} measured"
        if weights.get("probed"):
            head += f", {weights['probed']} probed"
    lines = [head]
    for r in relays:
        mark = "pinned " + ",".join(r["pinned"]) if r.get("pinned") else "excluded" if r.get("excluded") else ""
        lines.append(f"  {r['id'][:16]}  {','.join(r['flags']):22} {r.get('address') or '-':24} "
                     f"{formatMeasured(r.get('measured'))}  {mark}".rstrip())
    return "\n".join(lines)


def formatMeasured(m):
    """One relay's measurement in a line: bandwidth, weight share, uptime (and the chain's epochs it was seen in), partners, earned flags, last report."""
    if not m:
        return f"{'not measured':>10}"
    report = m.get("report")
    last = f"report {report['epoch']}: {report['neighbours']} nb" if report else "no report"
    probed = f"probed {_rate(m['probed'])}" if m.get("probed") is not None else "not probed"
    # the uptime is what its partners say; the seen epochs are the agreed chain's count, which nobody can name
    seen = m.get("seen_epochs")
    seen = f"seen {seen:>2}" if seen is not None else "seen  -"
    return (f"{_rate(m['bandwidth']):>13} {100 * m['share']:6.2f}% {_duration(m['uptime_s']):>7} {seen} "
            f"{m['partners']:3} partners {','.join(f for f in m['flags'] if f != 'measured') or '-':14} {last}  "
            f"{probed}")



# -- events


def _eventsArgs(p):
    p.add_argument("--types", help="comma-separated event types to follow (e.g. circuit,vpn); default all")
    p.add_argument("--count", type=int, default=0, help="stop after this many events (default: follow until Ctrl-C)")


def _events(args):
    types = [t for t in (args.types or "").split(",") if t]
    seen = 0
    for event in _client(args).events(types or None):
        if args.json:
            print(json.dumps(event), flush=True)
        else:
            print(formatEvent(event), flush=True)
        seen += 1
        if args.count and seen >= args.count:
            break
    return 0


def formatEvent(event):
    kind, data = event["type"], event["data"]
    stamp = time.strftime("%H:%M:%S")
    if kind.startswith("circuit."):
        hops = " -> ".join(h["id"][:8] for h in data.get("hops", []))
        why = f" ({data['reason']})" if data.get("reason") else ""
        return f"{stamp} {kind} {data.get('id')} {hops}{why}"
    if kind == "log":
        return f"{stamp} log {data.get('level')}: {data.get('text')}"
    if kind == "bandwidth":
        return f"{stamp} bandwidth up {_rate(data.get('up', 0))} down {_rate(data.get('down', 0))}"
    return f"{stamp} {kind} {json.dumps(data)}"


# -- actions


def _newnym(args):
    return _print(args, _client(args).post("/v1/newnym"),
                  lambda r: f"new identity: {r['retired']} circuits closed or retired; new streams get new circuits")


def _vpnArgs(p):
    p.add_argument("state", choices=("up", "down"), help="up: start VPN mode; down: stop it (routes restored)")


def _vpn(args):
    result = _client(args).post("/v1/vpn", {"up": args.state == "up"})
    return _print(args, result, lambda v: f"vpn {v['state']}  kill switch {v.get('kill_switch')}  {v.get('detail', '')}")


def _setArgs(p):
    p.add_argument("key", help="a setting name, as in the config file (e.g. circuits-spare)")
    p.add_argument("value", help="its new value, written as on the command line")


def _set(args):
    result = _client(args).post("/v1/settings", {"key": args.key, "value": args.value})
    return _print(args, result, lambda r: f"{r['key']} = {r['value']}")


def _dashboard(args):
    result = _client(args).post("/v1/login-link")
    return _print(args, result, lambda r: f"{r['url']}\n(a one-time login link: it works once, within "
                  f"{r['expires_in_s'] // 60} minutes)")


# -- units


def _bytes(n):
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def _rate(n):
    return f"{n * 8 / 1e6:.2f} Mbit/s" if n >= 125000 else f"{_bytes(n)}/s"


def _duration(seconds):
    seconds = int(seconds or 0)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
