"""The texts a user or a peer hands a managed transport: transport lines, addresses with arguments, bridge lines.

 - A transport line, torrc's C{ClientTransportPlugin}/C{ServerTransportPlugin}
   value: C{"obfs4 exec /usr/bin/obfs4proxy [ARG ...]"} (several names:
   C{"obfs4,obfs3 exec ..."}).
 - A link address over a managed transport: C{"HOST:PORT k=v k=v"}, the
   tail of a bridge line; the C{k=v} pairs are the per-connection
   arguments (obfs4's C{cert} and C{iat-mode}).
 - A bridge line, Tor's shape: C{"obfs4 HOST:PORT NODEID cert=... iat-mode=0"}
   (a leading C{"Bridge "} is accepted so torrc lines paste as they are),
   with our 64-hex-digit node id where Tor has a fingerprint.
 - Per-connection arguments packed into SOCKS5 username/password (pt-spec,
   "Per-Connection Arguments").

Every parser raises L{ValueError} with what was expected; callers turn it
into their own one-line error.
"""

import os
import string

import attrs

from meshvpn.hostport import HostPortError, formatHostPort, parseIPPort
from meshvpn.link.pt.escaped import splitEscapedPairs

MAX_SOCKS_FIELD = 255
_NAME_CHARS = set(string.ascii_letters + string.digits + "_")
_VALUE_FORBIDDEN = set(" \t\r\n\0")


@attrs.frozen
class TransportLine:
    """Which transports one program provides and how to run it."""

    names: tuple
    path: str
    argv: tuple = ()


def _checkName(name):
    if not name or not set(name) <= _NAME_CHARS or not name[0].isalpha():
        raise ValueError(f"a transport name of letters, digits and '_' (got {name[:40]!r})")
    return name


def parseTransportLine(raw):
    """C{"obfs4 exec /usr/bin/obfs4proxy"} -> L{TransportLine}; the program must exist and be executable."""
    if not isinstance(raw, str):
        raise ValueError('"NAME[,NAME...] exec /path/to/program [ARG ...]"')
    words = raw.split()
    if len(words) < 3 or words[1] != "exec":
        raise ValueError('"NAME[,NAME...] exec /path/to/program [ARG ...]" (only managed transports: exec)')
    names = tuple(_checkName(n) for n in words[0].split(","))
    if len(set(names)) != len(names):
        raise ValueError("each transport name once")
    path = words[2]
    if not os.path.isabs(path):
        raise ValueError(f"an absolute program path (got {path[:80]!r})")
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise ValueError(f"an executable program at {path[:80]!r} (not found or not executable)")
    return TransportLine(names, path, tuple(words[3:]))


def parseTransportLines(raw):
    """One line, or a TOML list of them, or several separated by newlines."""
    if isinstance(raw, str):
        raw = [l for l in raw.splitlines() if l.strip()]
    if not isinstance(raw, list) or not raw:
        raise ValueError('"NAME exec /path/to/program" (a list of them in TOML)')
    lines = [parseTransportLine(l) for l in raw]
    seen = [n for l in lines for n in l.names]
    if len(set(seen)) != len(seen):
        raise ValueError("each transport name in one line only")
    return lines


# ---- per-connection arguments


def parseArgWords(words):
    """C{["cert=abc", "iat-mode=0"]} -> C{(("cert", "abc"), ("iat-mode", "0"))}."""
    args = []
    for word in words:
        key, eq, value = word.partition("=")
        if not eq or not key or _VALUE_FORBIDDEN & set(word):
            raise ValueError(f"KEY=VALUE arguments (got {word[:60]!r})")
        args.append((key, value))
    return tuple(args)


def _escape(text):
    return text.replace("\\", "\\\\").replace("=", "\\=").replace(";", "\\;")


def packSocksArgs(args):
    """
    Per-connection arguments -> C{(username, password)} bytes for RFC 1929
    (pt-spec): C{k=v;k=v} with C{\\ = ;} escaped, cut at 255 bytes into the
    username and the rest into the password; a password of one NUL when it
    all fits in the username.  No arguments: C{(None, None)} (no auth).

    @raise ValueError: longer than the two fields can carry.
    """
    if not args:
        return None, None
    packed = ";".join(f"{_escape(k)}={_escape(v)}" for k, v in args).encode("utf-8")
    if len(packed) > 2 * MAX_SOCKS_FIELD:
        raise ValueError(f"per-connection arguments of at most {2 * MAX_SOCKS_FIELD} bytes (got {len(packed)})")
    if len(packed) <= MAX_SOCKS_FIELD:
        return packed, b"\0"
    return packed[:MAX_SOCKS_FIELD], packed[MAX_SOCKS_FIELD:]


def unpackSocksArgs(username, password):
    """The inverse of L{packSocksArgs} (what a transport does); used by tests and the fake transport."""
    packed = username + (b"" if password == b"\0" else password)
    try:
        args = splitEscapedPairs(packed.decode("utf-8"), ";")
    except ValueError:
        raise ValueError("malformed packed arguments") from None
    if any(key is None for key, _ in args):
        raise ValueError("malformed packed arguments")
    return tuple(args)


# ---- link addresses and bridge lines


@attrs.frozen
class PTAddress:
    """Where a managed transport's client method should connect, and with what arguments."""

    host: str
    port: int
    args: tuple = ()

    def __str__(self):
        return " ".join([formatHostPort(self.host, self.port)] + [f"{k}={v}" for k, v in self.args])


def parsePTAddress(text):
    """C{"198.18.0.5:443 cert=... iat-mode=0"} -> L{PTAddress}."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("HOST:PORT [KEY=VALUE ...]")
    words = text.split()
    try:
        host, port = parseIPPort(words[0], allowZero=False)
    except HostPortError as e:
        raise ValueError(f"HOST:PORT with a literal IP first ({e})") from None
    return PTAddress(host, port, parseArgWords(words[1:]))


@attrs.frozen
class BridgeLine:
    """C{obfs4 HOST:PORT NODEID cert=... iat-mode=0}: an unlisted first hop, and how to reach it."""

    transport: str
    address: PTAddress
    nodeId: bytes

    def __str__(self):
        parts = [self.transport, formatHostPort(self.address.host, self.address.port), self.nodeId.hex()]
        return " ".join(parts + [f"{k}={v}" for k, v in self.address.args])


def parseBridgeLine(raw):
    """@raise ValueError: naming what is wrong, never echoing more than a short prefix."""
    if not isinstance(raw, str):
        raise ValueError("a bridge line: TRANSPORT HOST:PORT NODEID [KEY=VALUE ...]")
    words = raw.split()
    if words and words[0] == "Bridge":
        words = words[1:]
    if len(words) < 3:
        raise ValueError("a bridge line: TRANSPORT HOST:PORT NODEID [KEY=VALUE ...]")
    transport = _checkName(words[0])
    try:
        nodeId = bytes.fromhex(words[2])
    except ValueError:
        nodeId = b""
    if len(nodeId) != 32:
        raise ValueError(f"a 64-hex-digit node id after the address (got {words[2][:70]!r})")
    return BridgeLine(transport, parsePTAddress(" ".join([words[1]] + words[3:])), nodeId)


def parseBridgeLines(raw):
    """One bridge line, a TOML list of them, or several separated by newlines."""
    if isinstance(raw, str):
        raw = [l for l in raw.splitlines() if l.strip()]
    if not isinstance(raw, list) or not raw:
        raise ValueError("a bridge line: TRANSPORT HOST:PORT NODEID [KEY=VALUE ...] (a list of them in TOML)")
    return [parseBridgeLine(l) for l in raw]
