"""The exit policy: which targets this exit connects to for others.

Tor's syntax, so relay operators already know it (see doc/exit-policy.md)::

    accept|reject|accept6|reject6 ADDR[/MASK][:PORT[-PORT]]

ADDR is C{*} (every address), C{*4}, C{*6}, C{private}, an IPv4 address or an
IPv6 address in brackets; MASK is a prefix length or, for IPv4, a dotted
netmask; PORT is C{*}, a port or a range (omitted means C{*}).  Rules are
tried in order; the first that matches decides; a target no rule matches is
accepted (Tor's rule; L{defaultExitPolicy} ends with an explicit
C{accept *:*}).

Every exit starts with C{reject private:*} plus its own addresses, then the
operator's rules, then the default port rejects.  The check runs on the
resolved address (L{ExitPolicy.allowsResolved}), never on a name, so a name
that resolves to a private address is refused too.
"""

import ipaddress

import attrs
from zope.interface import implementer

from meshvpn.interfaces import IExitPolicy

MAX_POLICY_TEXT = 64 * 1024
MAX_RULES = 1024

# Tor's 'private' (policies.c private_nets) plus RFC 6598 shared address
# space, and the IPv6 equivalents of each; '::/127' covers :: and ::1.
PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "169.254.0.0/16",
        "127.0.0.0/8",
        "192.168.0.0/16",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "100.64.0.0/10",
        "::/8",
        "fc00::/7",
        "fe80::/10",
        "fec0::/10",
        "ff00::/8",
        "::/127",
    )
)

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


class PolicyParseError(ValueError):
    """A policy rule is malformed; the message quotes the rule and says why."""


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


@attrs.frozen
class Rule:
    """
    One policy line.  C{networks} empty means every address of C{family}
    (C{None}: both families).
    """

    accept: bool
    networks: tuple
    family: object  # None, 4 or 6
    portMin: int
    portMax: int
    text: str = attrs.field(eq=False)

    def matchesAddress(self, ip):
        if self.family is not None and ip.version != self.family:
            return False
        if not self.networks:
            return True
        return any(ip.version == n.version and ip in n for n in self.networks)

    def matches(self, ip, port):
        return self.portMin <= port <= self.portMax and self.matchesAddress(ip)

    def coversAllAddresses(self, family):
        return not self.networks and self.family in (None, family)


def _parsePorts(text, rule):
    if text == "*":
        return 1, 65535
    low, sep, high = text.partition("-")
    try:
        if not low.isdigit() or (sep and not high.isdigit()):
            raise ValueError
        lo = int(low)
        hi = int(high) if sep else lo
    except ValueError:
        raise PolicyParseError(f"{rule!r}: bad port {text!r} (expected *, PORT or PORT-PORT)") from None
    if not (1 <= lo <= hi <= 65535):
        raise PolicyParseError(f"{rule!r}: port range {text!r} must be within 1-65535, low to high")
    return lo, hi


def _parseMask(mask, ip, rule):
    if mask.isdigit() and len(mask) <= 3:
        bits = int(mask)
        if bits > ip.max_prefixlen:
            raise PolicyParseError(f"{rule!r}: mask /{mask} too long for IPv{ip.version}")
        return bits
    if ip.version == 4:
        try:
            net = ipaddress.IPv4Network(f"0.0.0.0/{mask}")
        except ValueError:
            pass
        else:
            # ipaddress also reads host masks (0.0.0.255); only a true netmask counts.
            if str(net.netmask) == str(ipaddress.IPv4Address(mask)):
                return net.prefixlen
    raise PolicyParseError(f"{rule!r}: bad mask {mask!r} (expected a prefix length or a dotted IPv4 netmask)")


