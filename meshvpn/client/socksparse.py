"""SOCKS5 wire format (RFC 1928, RFC 1929, Tor's RESOLVE extensions), no I/O.

Each parser takes the bytes received so far and returns C{None} when more
are needed, or C{(message, consumed)}.  Malformed input raises L{SocksError}
carrying the reply code the server must send, so the protocol module never
guesses.  Every message has a small maximum size, so a caller buffers at most
L{MAX_HANDSHAKE} bytes before a message is complete.
"""

import enum
import ipaddress
import struct

import attrs

VERSION = 5
AUTH_VERSION = 1

# The largest handshake message: a request with a 255-byte domain name.
MAX_REQUEST = 4 + 1 + 255 + 2
MAX_GREETING = 2 + 255
MAX_AUTH = 1 + 1 + 255 + 1 + 255
MAX_HANDSHAKE = max(MAX_REQUEST, MAX_GREETING, MAX_AUTH)


class Method(enum.IntEnum):
    NO_AUTH = 0x00
    USERNAME_PASSWORD = 0x02
    NO_ACCEPTABLE = 0xFF


class Command(enum.IntEnum):
    CONNECT = 0x01
    BIND = 0x02
    UDP_ASSOCIATE = 0x03
    RESOLVE = 0xF0  # Tor extension: resolve a name at the exit
    RESOLVE_PTR = 0xF1  # Tor extension: reverse-resolve at the exit


class AddressType(enum.IntEnum):
    IPV4 = 0x01
    DOMAIN = 0x03
    IPV6 = 0x04


class Reply(enum.IntEnum):
    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02  # connection not allowed by ruleset
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


class SocksError(ValueError):
    """
    The client sent something malformed or unsupported.  C{reply} is the
    L{Reply} to send before closing (C{None}: close without a reply, e.g.
    not SOCKS5 at all, where a SOCKS5 reply would be meaningless).
    """

    def __init__(self, reply, message):
        super().__init__(message)
        self.reply = reply


@attrs.frozen
class Greeting:
    methods: frozenset


@attrs.frozen
class Credentials:
    username: bytes
    password: bytes


@attrs.frozen
class Request:
    command: Command
    addressType: AddressType
    host: str  # IP literal (canonical form) or domain name
    port: int


def parseGreeting(data):
    """VER NMETHODS METHODS..."""
    if len(data) < 2:
        return None
    if data[0] != VERSION:
        raise SocksError(None, f"not SOCKS5 (version byte {data[0]})")
    n = data[1]
    if n == 0:
        raise SocksError(None, "greeting offers no methods")
    if len(data) < 2 + n:
        return None
    return Greeting(frozenset(data[2 : 2 + n])), 2 + n


def chooseMethod(greeting):
    """
    Username/password when offered (its only use is stream isolation, like
    Tor's IsolateSOCKSAuth), else no authentication.
    """
    if Method.USERNAME_PASSWORD in greeting.methods:
        return Method.USERNAME_PASSWORD
    if Method.NO_AUTH in greeting.methods:
        return Method.NO_AUTH
    return Method.NO_ACCEPTABLE


def parseAuth(data):
    """RFC 1929: VER ULEN UNAME PLEN PASSWD.  Empty names are accepted (as Tor does)."""
    if len(data) < 2:
        return None
    if data[0] != AUTH_VERSION:
        raise SocksError(None, f"username/password subnegotiation version {data[0]} is not 1")
    ulen = data[1]
    if len(data) < 2 + ulen + 1:
        return None
    plen = data[2 + ulen]
    end = 3 + ulen + plen
    if len(data) < end:
        return None
    return Credentials(bytes(data[2 : 2 + ulen]), bytes(data[3 + ulen : end])), end


_HOST_BYTES = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._")


def _checkDomain(raw):
    """
    Accept only what DNS hostnames (and the odd underscore) are made of:
    a NUL or control byte smuggled to the exit must not reach a resolver.
    """
    if not raw or len(raw) > 253 and not (len(raw) <= 254 and raw.endswith(b".")):
        raise SocksError(Reply.GENERAL_FAILURE, "empty or over-long domain name")
    if not _HOST_BYTES.issuperset(raw):
        raise SocksError(Reply.GENERAL_FAILURE, "domain name has characters a host name cannot have")
    name = raw.decode("ascii")
    labels = name[:-1].split(".") if name.endswith(".") else name.split(".")
    if any(not label or len(label) > 63 for label in labels):
        raise SocksError(Reply.GENERAL_FAILURE, "domain name has an empty or over-long label")
    return name


