"""Tor's exit policy syntax, read the way Tor reads it.

Operators copy policies from Tor (``ExitPolicy`` lines in a torrc, the
ReducedExitPolicy list), so a rule must mean here what it means there.
Each choice below follows Tor's parser (policy_parse.c
C{router_parse_addr_policy_item_from_string}, address.c
C{tor_addr_parse_mask_ports} and C{parse_port_range}) and its tests::

    accept|reject|accept6|reject6 ADDR[/MASK][:PORT[-PORT]]

  - ADDR: C{*} (IPv4 and IPv6; IPv6 only after accept6/reject6), C{*4},
    C{*6}, C{private:PORTS} (the port is required, as in Tor), an IPv4
    address, an IPv6 address in brackets, or an IPv6 address without
    brackets when a mask follows (C{reject6 2607:5300::/32}: the mask
    tells where the address ends, as in Tor; without one the first colon
    would start the port, so Tor and we refuse C{2001:db8::1:80}).
  - MASK: a prefix length, ASCII digits with any leading zeros (C{/0032}
    is C{/32}, as Tor's C{strtol} reads it), at most 32 for IPv4 and 128
    for IPv6, or for IPv4 a dotted netmask that is a prefix.  No mask: one
    host.  Host bits under the mask are ignored.
  - PORT: C{*}, nothing, a port or a range of ASCII digits; the low port
    may be 0 and is then raised to 1 (C{:0-65535} is C{:1-65535}, as Tor
    clamps); C{:0} alone is Tor's empty range 1-0, a rule that matches no
    port: we drop it with a warning.
  - C{accept6}/C{reject6} with an IPv4 address or C{*4}: Tor ignores the
    line with a warning and keeps going; so do we.  With C{private} they
    apply to IPv4 and IPv6 alike, with a warning, as in Tor.
  - Digits are ASCII only (Python's C{isdigit} would take Arabic-Indic or
    full-width digits), and every malformed rule raises L{PolicyParseError}
    naming the rule, never another exception.

Deliberate differences, all refusals of input Tor reads strangely: junk
between C{]} and the mask or port (Tor skips it), an empty mask (Tor reads
C{/} as C{/0}), signs or spaces inside numbers (C{strtol} takes them),
dotted masks on IPv6 addresses, and IPv4-mapped IPv6 rules are turned into
the IPv4 rule they stand for (targets are compared as IPv4 too, see
L{meshvpn.exit.policy.normalizeAddress}; Tor maps their C{/32} and
C{/128} to C{/96}).

A policy is rules separated by commas and newlines, C{#} starting a
comment; a line may start with the torrc keyword C{ExitPolicy}.  Like
Tor, rules after a catch-all for both IPv4 and IPv6 (C{accept *:*},
C{reject *:*}) draw a warning: they can never match.
"""

import ipaddress

import attrs
from twisted.logger import Logger

MAX_POLICY_TEXT = 64 * 1024
MAX_RULES = 1024
ACTIONS = ("accept", "reject", "accept6", "reject6")

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

_log = Logger(namespace="meshvpn.exit.policy")


class PolicyParseError(ValueError):
    """A policy rule is malformed; the message quotes the rule and says why."""


@attrs.frozen
class Rule:
    """
    One policy line.  C{networks} empty means every address of C{family}
    (C{None}: both families).  C{line} is where it came from (for people).
    """

    accept: bool
    networks: tuple
    family: object  # None, 4 or 6
    portMin: int
    portMax: int
    text: str = attrs.field(eq=False)
    line: object = attrs.field(default=None, eq=False)

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


def _logWarning(message):
    _log.warn("exit policy: {message}", message=message)


def _digits(text):
    """ASCII digits only: C{str.isdigit} also takes Arabic-Indic, full-width and superscript digits."""
    return text != "" and text.isascii() and text.isdigit()


def _number(text, most):
    """C{text} (ASCII digits, any leading zeros) as an int, or C{None} if above C{most}."""
    text = text.lstrip("0") or "0"
    if len(text) > len(str(most)) or int(text) > most:
        return None
    return int(text)


