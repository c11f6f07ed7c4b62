"""The fuzz targets by name, imported only when asked for.

A target's module is imported inside atheris's instrumentation (see
L{meshvpn.fuzz.child}), so this registry must not import any parser itself.
"""

import importlib

# name -> module under meshvpn.fuzz.targets (one small file per target)
TARGETS = {
    "cell": "cell",
    "relay": "relay",
    "relay-body": "relaybody",
    "fragments": "fragments",
    "link-records": "linkrecords",
    "link-auth": "linkauth",
    "datagram": "datagram",
    "datagram-handshake": "datagramhandshake",
    "ntor": "ntor",
    "stun": "stun",
    "turn-server": "turnserver",
    "dht-wire": "dhtwire",
    "dht-node": "dhtnode",
    "dht-record": "dhtrecord",
    "descriptor": "descriptor",
    "policy-summary": "policysummary",
    "exit-policy": "exitpolicy",
    "signal": "signal",
    "turn-stream": "turnstream",
    "nat-rendezvous": "rendezvous",
    "socks": "socks",
    "socks-session": "sockssession",
    "ip-packet": "ippacket",
    "config": "config",
    "pay-tokens": "paytokens",
    "pay-records": "payrecords",
    "pt-launch": "ptlaunch",
    "pt-args": "ptargs",
    "pt-local": "ptlocal",
    "link-session": "linksession",
    "link-directory": "linkdirectory",
    "bootstrap-file": "bootstrapfile",
    "ip-packet6": "ippacket6",
    "multipath": "multipath",
    "cgo": "cgo",
    "dht-circuit": "dhtcircuit",
    "tun-coalesce": "tuncoalesce",
    "tun-offload": "tunoffload",
    "probe-record": "probewire",
    "probe-report": "probereport",
    "probe-seed": "probeseed",
    "bw-report": "bwreport",
}


class UnknownTarget(KeyError):
    """No fuzz target has that name."""


def names():
    return list(TARGETS)


def load(name):
    """
    @return: the L{meshvpn.fuzz.target.FuzzTarget} called C{name}, or for
        C{"package.module:ATTRIBUTE"} that attribute (the tests' own targets).
    @raise UnknownTarget.
    """
    if ":" in name:
        module, _, attribute = name.partition(":")
        return getattr(importlib.import_module(module), attribute)
    try:
        module = TARGETS[name]
    except KeyError:
        raise UnknownTarget(name) from None
    return importlib.import_module(f"meshvpn.fuzz.targets.{module}").TARGET
