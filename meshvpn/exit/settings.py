"""Settings of an exit (policy, DNS upstream, bandwidth limits) and the parts built from them.

A role that exits appends L{exitSettings} to its schema and calls
L{buildExit} in its C{makeService}; the circuit layer then uses the
connector for BEGIN, the resolver for RESOLVE, the limiter per circuit, and
C{policy.summary()} in the node's descriptor.
"""

import re

import attrs
from zope.interface import implementer

from meshvpn.config import Setting, parseBool, parseHostPort
from meshvpn.exit.budget import ExitBudget
from meshvpn.exit.connect import ExitConnector
from meshvpn.exit.dns import ExitResolver, makeUpstream
from meshvpn.exit.policy import PolicyParseError, defaultExitPolicy, parsePolicy
from meshvpn.interfaces import IStatusSource
from meshvpn.ratelimit import BandwidthLimiter

_RATE = re.compile(r"\A(\d+(?:\.\d+)?)\s*([kmg]?)(?:i?b)?\Z", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parseRate(raw):
    """
    Bytes (per second, for a rate): C{"0"} or C{"unlimited"} for none, else
    a number with an optional K/M/G suffix (powers of 1024).

    @return: an C{int} or C{None} (unlimited).
    """
    if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0:
        return raw or None
    if isinstance(raw, str):
        if raw.strip().lower() in ("unlimited", "none"):
            return None
        m = _RATE.match(raw.strip())
        if m:
            value = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
            return value or None
    raise ValueError("a byte count like 10M, 512K or 1000000, or 'unlimited'")


def parseExitPolicyText(raw):
    """The operator's rules, checked now so a typo stops the node at start."""
    if not isinstance(raw, str):
        raise ValueError("exit policy rules as a string, e.g. 'accept *:80,accept *:443,reject *:*'")
    try:
        parsePolicy(raw, warn=lambda message: None)  # warnings are logged once, when the exit is built
    except PolicyParseError as e:
        raise ValueError(f"a valid exit policy ({e})") from None
    return raw


def parseDNSUpstream(raw):
    """C{"system"} (the host's /etc/resolv.conf) or HOST:PORT of a DNS server."""
    if raw == "system":
        return raw
    return parseHostPort(raw)


def exitSettings():
    return [
        Setting(
            "exit-policy",
            parseExitPolicyText,
            "",
            "Exit policy rules (Tor syntax), tried after 'reject private:*' and before the default port rejects.",
        ),
        Setting(
            "exit-reject-private",
            parseBool,
            True,
            "Reject private, local and own addresses before the operator's rules (Tor's ExitPolicyRejectPrivate); "
            "false only for a private test network.",
        ),
        Setting(
            "exit-ipv6",
            parseBool,
            False,
            "Exit to IPv6 destinations (Tor's IPv6Exit): announced in the descriptor (ipv6-exit), so clients pick this "
            "exit for IPv6 targets; false: IPv6 destinations refused (reject6 *:* first).  A packet exit with "
            "--packet-exit-pool6 exits IPv6 whatever this says.",
        ),
        Setting("exit-dns", parseDNSUpstream, "system", "DNS server the exit resolves names with: 'system' or HOST:PORT."),
        Setting("bandwidth-rate", parseRate, None, "Node-wide bandwidth limit in bytes/s (K/M/G suffixes), or unlimited."),
        Setting("bandwidth-burst", parseRate, None, "Node-wide burst in bytes (default: one second of the rate)."),
        Setting("circuit-rate", parseRate, None, "Per-circuit bandwidth limit in bytes/s, or unlimited."),
        Setting("circuit-burst", parseRate, None, "Per-circuit burst in bytes (default: one second of the rate)."),
    ]


@implementer(IStatusSource)
@attrs.frozen
class ExitParts:
    policy: object
    resolver: object
    connector: object
    limiter: object
    budget: object = None  # an ExitBudget: sockets and lookups per circuit, per peer, for the node
    ipv6: bool = False  # exits to IPv6 destinations (announced: ipv6-exit)

    def status(self):
        out = {"policy_summary": self.policy.summary(4), "dns": self.resolver.status(), "bandwidth": self.limiter.status(),
               "streams": self.connector.status()}
        if self.budget is not None:
            out["budget"] = self.budget.status()
        return out


def exitsIPv6(settings):
    """Whether this exit carries traffic to IPv6 destinations (and says so in its descriptor)."""
    return bool(settings.get("exit_ipv6") or settings.get("packet_exit_pool6"))


def operatorRules(settings):
    """
    The rules tried after the private rejects: the operator's, behind a
    C{reject6 *:*} unless the exit carries IPv6 (Tor's C{IPv6Exit 0}).
    The summary in the descriptor is of IPv4 ports, so it does not change.
    """
    rules = settings["exit_policy"]
    if "exit_ipv6" in settings and not exitsIPv6(settings):
        rules = "reject6 *:*" + (", " + rules if rules.strip() else "")
    return rules


def buildExit(reactor, settings, ownAddresses=(), upstream=None, localAddresses=None):
    """
    @param settings: parsed settings holding L{exitSettings}' keys.
    @param ownAddresses: this exit's public addresses, rejected by its policy.
    @param upstream: an C{IResolver} to use instead of the configured one (tests).
    @param localAddresses: the live set of this host's addresses
        (L{meshvpn.localaddrs.LocalAddresses}), rejected by its policy.
    """
    policy = defaultExitPolicy(operatorRules(settings), ownAddresses, rejectPrivate=settings.get("exit_reject_private", True),
                               localAddresses=localAddresses)
    if upstream is None:
        dnsSetting = settings["exit_dns"]
        if dnsSetting == "system":
            from twisted.names import client

            upstream = client.Resolver(resolv="/etc/resolv.conf", reactor=reactor)
        else:
            upstream = makeUpstream(reactor, dnsSetting)
    resolver = ExitResolver(reactor, upstream, policy)
    connector = ExitConnector(reactor, resolver, policy)
    limiter = BandwidthLimiter(
        reactor,
        settings["bandwidth_rate"],
        settings["bandwidth_burst"],
        settings["circuit_rate"],
        settings["circuit_burst"],
    )
    return ExitParts(policy, resolver, connector, limiter, ExitBudget(maxLookups=resolver.maxPending),
                     ipv6=exitsIPv6(settings))
