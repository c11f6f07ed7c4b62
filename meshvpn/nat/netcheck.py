"""`meshvpn netcheck`: this host's NAT situation, for a person or (--json) a program."""

import json

from twisted.internet import defer, task

from meshvpn.config import parseHostPort
from meshvpn.errors import MeshVPNError


def run(args, out):
    try:
        servers = [parseHostPort(s) for s in args.stun]
        bind = parseHostPort(args.bind)
    except ValueError as e:
        raise MeshVPNError(f"expected {e}") from None

    def main(reactor):
        from meshvpn.nat.classify import netcheck

        d = defer.Deferred.fromCoroutine(netcheck(reactor, servers, bind))

        def show(report):
            if args.json:
                out(json.dumps(report))
            else:
                for line in formatReport(report):
                    out(line)

        return d.addCallback(show)

    # react() stops the reactor and exits with 0 (or 1 on a failure).
    task.react(main)


def formatReport(report):
    """@return: the lines a person reads."""
    yes = lambda v: "unknown" if v is None else ("yes" if v else "no")  # noqa: E731
    lines = ["Report:", f"  * UDP: {yes(report['udp'])}"]
    lines.append(f"  * NAT type: {report['type']}")
    if report["udp"]:
        lines.append(f"  * Mapped address: {report['mapped_address']}  (local {', '.join(report['local_addresses'])})")
        lines.append(f"  * Behind NAT: {yes(report['nat'])}")
        lines.append(f"  * Mapping: {report['mapping']}")
        lines.append(f"  * Filtering: {report['filtering']}")
        lines.append(f"  * Hairpinning: {yes(report['hairpinning'])}")
        if report["rfc5780_server"]:
            lines.append(f"  * Behaviour discovery via: {report['rfc5780_server']} (RFC 5780)")
        else:
            lines.append("  * Behaviour discovery: no server offered RFC 5780 (OTHER-ADDRESS)")
    lines.append("  * STUN servers:")
    for s in report["servers"]:
        if s.get("mapped"):
            extra = ", RFC 5780" if s.get("other_address") else ""
            lines.append(f"      - {s['server']}: {s['rtt_ms']:.1f} ms, mapped {s['mapped']}{extra}")
        elif s["answered"]:
            lines.append(f"      - {s['server']}: answered with an error: {s.get('error')}")
        else:
            lines.append(f"      - {s['server']}: no answer")
    return lines
