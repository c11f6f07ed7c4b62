"""The exit policy: which targets this exit connects to for others, and the summary clients see.

Tor's syntax, read as Tor reads it (L{meshvpn.exit.policyparse}, see
doc/exit-policy.md).  Rules are tried in order; the first that matches
decides; a target no rule matches is accepted (Tor's rule;
L{defaultExitPolicy} ends with an explicit C{accept *:*}).

Every exit starts with C{reject private:*} plus its own addresses, then
C{reject} of every address of every local interface and the public address
STUN learned (a live rule, L{LocalInterfacesRule}: the set is refreshed
while the exit runs), then the operator's rules, then the default port
rejects.  The check runs on the
resolved address (L{ExitPolicy.allowsResolved}), never on a name, so a name
that resolves to a private address is refused too.

The summary in the descriptor (L{ExitPolicy.summary}) is computed the way
Tor's C{policy_summarize} computes it, so an exit is offered for the same
ports a Tor client would offer it for: per port, the addresses refused by
the rules before an C{accept} of every address are counted, and the port
counts as accepted only while fewer than 2^25 IPv4 addresses (two /8s) or
2^48 IPv6 /64s (one /16) are refused; rejects of exactly the networks every
exit refuses (Tor's private set, and here also shared, multicast and
reserved space) are not counted; the text is Tor's, cut at 1000 characters
(L{meshvpn.dht.policysummary}).
"""

import ipaddress

from zope.interface import implementer

from meshvpn.exit.policyparse import (  # noqa: F401  (the policy's public names)
    MAX_POLICY_TEXT,
    MAX_RULES,
    PRIVATE_NETWORKS,
    PolicyParseError,
    Rule,
    parsePolicy,
    parseRule,
)
from meshvpn.interfaces import IExitPolicy
from meshvpn.dht.policysummary import MAX_SUMMARY_LEN, SummaryError, formatSummary, summaryAllows  # noqa: F401
from meshvpn.dht.policysummary import complement as _complement
from meshvpn.dht.policysummary import parseSummary as _parseSummary

# Not 'private' in Tor's sense but never a useful TCP target from an exit:
# multicast, reserved class E, limited broadcast.  Rejected by default too.
LOCAL_NETWORKS = tuple(ipaddress.ip_network(n) for n in ("224.0.0.0/4", "240.0.0.0/4"))

# Tor's default exit policy port rejects (SMTP, NNTP, NetBIOS/SMB, NNTPS,
# and the old file-sharing ports), documented in doc/exit-policy.md.
DEFAULT_REJECT_PORTS = (
    (25, 25),
    (119, 119),
    (135, 139),
    (445, 445),
    (563, 563),
    (1214, 1214),
    (4661, 4666),
    (6346, 6429),
    (6699, 6699),
    (6881, 6999),
)

# Summaries skip rejects of exactly these networks (Tor: private_nets), as
# every exit refuses them anyway.
SUMMARY_IGNORED = frozenset(PRIVATE_NETWORKS + LOCAL_NETWORKS)
# A port stays accepted while at most this many addresses are refused for it:
# IPv4 addresses (two /8s), IPv6 /64s (one /16).  Tor's REJECT_CUTOFF_COUNT_IPV4/6.
REJECT_CUTOFF = {4: 1 << 25, 6: 1 << 48}
_UNIT_BITS = {4: 0, 6: 64}  # IPv6 is counted in /64s, smaller networks not at all
_SATURATED = (1 << 64) - 1


def normalizeAddress(address):
    """
    @return: the L{ipaddress} object for C{address}, with IPv4-mapped IPv6
        (::ffff:a.b.c.d) turned into IPv4 so it cannot dodge IPv4 rules.
    @raise ValueError: not an IP literal.
    """
    ip = ipaddress.ip_address(address)
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def isPrivate(address):
    """@return: C{True} if C{address} is in Tor's 'private' set or multicast/reserved."""
    ip = normalizeAddress(address)
    return any(ip in n for n in PRIVATE_NETWORKS + LOCAL_NETWORKS if n.version == ip.version)


def parseSummary(summary):
    """
    @return: C{(accept: bool, [(low, high), ...])} from a summary string.
    @raise PolicyParseError: malformed (the descriptor came from a peer).
    """
    try:
        return _parseSummary(summary)
    except SummaryError as e:
        raise PolicyParseError(str(e)) from None


def _weight(network, family):
    """How many addresses (IPv4) or /64s (IPv6) a reject of C{network} counts for."""
    bits = network.max_prefixlen - _UNIT_BITS[family] - network.prefixlen
    if bits < 0:
        return 0
    return _SATURATED if bits >= 64 else 1 << bits


class LocalInterfacesRule:
    """
    C{reject} of this host's own addresses on every port (Tor's
    C{ExitPolicyRejectLocalInterfaces}), read from a live set
    (L{meshvpn.localaddrs.LocalAddresses}) at every check, so an address
    that appears after start (DHCP, a new interface, a new NAT mapping) is
    refused from the next refresh on.  Shaped like a L{Rule}.
    """

    accept = False
    family = None
    portMin, portMax = 1, 65535
    text = "reject <this host's interface and public addresses>:*"
    line = None

    def __init__(self, addresses):
        self.addresses = addresses

    @property
    def networks(self):
        # A non-empty tuple always: an empty one would mean every address.
        own = tuple(ipaddress.ip_network(ip) for ip in self.addresses)
        return own or (ipaddress.ip_network("0.0.0.0/32"),)

    def matchesAddress(self, ip):
        return ip in self.addresses

    def matches(self, ip, port):
        return ip in self.addresses

    def coversAllAddresses(self, family):
        return False


