"""Settings for each role: one schema feeds the command line, the TOML file and validation.

A role declares its settings once (name, parser, default, help).  From that
come its C{usage.Options} (real ``--help`` text), the accepted keys of its
``--config`` TOML file, and the checks.  Precedence: command line, then file,
then default.  Any unknown key or bad value stops the program with one line
naming the key and what was expected.
"""

import os
import tomllib

import attrs
from twisted.python import usage

from meshvpn.errors import ConfigError
from meshvpn.hostport import HostPortError, formatHostPort, parseIPPort
from meshvpn.logoutput import parseLogLevel


@attrs.frozen
class Setting:
    """One setting: its dashed name, how to parse it, its default, its help."""

    name: str
    parse: object
    default: object
    help: str
    flag: bool = False

    @property
    def attr(self):
        return self.name.replace("-", "_")


# ---- value parsers: each takes a raw value (str from the command line, any
# TOML type from the file) and returns the parsed value or raises ValueError
# with what was expected.


def parseText(raw):
    if not isinstance(raw, str) or not raw:
        raise ValueError("a non-empty string")
    return raw


def parsePath(raw):
    return os.path.abspath(os.path.expanduser(parseText(raw)))


def parseBool(raw):
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, int) and raw in (0, 1):
        # usage.Options stores a given flag as 1.
        return bool(raw)
    if isinstance(raw, str) and raw.lower() in ("true", "yes", "1", "false", "no", "0"):
        return raw.lower() in ("true", "yes", "1")
    raise ValueError("true or false")


def parsePort(raw):
    try:
        port = int(raw) if not isinstance(raw, bool) else None
    except (TypeError, ValueError):
        port = None
    if port is None or not 0 <= port <= 65535:
        raise ValueError("a port number 0-65535")
    return port


def parsePositiveInt(raw):
    try:
        value = int(raw) if not isinstance(raw, bool) else -1
    except (TypeError, ValueError):
        value = -1
    if value < 0:
        raise ValueError("a whole number 0 or more")
    return value


def parseBytesOrOff(raw):
    """A byte count (C{int} >= 0), or C{None} for C{off}."""
    if isinstance(raw, int) or raw is None:
        value = raw
    elif str(raw).strip().lower() == "off":
        return None
    else:
        try:
            value = int(str(raw).strip())
        except ValueError:
            raise ValueError("a byte count or off") from None
    if value is not None and value < 0:
        raise ValueError("a byte count 0 or more, or off")
    return value


def parseHostPort(raw):
    """
    C{"HOST:PORT"}, C{"[V6]:PORT"} or just C{"PORT"} (all IPv4 interfaces).

    @return: C{(host, port)} with C{host} a literal IP address.
    """
    try:
        return parseIPPort(raw, allowZero=True, defaultHost="0.0.0.0")
    except HostPortError:
        raise ValueError("HOST:PORT with a literal IP host, e.g. 127.0.0.1:9000 or [::1]:9000") from None


def parseServerEndpoint(raw):
    """A Twisted server endpoint string, checked by Twisted's own parser."""
    from twisted.internet import endpoints
    from twisted.internet.testing import MemoryReactor

    text = parseText(raw)
    try:
        endpoints.serverFromString(MemoryReactor(), text)
    except Exception:
        raise ValueError("a Twisted server endpoint string, e.g. tcp:9001:interface=127.0.0.1") from None
    return text


def defaultDataDir(role):
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(base, "meshvpn", role)


# ---- the settings every node has


def commonSettings(role, udpDefault):
    return [
        Setting("data-dir", parsePath, defaultDataDir(role), "Directory holding this node's keys and state (created 0700)."),
        Setting("udp", parseHostPort, udpDefault, "HOST:PORT of the node's one UDP socket (STUN, DHT, datagram links)."),
        Setting("udp6", parseHostPort, None,
                "HOST:PORT of a second UDP socket of the other address family, e.g. [::]:9000 beside an IPv4 --udp: "
                "the node is then dual-stack (DHT, STUN and datagram links on both) and announces both."),
        Setting("log-level", parseLogLevel, "info",
                "Lowest level written by twistd --logger=meshvpn.logoutput.observer: debug, info, warn or error "
                "(changes on SIGHUP)."),
    ]


def loadToml(path):
    """
    @return: the dict in the TOML file C{path}.
    @raise ConfigError: unreadable or not valid TOML, naming the file.
    """
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"--config {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"--config {path}: not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        # tomllib decodes before it parses: a stray non-UTF-8 byte is not a TOMLDecodeError
        raise ConfigError(f"--config {path}: not valid TOML: not UTF-8 (byte {e.start})") from None


def resolveSettings(settings, commandLine, fileValues, source="config file"):
    """
    Merge command line over file over defaults and parse every value.

    @param commandLine: dict of dashed name -> raw value, C{None} if not given.
    @param fileValues: dict from the TOML file.
    @return: dict of underscore name -> parsed value.
    @raise ConfigError: naming the key and what was expected.
    """
    known = {s.name: s for s in settings}
    for key in fileValues:
        if key not in known:
            raise ConfigError(f"unknown key {key!r} in {source}; known keys: {', '.join(sorted(known))}")
    result = {}
    for s in settings:
        given = commandLine.get(s.name)
        if given is not None:
            raw, where = given, f"--{s.name}"
        elif s.name in fileValues:
            raw, where = fileValues[s.name], f"key {s.name!r} in {source}"
        else:
            result[s.attr] = s.default
            continue
        try:
            result[s.attr] = s.parse(raw)
        except ValueError as e:
            raise ConfigError(f"{where}: expected {e}, got {raw!r}") from None
    return result


class RoleOptions(usage.Options):
    """
    Base of each role's twistd options.  Subclasses set C{role} and
    C{settings}; after parsing, C{self.settings} holds the merged, parsed values.
    """

    role = "node"
    schema: list = []

    def __init_subclass__(cls, **kwargs):
        # usage.Options reads optParameters/optFlags from the class, so they
        # are derived from the schema when each role's class is defined.
        super().__init_subclass__(**kwargs)
        cls.optParameters = [
            [s.name, None, None, f"{s.help} [default: {_show(s.default)}]"] for s in cls.schema if not s.flag
        ] + [["config", "c", None, "TOML file with any of these settings (command line wins)."]]
        cls.optFlags = [[s.name, None, s.help] for s in cls.schema if s.flag]

    def parseOptions(self, options=None):
        try:
            super().parseOptions(options)
        except ConfigError as e:
            # One line, no usage dump: the line names the key and what was expected.
            raise SystemExit(f"meshvpn-{self.role}: config error: {e}") from None

    def postOptions(self):
        fileValues = {}
        if self["config"]:
            fileValues = loadToml(self["config"])
        given = {s.name: (self[s.name] or None) if s.flag else self[s.name] for s in self.schema}
        # Kept so a reload reads the file again under the same command line.
        self.commandLine = given
        self.settings = resolveSettings(self.schema, given, fileValues, f"--config {self['config']}")

    def reread(self):
        """
        The settings as they would be now: the C{--config} file read again,
        the command line given at start still winning.

        @raise ConfigError: the file no longer reads or validates.
        """
        fileValues = loadToml(self["config"]) if self["config"] else {}
        return resolveSettings(self.schema, self.commandLine, fileValues, f"--config {self['config']}")


def _show(value):
    if isinstance(value, tuple):
        return formatHostPort(*value)
    return value

