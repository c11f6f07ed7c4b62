"""``meshvpn exit-policy FILE``: what the network will see of an exit policy, before the exit runs.

An exit that publishes a policy nobody expected is worse than one that
does not start, so the operator gets the exit's own view: the file goes
through exactly what the exit runs (L{defaultExitPolicy}: private, shared,
multicast and own addresses first, the file's rules, MeshVPN's default
port rejects last), and the command prints

  - every rule in the order it is tried, and where it came from;
  - the warnings Tor would give (ignored C{accept6 1.2.3.4} lines, rules
    after a catch-all, ...);
  - the summary clients choose exits by, for IPv4 and IPv6, with its size
    in the descriptor, and whether it was cut at 1000 characters (Tor's
    limit: clients then believe some accepted ports are refused);
  - with C{--check ADDR:PORT}, the verdict, the rule that made it, and what
    a client concludes from the summary alone.

The file is the value of the exit's C{exit-policy} setting: rules
separated by commas or newlines, C{#} comments, torrc C{ExitPolicy} lines
welcome.  C{-} reads standard input.
"""

import json
import sys

from meshvpn.config import parseHostPort
from meshvpn.errors import MeshVPNError
from meshvpn.exit.policy import PolicyParseError, defaultExitPolicy, normalizeAddress
from meshvpn.dht.policysummary import MAX_SUMMARY_LEN, encodeSummary, parseSummary, summaryAllows


def addArguments(parser):
    parser.add_argument("file", metavar="FILE", help="the policy: the exit-policy setting's rules ('-' for stdin)")
    parser.add_argument("--check", metavar="ADDR:PORT", help="decide one target (an IP address, [v6]:port for IPv6)")
    parser.add_argument("--own", metavar="ADDR", action="append", default=[],
                        help="an address of the exit itself, rejected like private ones (repeatable)")
    parser.add_argument("--no-reject-private", action="store_true",
                        help="as with exit-reject-private false (private test networks only)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _read(path):
    try:
        if path == "-":
            return sys.stdin.read()
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise MeshVPNError(f"{path}: {e}") from None


def _origin(rule):
    return f"line {rule.line}" if rule.line is not None else "MeshVPN default"


def _summaryInfo(policy, family):
    text = policy.summary(family)
    accepted = policy.acceptedPorts(family)
    accept, shown = parseSummary(text)
    cut = accept and len(shown) < len(accepted)
    return {
        "text": text,
        "characters": len(text),
        "descriptor_bytes": len(encodeSummary(text)),
        "cut": bool(cut),
        "left_out": [list(r) for r in accepted[len(shown):]] if cut else [],
    }


def _check(policy, target):
    try:
        host, port = parseHostPort(target)
        ip = normalizeAddress(host)
    except ValueError:
        raise MeshVPNError(f"--check {target!r}: expected ADDR:PORT with an IP address, e.g. 198.18.0.9:443") from None
    accepted, index = policy.decide(str(ip), port)
    rule = policy.rules[index] if index is not None else None
    summary = policy.summary(4)  # the one in the descriptor: clients choose by port, not knowing the address
    return {
        "target": target,
        "verdict": "accept" if accepted else "reject",
        "rule_number": None if index is None else index + 1,
        "rule": None if rule is None else rule.text,
        "origin": None if rule is None else _origin(rule),
        "clients_choose_this_exit": summaryAllows(summary, port),
    }


def _reachable(rules):
    """How many rules come before (and with) the first catch-all for both IPv4 and IPv6."""
    caught = set()
    for i, rule in enumerate(rules):
        if rule.portMin <= 1 and rule.portMax == 65535 and not rule.networks:
            caught |= {4, 6} if rule.family is None else {rule.family}
        if caught == {4, 6}:
            return i + 1
    return len(rules)


def report(text, own=(), rejectPrivate=True, check=None):
    """@return: everything the command prints, as a dict."""
    warnings = []
    try:
        policy = defaultExitPolicy(text, own, rejectPrivate, warn=warnings.append)
    except PolicyParseError as e:
        raise MeshVPNError(f"bad exit policy: {e}") from None
    except ValueError as e:  # a malformed --own address
        raise MeshVPNError(f"--own: {e}") from None
    out = {
        "rules": [{"number": i + 1, "rule": r.text, "origin": _origin(r), "reachable": i < _reachable(policy.rules)}
                  for i, r in enumerate(policy.rules)],
        "warnings": warnings,
        "summary": {"ipv4": _summaryInfo(policy, 4), "ipv6": _summaryInfo(policy, 6)},
    }
    if check is not None:
        out["check"] = _check(policy, check)
    return out


def formatReport(info, name):
    lines = [f"exit policy {name}, as an exit runs it (first match wins):"]
    width = max(len(r["rule"]) for r in info["rules"])
    for r in info["rules"]:
        never = "" if r["reachable"] else ", never reached"
        lines.append(f"  {r['number']:4d}  {r['rule']:<{width}}  ({r['origin']}{never})")
    lines.append("warnings:" if info["warnings"] else "warnings: none")
    lines += [f"  {w}" for w in info["warnings"]]
    four, six = info["summary"]["ipv4"], info["summary"]["ipv6"]
    for s, title in (
        (four, f"summary in the descriptor, what clients choose this exit by ({four['characters']} characters, "
               f"{four['descriptor_bytes']} bytes):"),
        (six, "for IPv6 targets the policy summarises the same" if six["text"] == four["text"] else
              "for IPv6 targets the policy summarises differently (not published; clients go by the one above):"),
    ):
        lines.append(title)
        if s is six and six["text"] == four["text"]:
            continue
        lines.append(f"  {s['text']}")
        if s["cut"]:
            ports = ",".join(f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in s["left_out"])
            lines.append(f"  cut at {MAX_SUMMARY_LEN} characters as Tor cuts it: clients will not pick this exit "
                         f"for accepted ports {ports[:200]}{'...' if len(ports) > 200 else ''}")
    c = info.get("check")
    if c is not None:
        how = f"rule {c['rule_number']} ({c['origin']}): {c['rule']}" if c["rule"] else "no rule matched (accepted)"
        lines.append(f"check {c['target']}: {c['verdict']}, by {how}")
        lines.append(f"  a client reading the summary {'would' if c['clients_choose_this_exit'] else 'would not'} "
                     f"choose this exit for that port")
    return "\n".join(lines)


def run(args, out):
    """The subcommand.  @return: the exit code."""
    info = report(_read(args.file), args.own, not args.no_reject_private, args.check)
    out(json.dumps(info) if args.json else formatReport(info, "from stdin" if args.file == "-" else args.file))
    return 0