@implementer(IExitPolicy)
class ExitPolicy:
    """
    An ordered list of rules; the first that matches the target decides.
    """

    def __init__(self, rules):
        self.rules = tuple(rules)

    @classmethod
    def fromText(cls, text, ownAddresses=(), warn=None):
        return cls(parsePolicy(text, ownAddresses, warn))

    def __repr__(self):
        return f"<ExitPolicy {', '.join(r.text for r in self.rules)}>"

    def decide(self, address, port, protocol="tcp"):
        """
        @return: C{(accepted, index)}: the verdict and the index in
            C{rules} of the rule that made it (C{None}: no rule matched, or
            the target itself is invalid).
        """
        if protocol != "tcp" or type(port) is not int or not 1 <= port <= 65535:
            return False, None
        try:
            ip = normalizeAddress(address)
        except ValueError:
            return False, None
        for i, rule in enumerate(self.rules):
            if rule.matches(ip, port):
                return rule.accept, i
        return True, None

    def allows(self, address, port, protocol="tcp"):
        return self.decide(address, port, protocol)[0]

    def allowsResolved(self, addresses, port):
        return [a for a in addresses if self.allows(a, port)]

    def allowsAddress(self, address):
        """
        @return: C{True} if some port is accepted for C{address} (used on DNS
            answers, where the port is not known: a private answer is refused).
        """
        try:
            ip = normalizeAddress(address)
        except ValueError:
            return False
        # The verdict can only change at a rule's port boundary, so testing
        # one port per segment is exhaustive.
        edges = {1}
        for rule in self.rules:
            if rule.matchesAddress(ip):
                edges.add(rule.portMin)
                if rule.portMax < 65535:
                    edges.add(rule.portMax + 1)
        return any(self.allows(str(ip), p) for p in edges)

    def acceptedPorts(self, family=4):
        """
        The ports a client should believe this exit accepts for addresses of
        C{family}, computed as Tor's C{policy_summarize} does (see the module
        docstring): an C{accept} of every address opens a port unless more
        than L{REJECT_CUTOFF} addresses were refused for it by earlier rules;
        an C{accept} of some addresses opens nothing.

        @return: sorted, merged C{[(low, high), ...]}.
        """
        # Segments [low, high, refused count, accepted], split at rule edges.
        segments = [[1, 65535, 0, False]]
        cutoff = REJECT_CUTOFF[family]

        def span(lo, hi):
            for edge in (lo, hi + 1):
                for i, seg in enumerate(segments):
                    if seg[0] < edge <= seg[1]:
                        segments.insert(i + 1, [edge, seg[1], seg[2], seg[3]])
                        seg[1] = edge - 1
                        break
            return [seg for seg in segments if lo <= seg[0] and seg[1] <= hi]

        for rule in [*self.rules, Rule(True, (), None, 1, 65535, "(no rule matched: accepted)")]:
            if rule.family not in (None, family) or rule.portMin > rule.portMax:
                continue
            if rule.accept:
                if rule.coversAllAddresses(family):
                    for seg in span(rule.portMin, rule.portMax):
                        seg[3] = seg[3] or seg[2] <= cutoff
                continue
            if rule.coversAllAddresses(family):
                count = _SATURATED
            else:
                count = sum(_weight(n, family) for n in rule.networks if n.version == family and n not in SUMMARY_IGNORED)
            if count:
                for seg in span(rule.portMin, rule.portMax):
                    seg[2] = min(_SATURATED, seg[2] + count)
        return _complement([(lo, hi) for lo, hi, _, accepted in segments if not accepted])

    def summary(self, family=4):
        """
        @return: Tor's summary, e.g. C{"accept 80,443"} or C{"reject
            25,119,..."}, at most 1000 characters.
        """
        return formatSummary(self.acceptedPorts(family))


def defaultExitPolicy(operatorRules="", ownAddresses=(), rejectPrivate=True, warn=None, localAddresses=None):
    """
    The policy an exit runs: C{reject private:*} (with its own addresses),
    multicast/reserved and this host's live addresses first, then the
    operator's rules, then the default port rejects and C{accept *:*}.

    @param operatorRules: policy text, tried before the default port list
        (end it with C{reject *:*} to accept only what it lists).
    @param warn: C{callable(message)} for the rules Tor would warn about.
    @param localAddresses: the live set of this host's addresses
        (L{meshvpn.localaddrs.LocalAddresses}), rejected on every port
        with the private networks.
    """
    head = []
    if rejectPrivate:
        head.append(parseRule("reject private:*", ownAddresses))
        head.extend(Rule(False, (n,), n.version, 1, 65535, f"reject {n}:*") for n in LOCAL_NETWORKS)
        if localAddresses is not None:
            head.append(LocalInterfacesRule(localAddresses))
    tail = [parseRule(f"reject *:{lo}" if lo == hi else f"reject *:{lo}-{hi}") for lo, hi in DEFAULT_REJECT_PORTS]
    tail.append(parseRule("accept *:*"))
    return ExitPolicy(head + parsePolicy(operatorRules, ownAddresses, warn) + tail)
