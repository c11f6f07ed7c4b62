"""The lines a managed transport writes on stdout while it starts (pt-spec, "Pluggable Transport to Parent Process Communication").

Each line is one keyword and its arguments separated by spaces.  Parsing is
strict about what the launch depends on (a method's name, kind and address)
and lenient where pt-spec asks parents to be: unknown keywords are kept as
L{Unknown} so the caller can log and ignore them.  Every malformed line
raises L{PTProtocolError} naming the line, cut short, never the whole
stream: the process gets no chance to flood our log.
"""

import attrs

from meshvpn.errors import MeshVPNError
from meshvpn.hostport import HostPortError, parseIPPort
from meshvpn.link.pt.escaped import splitEscapedPairs

MAX_LINE = 4096  # longer lines are a protocol error, not a buffer to grow


class PTProtocolError(MeshVPNError):
    """A managed transport broke the launch protocol or reported an error; the message says which."""


def _show(line):
    return repr(line[:80] + ("..." if len(line) > 80 else ""))


@attrs.frozen
class Version:
    version: str


@attrs.frozen
class VersionError:
    message: str


@attrs.frozen
class EnvError:
    message: str


@attrs.frozen
class ClientMethod:
    """C{CMETHOD obfs4 socks5 127.0.0.1:PORT}: where to send SOCKS for C{name}."""

    name: str
    protocol: str  # socks5 (socks4 is refused: it cannot carry arguments we need)
    host: str
    port: int


@attrs.frozen
class ServerMethod:
    """C{SMETHOD obfs4 0.0.0.0:PORT ARGS:cert=...,iat-mode=0}: where C{name} listens and what clients need."""

    name: str
    host: str
    port: int
    args: tuple = ()  # ((key, value), ...) in the order given


@attrs.frozen
class MethodError:
    """C{CMETHOD-ERROR} / C{SMETHOD-ERROR}."""

    server: bool
    name: str
    message: str


@attrs.frozen
class MethodsDone:
    server: bool


@attrs.frozen
class Log:
    """C{LOG}/C{STATUS} lines (pt-spec 3.3.4/3.3.5): shown in our log, nothing else."""

    keyword: str
    text: str


@attrs.frozen
class Unknown:
    keyword: str


def _address(text, line):
    try:
        return parseIPPort(text, allowZero=False)
    except HostPortError as e:
        raise PTProtocolError(f"bad address in {_show(line)}: {e}") from None


def _name(text, line):
    if not text or not text.replace("_", "a").isalnum() or not text.isascii():
        raise PTProtocolError(f"bad transport name {text[:40]!r} in {_show(line)}")
    return text


def parseServerArgs(text):
    """
    The value of an SMETHOD's C{ARGS:} option: C{k=v,k=v} with C{\\,},
    C{\\=} and C{\\\\} escapes.  @return: C{((k, v), ...)}.
    @raise ValueError: an empty key, a pair without C{=}, a dangling backslash.
    """
    pairs = splitEscapedPairs(text, ",")
    if any(not key for key, _ in pairs):
        raise ValueError("a KEY=VALUE pair with an empty key or no '='")
    return tuple(pairs)


def parseLine(line):
    """
    One stdout line (C{str}, without its newline) -> one of the records above.
    @raise PTProtocolError: the line is malformed; the message quotes it (cut short).
    """
    if len(line) > MAX_LINE:
        raise PTProtocolError(f"line longer than {MAX_LINE} characters: {_show(line)}")
    if not line.isprintable():
        raise PTProtocolError(f"line with control characters: {_show(line)}")
    keyword, _, rest = line.partition(" ")
    words = rest.split(" ") if rest else []
    if keyword == "VERSION":
        if len(words) != 1:
            raise PTProtocolError(f"VERSION takes one argument: {_show(line)}")
        return Version(words[0])
    if keyword == "VERSION-ERROR":
        return VersionError(rest or "(no message)")
    if keyword == "ENV-ERROR":
        return EnvError(rest or "(no message)")
    if keyword == "CMETHOD":
        if len(words) != 3:
            raise PTProtocolError(f"CMETHOD takes NAME PROTOCOL ADDRESS: {_show(line)}")
        name, proto, addr = words
        if proto not in ("socks4", "socks5"):
            raise PTProtocolError(f"CMETHOD protocol must be socks4 or socks5: {_show(line)}")
        host, port = _address(addr, line)
        return ClientMethod(_name(name, line), proto, host, port)
    if keyword == "SMETHOD":
        if len(words) < 2:
            raise PTProtocolError(f"SMETHOD takes NAME ADDRESS [ARGS:...]: {_show(line)}")
        name, addr, *options = words
        host, port = _address(addr, line)
        args = ()
        for option in options:
            if option.startswith("ARGS:"):
                try:
                    args = parseServerArgs(option[5:])
                except ValueError as e:
                    raise PTProtocolError(f"bad SMETHOD ARGS ({e}): {_show(line)}") from None
        return ServerMethod(_name(name, line), host, port, args)
    if keyword in ("CMETHOD-ERROR", "SMETHOD-ERROR"):
        if len(words) < 1:
            raise PTProtocolError(f"{keyword} takes NAME MESSAGE: {_show(line)}")
        return MethodError(keyword[0] == "S", words[0], " ".join(words[1:]) or "(no message)")
    if keyword in ("CMETHODS", "SMETHODS"):
        if words != ["DONE"]:
            raise PTProtocolError(f"{keyword} must be followed by DONE: {_show(line)}")
        return MethodsDone(keyword[0] == "S")
    if keyword in ("LOG", "STATUS"):
        return Log(keyword, rest)
    if not keyword:
        raise PTProtocolError("an empty line")
    return Unknown(keyword[:40])
