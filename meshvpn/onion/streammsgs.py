"""The bodies of the stream relay messages: BEGIN, CONNECTED, END, RESOLVE, RESOLVED.

The protocol plane owns every relay message body, so both ends of a stream
(the client's and the exit's L{meshvpn.streams.mux.StreamMux}) read and
write them here and nowhere else.  Relay command numbers are
L{meshvpn.onion.cells.RelayCommand}'s, END reasons are
L{meshvpn.onion.endreasons.EndReason}; this module adds only the byte
layouts (tor-spec, "Opening streams" and "Closing streams").

Every decoder checks every length and value and raises
L{meshvpn.onion.cells.CellError} naming what is wrong, so a hostile body
costs its sender one stream, never a crash.  A BEGIN or RESOLVE name must
look like a DNS host name: a NUL or a control byte smuggled through an exit
never reaches its resolver.  DATA has no codec: its body is the stream's
bytes, and the hot path slices cells itself.
"""

import ipaddress
import struct

import attrs

from meshvpn.hostport import HostPortError, formatHostPort, splitHostPort
from meshvpn.onion.cells import RELAY_DATA_LEN, CellError, RelayCommand
from meshvpn.onion.endreasons import EndReason

MAX_HOSTNAME = 255
_HOSTNAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._")


def isHostname(text):
    """C{True} if C{text} is 1..255 characters a host name (or IPv4 literal) is made of."""
    return 0 < len(text) <= MAX_HOSTNAME and _HOSTNAME_CHARS.issuperset(text)


def _ascii(raw, what):
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise CellError(f"{what} is not ASCII") from None


@attrs.frozen
class Begin:
    """BEGIN: C{HOST:PORT NUL FLAGS}, an IPv6 host in brackets (L{meshvpn.hostport})."""

    host: str
    port: int
    flags: int = 0

    def encode(self):
        try:
            target = formatHostPort(self.host, self.port).encode("ascii")
        except UnicodeEncodeError:
            raise CellError("BEGIN target is not ASCII") from None
        return target + b"\0" + struct.pack(">I", self.flags)

    @classmethod
    def decode(cls, data):
        target, nul, rest = bytes(data).partition(b"\0")
        if not nul:
            raise CellError("BEGIN target is not NUL-terminated")
        text = _ascii(target, "BEGIN target")
        try:
            host, port = splitHostPort(text)
        except HostPortError as e:
            raise CellError(f"BEGIN target has no valid HOST:PORT: {e}") from None
        # A bracketed host was checked as an IPv6 literal; anything else must be a host name.
        if ":" not in host and not isHostname(host):
            raise CellError(f"BEGIN host {host[:60]!r} is not a hostname or address")
        flags = struct.unpack(">I", rest[:4])[0] if len(rest) >= 4 else 0
        return cls(host, port, flags)


@attrs.frozen
class End:
    """END: one reason byte.  An empty END means MISC, as in Tor."""

    reason: EndReason = attrs.field(converter=EndReason.fromWire)

    def encode(self):
        return bytes((self.reason,))

    @classmethod
    def decode(cls, data):
        return cls(data[0] if data else EndReason.MISC)


@attrs.frozen
class Connected:
    """CONNECTED: empty, or the address connected to and a TTL (IPv4 form, or zeros + 6 + IPv6)."""

    address: str = None
    ttl: int = 0

    def encode(self):
        if self.address is None:
            return b""
        ip = ipaddress.ip_address(self.address)
        if ip.version == 4:
            return ip.packed + struct.pack(">I", self.ttl)
        return bytes(4) + b"\x06" + ip.packed + struct.pack(">I", self.ttl)

    @classmethod
    def decode(cls, data):
        if not data:
            return cls()
        if len(data) == 8 and data[:4] != bytes(4):
            return cls(str(ipaddress.IPv4Address(bytes(data[:4]))), struct.unpack(">I", data[4:8])[0])
        if len(data) == 25 and data[:4] == bytes(4) and data[4] == 6:
            return cls(str(ipaddress.IPv6Address(bytes(data[5:21]))), struct.unpack(">I", data[21:25])[0])
        raise CellError("CONNECTED body is neither empty, IPv4+TTL nor IPv6+TTL")


@attrs.frozen
class Resolve:
    """RESOLVE: a host name (or a reverse name, C{...in-addr.arpa}) and a NUL."""

    hostname: str

    def encode(self):
        if not isHostname(self.hostname):
            raise CellError("RESOLVE name is not a host name")
        return self.hostname.encode("ascii") + b"\0"

    @classmethod
    def decode(cls, data):
        name, nul, _ = bytes(data).partition(b"\0")
        if not nul:
            raise CellError("RESOLVE name is not NUL-terminated")
        text = _ascii(name, "RESOLVE name")
        if not isHostname(text):
            raise CellError(f"RESOLVE name {text[:60]!r} is not a host name")
        return cls(text)


class AnswerType:
    """The type byte of a RESOLVED answer (Tor's numbers)."""

    HOSTNAME = 0x00
    IPV4 = 0x04
    IPV6 = 0x06
    ERROR_TRANSIENT = 0xF0
    ERROR_NONTRANSIENT = 0xF1


def _answerSize(answer):
    return 2 + len(answer[1]) + 4


@attrs.frozen
class Resolved:
    """RESOLVED: C{answers}, a tuple of C{(type, value bytes, ttl)}."""

    answers: tuple = attrs.field(converter=tuple)

    @classmethod
    def fitting(cls, answers, room=RELAY_DATA_LEN):
        """
        The leading C{answers} that fit one cell of C{room} data bytes (a
        name can have more addresses than a cell holds; the first ones are
        the ones to use).
        """
        kept, size = [], 0
        for answer in answers:
            size += _answerSize(answer)
            if size > room:
                break
            kept.append(answer)
        return cls(kept)

    @classmethod
    def error(cls, transient):
        return cls([(AnswerType.ERROR_TRANSIENT if transient else AnswerType.ERROR_NONTRANSIENT, b"", 0)])

    def encode(self):
        body = b"".join(bytes((kind, len(value))) + value + struct.pack(">I", ttl) for kind, value, ttl in self.answers)
        if len(body) > RELAY_DATA_LEN:
            raise CellError("RESOLVED does not fit one cell")
        return body

    @classmethod
    def decode(cls, data):
        data, answers, pos = bytes(data), [], 0
        while pos < len(data):
            if pos + 2 > len(data):
                raise CellError("RESOLVED answer header truncated")
            kind, n = data[pos], data[pos + 1]
            if pos + 2 + n + 4 > len(data):
                raise CellError("RESOLVED answer truncated")
            if (kind == AnswerType.IPV4 and n != 4) or (kind == AnswerType.IPV6 and n != 16):
                raise CellError(f"RESOLVED answer of type {kind:#x} has length {n}")
            value = data[pos + 2 : pos + 2 + n]
            (ttl,) = struct.unpack_from(">I", data, pos + 2 + n)
            answers.append((kind, value, ttl))
            pos += 2 + n + 4
        return cls(answers)


STREAM_BODY_TYPES = {
    RelayCommand.BEGIN: Begin,
    RelayCommand.END: End,
    RelayCommand.CONNECTED: Connected,
    RelayCommand.RESOLVE: Resolve,
    RelayCommand.RESOLVED: Resolved,
}