def _parsePorts(text, rule):
    """@return: C{(low, high)}; C{low > high} for Tor's empty range C{:0}."""
    if text in ("", "*"):
        return 1, 65535
    low, sep, high = text.partition("-")
    if not _digits(low) or (sep and not _digits(high)):
        raise PolicyParseError(f"{rule!r}: bad port {text!r} (expected *, PORT or PORT-PORT, ASCII digits)")
    lo = _number(low, 65535)
    hi = _number(high, 65535) if sep else lo
    if lo is None or hi is None or (sep and hi == 0):
        raise PolicyParseError(f"{rule!r}: port {text!r} out of range (ports are 1-65535)")
    if lo > hi:
        raise PolicyParseError(f"{rule!r}: port range {text!r} runs high to low")
    return max(lo, 1), hi


def _parseMask(mask, ip, rule):
    if _digits(mask):
        bits = _number(mask, 128)
        if bits is None or bits > ip.max_prefixlen:
            raise PolicyParseError(f"{rule!r}: mask /{mask} too long for IPv{ip.version}")
        return bits
    if ip.version == 4 and mask.isascii():
        try:
            net = ipaddress.IPv4Network(f"0.0.0.0/{mask}")
            exact = str(net.netmask) == str(ipaddress.IPv4Address(mask))
        except ValueError:
            exact = False
        # ipaddress also reads host masks (0.0.0.255); only a true netmask counts.
        if exact:
            return net.prefixlen
        raise PolicyParseError(f"{rule!r}: mask {mask!r} is neither a prefix length nor a prefix netmask")
    raise PolicyParseError(f"{rule!r}: bad mask {mask!r} (expected a prefix length, or a dotted netmask for IPv4)")


def _parseAddress(text, rule):
    if not text.isascii() or "%" in text or not text:
        ip = None
    else:
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            ip = None
    if ip is None:
        raise PolicyParseError(f"{rule!r}: {text!r} is not *, *4, *6, private or an IP address")
    return ip


def _splitTarget(target, rule):
    """@return: C{(address, bracketed, mask or None, port text or None)}."""
    if target.startswith("["):
        close = target.find("]")
        if close < 0:
            raise PolicyParseError(f"{rule!r}: unclosed '[' in IPv6 address")
        address, rest, bracketed = target[1:close], target[close + 1 :], True
        if rest and rest[0] not in "/:":
            raise PolicyParseError(f"{rule!r}: unexpected {rest!r} after ']'")
    else:
        slash = target.find("/")
        cut = slash if slash >= 0 else target.find(":")
        address, rest, bracketed = (target, "", False) if cut < 0 else (target[:cut], target[cut:], False)
    mask = port = None
    if rest.startswith("/"):
        mask, colon, port = rest[1:].partition(":")
        if not colon:
            port = None
        if mask == "":
            raise PolicyParseError(f"{rule!r}: empty mask after '/'")
    elif rest.startswith(":"):
        port = rest[1:]
    return address, bracketed, mask, port