def parseRule(text, ownAddresses=()):
    """
    Parse one rule, e.g. C{"reject 10.0.0.0/255.0.0.0:*"}.

    @param ownAddresses: the exit's own addresses, added to C{private}.
    @raise PolicyParseError: naming the rule and what is wrong.
    """
    rule = text.strip()
    parts = rule.split(None, 1)
    action, target = (parts + ["", ""])[:2]
    target = target.strip()
    if action not in ("accept", "reject", "accept6", "reject6") or not target or any(c.isspace() for c in target):
        raise PolicyParseError(f"{rule!r}: expected 'accept|reject[6] ADDR[/MASK][:PORT]'")
    only6 = action.endswith("6")
    accept = action.startswith("accept")

    # Split the address from the port: IPv6 is bracketed, so the port is
    # whatever follows the first ':' after the bracket (or the only ':').
    if target.startswith("["):
        close = target.find("]")
        if close < 0:
            raise PolicyParseError(f"{rule!r}: unclosed '[' in IPv6 address")
        addrText, rest = target[1:close], target[close + 1 :]
        bracketed = True
    else:
        cut = len(target)
        for sep in ("/", ":"):
            i = target.find(sep)
            if 0 <= i < cut:
                cut = i
        addrText, rest = target[:cut], target[cut:]
        bracketed = False
    mask = None
    if rest.startswith("/"):
        mask, _, portPart = rest[1:].partition(":")
        hasPort = ":" in rest
    else:
        hasPort = rest.startswith(":")
        portPart = rest[1:]
        if rest and not hasPort:
            raise PolicyParseError(f"{rule!r}: unexpected {rest!r} after the address")
    portMin, portMax = _parsePorts(portPart, rule) if hasPort else (1, 65535)

    family = 6 if only6 else None
    networks = ()
    if addrText in ("*", "*4", "*6", "private") and not bracketed:
        if mask is not None:
            raise PolicyParseError(f"{rule!r}: {addrText!r} takes no mask")
        if addrText == "*4":
            if only6:
                raise PolicyParseError(f"{rule!r}: {action} cannot take IPv4 addresses")
            family = 4
        elif addrText == "*6":
            family = 6
        elif addrText == "private":
            own = []
            for a in ownAddresses:
                ip = normalizeAddress(a)
                own.append(ipaddress.ip_network(ip))
            networks = PRIVATE_NETWORKS + tuple(own)
            if only6:
                networks = tuple(n for n in networks if n.version == 6)
    else:
        try:
            ip = ipaddress.ip_address(addrText)
        except ValueError:
            raise PolicyParseError(f"{rule!r}: {addrText!r} is not *, *4, *6, private or an IP address") from None
        if ip.version == 6 and not bracketed:
            raise PolicyParseError(f"{rule!r}: IPv6 addresses must be in brackets, e.g. [::1]")
        if ip.version == 4 and bracketed:
            raise PolicyParseError(f"{rule!r}: only IPv6 addresses go in brackets")
        if only6 and ip.version == 4:
            raise PolicyParseError(f"{rule!r}: {action} cannot take IPv4 addresses")
        bits = ip.max_prefixlen if mask is None else _parseMask(mask, ip, rule)
        # Like Tor, host bits under the mask are ignored (strict=False).
        net = ipaddress.ip_network(f"{ip}/{bits}", strict=False)
        if bits == 0:
            family = ip.version
        else:
            networks = (net,)
            family = ip.version
    return Rule(accept, networks, family, portMin, portMax, rule)


def parsePolicy(text, ownAddresses=()):
    """
    Parse rules separated by commas and/or newlines (C{#} starts a comment).

    @return: a list of L{Rule}.
    @raise PolicyParseError: on the first bad rule, or if too long.
    """
    if len(text) > MAX_POLICY_TEXT:
        raise PolicyParseError(f"policy longer than {MAX_POLICY_TEXT} characters")
    rules = []
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        for part in line.split(","):
            if part.strip():
                rules.append(parseRule(part, ownAddresses))
                if len(rules) > MAX_RULES:
                    raise PolicyParseError(f"more than {MAX_RULES} rules")
    return rules


