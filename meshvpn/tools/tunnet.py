"""The made-up internet's DNS server for the VPN namespace tests and ``meshvpn bench tun``.

Relays and clients are real ``twistd`` processes; this is the one other
process of the made-up internet: an authoritative twisted.names server with fixed A records (NXDOMAIN for
anything else), run as ``ip netns exec NS python -m meshvpn.tools.tunnet dns
--listen IP --zone NAME=IP,... --ready FILE``.
"""

import argparse
import json
import os
import signal
import sys

from twisted.internet import defer
from twisted.logger import globalLogBeginner, textFileLogObserver


def _writeJson(path, value):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f)
    os.replace(tmp, path)


def _stopOnTerm(reactor):
    signal.signal(signal.SIGTERM, lambda *a: reactor.callFromThread(reactor.stop))
    signal.signal(signal.SIGINT, lambda *a: reactor.callFromThread(reactor.stop))


def runDNS(reactor, args):
    """A made-up internet's authoritative DNS: fixed A records, NXDOMAIN otherwise."""
    from twisted.names import dns, error, server
    from twisted.names.common import ResolverBase

    records = {}  # name -> [address]: a name listed twice has an A and an AAAA record
    for item in args.zone.split(","):
        key, address = item.split("=", 1)
        records.setdefault(key, []).append(address)

    class Zone(ResolverBase):
        def _lookup(self, name, cls, type, timeout):
            key = name.decode().lower().rstrip(".")
            if key not in records:
                return defer.fail(error.DomainError(name))
            if type not in (dns.A, dns.AAAA):
                return defer.succeed(([], [], []))
            print(f"dns: query {key} {dns.QUERY_TYPES[type]}", flush=True)
            if type == dns.A:
                answers = [dns.Record_A(a, 30) for a in records[key] if ":" not in a]
            else:
                answers = [dns.Record_AAAA(a, 30) for a in records[key] if ":" in a]
            return defer.succeed(([dns.RRHeader(name, type, dns.IN, 30, r, auth=True) for r in answers], [], []))

    factory = server.DNSServerFactory(authorities=[Zone()])
    reactor.listenUDP(53, dns.DNSDatagramProtocol(factory), interface=args.listen)
    reactor.listenTCP(53, factory, interface=args.listen)
    _writeJson(args.ready, {"listen": args.listen})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="role", required=True)
    d = sub.add_parser("dns")
    d.add_argument("--listen", required=True)
    d.add_argument("--zone", required=True, help="name=address,...")
    d.add_argument("--ready", required=True)
    args = parser.parse_args(argv)

    from twisted.internet import reactor

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)
    _stopOnTerm(reactor)

    reactor.callWhenRunning(runDNS, reactor, args)
    reactor.run()


if __name__ == "__main__":
    main()