def parseRule(text, ownAddresses=(), warn=None):
    """
    Parse one rule, e.g. C{"reject 10.0.0.0/255.0.0.0:*"}.

    @param ownAddresses: the exit's own addresses, added to C{private}.
    @param warn: C{callable(message)} told about rules Tor would warn about
        (default: the log).
    @return: a L{Rule}, or C{None} for a rule Tor ignores with a warning.
    @raise PolicyParseError: naming the rule and what is wrong.
    """
    warn = warn or _logWarning
    rule = text.strip()
    parts = rule.split(None, 1)
    action, target = (parts + ["", ""])[:2]
    target = target.strip()
    if action not in ACTIONS or not target or any(c.isspace() for c in target):
        raise PolicyParseError(f"{rule!r}: expected 'accept|reject[6] ADDR[/MASK][:PORT]'")
    only6 = action.endswith("6")
    accept = action.startswith("accept")

    if target.startswith("private"):
        if not target.startswith("private:"):
            raise PolicyParseError(f"{rule!r}: 'private' takes a port and no mask, e.g. private:*")
        lo, hi = _parsePorts(target[len("private:") :], rule)
        if only6:
            warn(f"{rule!r} applies to all private IPv4 and IPv6 addresses, as in Tor (write {action[:-1]} private:...)")
        own = tuple(ipaddress.ip_network(_normalize(ipaddress.ip_address(a))) for a in ownAddresses)
        return _made(Rule(accept, PRIVATE_NETWORKS + own, None, lo, hi, rule), warn)

    address, bracketed, mask, port = _splitTarget(target, rule)
    lo, hi = _parsePorts(port, rule) if port is not None else (1, 65535)
    if address in ("*", "*4", "*6") and not bracketed:
        if mask is not None:
            raise PolicyParseError(f"{rule!r}: the wildcard {address!r} takes no mask")
        family = {"*": 6 if only6 else None, "*4": 4, "*6": 6}[address]
        if only6 and family == 4:
            warn(f"{rule!r}: IPv4 wildcard with {action}; rule ignored, as Tor does (use {action[:-1]})")
            return None
        return _made(Rule(accept, (), family, lo, hi, rule), warn)
    if not bracketed and mask is None and target.count(":") > 1:
        raise PolicyParseError(f"{rule!r}: IPv6 addresses go in brackets ([2001:db8::1]:80) unless a mask follows")
    ip = _parseAddress(address, rule)
    if ip.version == 6 and ip.ipv4_mapped is not None:
        net = _mappedNetwork(ip, mask, rule)
    else:
        bits = ip.max_prefixlen if mask is None else _parseMask(mask, ip, rule)
        net = ipaddress.ip_network(f"{ip}/{bits}", strict=False)
    if only6 and ip.version == 4:
        warn(f"{rule!r}: IPv4 address with {action}; rule ignored, as Tor does (use {action[:-1]})")
        return None
    if net.prefixlen == 0:
        return _made(Rule(accept, (), net.version, lo, hi, rule), warn)
    return _made(Rule(accept, (net,), net.version, lo, hi, rule), warn)


def _normalize(ip):
    return ip.ipv4_mapped if ip.version == 6 and ip.ipv4_mapped is not None else ip


def _mappedNetwork(ip, mask, rule):
    """An IPv4-mapped IPv6 rule as the IPv4 rule it stands for (targets are compared as IPv4)."""
    bits = 128 if mask is None else _parseMask(mask, ip, rule)
    if 32 < bits < 96:
        raise PolicyParseError(f"{rule!r}: mask /{mask} does not fit an IPv4-mapped address (0-32 or 96-128)")
    return ipaddress.ip_network(f"{ip.ipv4_mapped}/{bits - 96 if bits >= 96 else bits}", strict=False)


def _made(rule, warn):
    if rule.portMin > rule.portMax:
        warn(f"{rule.text!r}: port 0 matches no port (Tor reads it as the empty range 1-0); rule dropped")
        return None
    return rule


def parsePolicy(text, ownAddresses=(), warn=None):
    """
    Parse rules separated by commas and/or newlines (C{#} starts a comment,
    a line may start with the torrc keyword C{ExitPolicy}).

    @param warn: C{callable(message)} for what Tor would warn about
        (default: the log).
    @return: a list of L{Rule} (ignored rules left out), each with its line.
    @raise PolicyParseError: on the first bad rule (with its line), or if too long.
    """
    warn = warn or _logWarning
    if len(text) > MAX_POLICY_TEXT:
        raise PolicyParseError(f"policy longer than {MAX_POLICY_TEXT} characters")
    rules = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0]
        words = line.split(None, 1)
        if words and words[0].lower() == "exitpolicy":
            line = words[1] if len(words) > 1 else ""
        for part in line.split(","):
            if not part.strip():
                continue
            try:
                rule = parseRule(part, ownAddresses, warn)
            except PolicyParseError as e:
                raise PolicyParseError(f"line {number}: {e}") from None
            if rule is not None:
                rules.append(attrs.evolve(rule, line=number))
                if len(rules) > MAX_RULES:
                    raise PolicyParseError(f"more than {MAX_RULES} rules")
    _warnUnreachable(rules, warn)
    return rules


def _warnUnreachable(rules, warn):
    """Tor's warning for rules after catch-alls for both IPv4 and IPv6: they never match."""
    caught = set()
    for i, rule in enumerate(rules):
        if rule.portMin <= 1 and rule.portMax == 65535 and not rule.networks:
            caught |= {4, 6} if rule.family is None else {rule.family}
        if caught == {4, 6}:
            if i + 1 < len(rules):
                warn(f"{rules[i + 1].text!r} and every rule after it can never match: they follow catch-all rules "
                     "for IPv4 and IPv6 (end a policy with accept/reject *:*)")
            return