@implementer(IExitPolicy)
class ExitPolicy:
    """
    An ordered list of rules; the first that matches the target decides.
    """

    def __init__(self, rules):
        self.rules = tuple(rules)

    @classmethod
    def fromText(cls, text, ownAddresses=()):
        return cls(parsePolicy(text, ownAddresses))

    def __repr__(self):
        return f"<ExitPolicy {', '.join(r.text for r in self.rules)}>"

    def allows(self, address, port, protocol="tcp"):
        if protocol != "tcp":
            return False
        try:
            ip = normalizeAddress(address)
        except ValueError:
            return False
        if not isinstance(port, int) or not 1 <= port <= 65535:
            return False
        for rule in self.rules:
            if rule.matches(ip, port):
                return rule.accept
        return True

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
        The ports this exit accepts for I{most} addresses of C{family}: rules
        for only some addresses are skipped (a reject of one network does not
        close a port everywhere, an accept of one host does not open it), as
        a client choosing an exit cannot know the address a name resolves to.

        @return: sorted, merged C{[(low, high), ...]}.
        """
        ranges = []
        undecided = [(1, 65535)]
        for rule in self.rules:
            if not rule.coversAllAddresses(family):
                continue
            nextUndecided = []
            for lo, hi in undecided:
                a, b = max(lo, rule.portMin), min(hi, rule.portMax)
                if a > b:
                    nextUndecided.append((lo, hi))
                    continue
                if rule.accept:
                    ranges.append((a, b))
                if lo < a:
                    nextUndecided.append((lo, a - 1))
                if b < hi:
                    nextUndecided.append((b + 1, hi))
            undecided = nextUndecided
        ranges.extend(undecided)  # no rule matched: accepted
        return _merge(ranges)

    def summary(self, family=4):
        """
        @return: Tor's microdescriptor style: C{"accept 80,443"} or
            C{"reject 1-24,26-65535"}, whichever is shorter.
        """
        return formatSummary(self.acceptedPorts(family))


def _merge(ranges):
    merged = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return merged


def _complement(ranges):
    out, nxt = [], 1
    for lo, hi in ranges:
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = hi + 1
    if nxt <= 65535:
        out.append((nxt, 65535))
    return out


def _formatRanges(ranges):
    return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ranges)


def formatSummary(accepted):
    accepted = _merge(accepted)
    rejected = _complement(accepted)
    if not accepted:
        return "reject 1-65535"
    acceptText = "accept " + _formatRanges(accepted)
    if not rejected:
        return acceptText
    rejectText = "reject " + _formatRanges(rejected)
    return acceptText if len(acceptText) <= len(rejectText) else rejectText


MAX_SUMMARY = 4096


def parseSummary(summary):
    """
    @return: C{(accept: bool, [(low, high), ...])} from a summary string.
    @raise PolicyParseError: malformed (the descriptor came from a peer).
    """
    if not isinstance(summary, str) or len(summary) > MAX_SUMMARY:
        raise PolicyParseError("policy summary missing or too long")
    action, _, ports = summary.strip().partition(" ")
    if action not in ("accept", "reject") or not ports or " " in ports:
        raise PolicyParseError(f"{summary[:80]!r}: expected 'accept|reject PORTLIST'")
    ranges = []
    for part in ports.split(","):
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()) or len(lo) > 5 or len(hi) > 5:
            raise PolicyParseError(f"{summary[:80]!r}: bad port {part!r}")
        a, b = int(lo), int(hi) if sep else int(lo)
        if not 1 <= a <= b <= 65535:
            raise PolicyParseError(f"{summary[:80]!r}: bad port range {part!r}")
        ranges.append((a, b))
    return action == "accept", ranges


def summaryAllows(summary, port):
    """
    The client's check when choosing an exit for C{port}: does the exit's
    descriptor summary accept it?  A malformed summary allows nothing.
    """
    try:
        accept, ranges = parseSummary(summary)
    except PolicyParseError:
        return False
    inside = any(lo <= port <= hi for lo, hi in ranges)
    return inside if accept else not inside


def defaultExitPolicy(operatorRules="", ownAddresses=(), rejectPrivate=True):
    """
    The policy an exit runs: C{reject private:*} (with its own addresses)
    and multicast/reserved first, then the operator's rules, then the
    default port rejects and C{accept *:*}.

    @param operatorRules: policy text, tried before the default port list
        (end it with C{reject *:*} to accept only what it lists).
    """
    head = []
    if rejectPrivate:
        head.append(parseRule("reject private:*", ownAddresses))
        head.extend(Rule(False, (n,), n.version, 1, 65535, f"reject {n}:*") for n in LOCAL_NETWORKS)
    tail = [parseRule(f"reject *:{lo}" if lo == hi else f"reject *:{lo}-{hi}") for lo, hi in DEFAULT_REJECT_PORTS]
    tail.append(parseRule("accept *:*"))
    return ExitPolicy(head + parsePolicy(operatorRules, ownAddresses) + tail)