def parseRequest(data):
    """
    VER CMD RSV ATYP DST.ADDR DST.PORT.

    A domain that is really an IP literal is treated as that address.
    Unknown commands and address types are only known to be bad once the
    header is read, and get their own reply codes (0x07, 0x08).
    """
    if len(data) < 5:
        return None
    ver, cmd, rsv, atyp = data[0], data[1], data[2], data[3]
    if ver != VERSION:
        raise SocksError(Reply.GENERAL_FAILURE, f"request version {ver} is not 5")
    if rsv != 0:
        raise SocksError(Reply.GENERAL_FAILURE, "reserved byte is not zero")
    try:
        command = Command(cmd)
    except ValueError:
        raise SocksError(Reply.COMMAND_NOT_SUPPORTED, f"unknown command {cmd:#x}") from None
    if atyp == AddressType.IPV4:
        end = 4 + 4
        if len(data) < end + 2:
            return None
        host = str(ipaddress.IPv4Address(bytes(data[4:end])))
        addressType = AddressType.IPV4
    elif atyp == AddressType.IPV6:
        end = 4 + 16
        if len(data) < end + 2:
            return None
        ip = ipaddress.IPv6Address(bytes(data[4:end]))
        host = str(ip.ipv4_mapped) if ip.ipv4_mapped else str(ip)
        addressType = AddressType.IPV6
    elif atyp == AddressType.DOMAIN:
        n = data[4]
        end = 5 + n
        if len(data) < end + 2:
            return None
        host = _checkDomain(bytes(data[5:end]))
        addressType = AddressType.DOMAIN
        try:
            host = str(ipaddress.ip_address(host))
        except ValueError:
            pass
        else:
            addressType = AddressType.IPV6 if ":" in host else AddressType.IPV4
    else:
        raise SocksError(Reply.ADDRESS_TYPE_NOT_SUPPORTED, f"unknown address type {atyp:#x}")
    (port,) = struct.unpack("!H", data[end : end + 2])
    if command in (Command.BIND, Command.UDP_ASSOCIATE):
        raise SocksError(Reply.COMMAND_NOT_SUPPORTED, f"{command.name} is not supported")
    if command == Command.CONNECT and port == 0:
        raise SocksError(Reply.GENERAL_FAILURE, "port 0")
    if command == Command.RESOLVE_PTR and addressType == AddressType.DOMAIN:
        raise SocksError(Reply.ADDRESS_TYPE_NOT_SUPPORTED, "RESOLVE_PTR needs an IP address")
    if command == Command.RESOLVE and addressType != AddressType.DOMAIN:
        # Nothing to resolve: Tor answers with the address itself.
        pass
    return Request(command, addressType, host, port), end + 2


def encodeAddress(host):
    """@return: ATYP + address bytes for an IP literal or a name."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raw = host.encode("ascii", "replace")[:255]
        return bytes([AddressType.DOMAIN, len(raw)]) + raw
    if ip.version == 4:
        return bytes([AddressType.IPV4]) + ip.packed
    return bytes([AddressType.IPV6]) + ip.packed


def encodeReply(reply, host="0.0.0.0", port=0):
    """VER REP RSV ATYP BND.ADDR BND.PORT."""
    return bytes([VERSION, reply, 0]) + encodeAddress(host) + struct.pack("!H", port)


def encodeMethod(method):
    return bytes([VERSION, method])


def encodeAuthReply(ok=True):
    return bytes([AUTH_VERSION, 0 if ok else 1])


def encodeGreeting(methods):
    """Client side, for tests and tools."""
    return bytes([VERSION, len(methods)]) + bytes(methods)


def encodeAuth(username, password):
    return bytes([AUTH_VERSION, len(username)]) + username + bytes([len(password)]) + password


def encodeRequest(command, host, port):
    return bytes([VERSION, command, 0]) + encodeAddress(host) + struct.pack("!H", port)


def parseReply(data):
    """
    Client side: @return: C{((reply, host, port), consumed)} or C{None}.
    """
    if len(data) < 5:
        return None
    atyp = data[3]
    if atyp == AddressType.IPV4:
        end = 8
    elif atyp == AddressType.IPV6:
        end = 20
    elif atyp == AddressType.DOMAIN:
        end = 5 + data[4]
    else:
        raise SocksError(None, f"reply has unknown address type {atyp:#x}")
    if len(data) < end + 2:
        return None
    if atyp == AddressType.DOMAIN:
        host = bytes(data[5:end]).decode("ascii", "replace")
    else:
        host = str(ipaddress.ip_address(bytes(data[4:end])))
    (port,) = struct.unpack("!H", data[end : end + 2])
    return (Reply(data[1]) if data[1] <= 8 else data[1], host, port), end + 2
