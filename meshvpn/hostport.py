"""The one host:port codec: C{HOST:PORT}, C{[V6]:PORT}, and back.

Configuration, descriptors, BEGIN targets and logs all write addresses the
same way; parsing them in one place means one set of rules about brackets,
IPv6 and port ranges, and one error message.
"""

import ipaddress


class HostPortError(ValueError):
    """Not a C{HOST:PORT} this codec accepts; the message says what was expected."""


def formatHostPort(host, port):
    """C{("::1", 80)} -> C{"[::1]:80"}; C{("10.0.0.1", 80)} -> C{"10.0.0.1:80"}."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parsePortNumber(text, allowZero=False):
    """A port written in ASCII digits only, 1..65535 (0 too if C{allowZero})."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    elif isinstance(text, str) and text.isascii() and text.isdigit() and len(text) <= 5:
        value = int(text)
    else:
        raise HostPortError(f"port {str(text)[:20]!r} is not a number")
    if not (0 if allowZero else 1) <= value <= 65535:
        raise HostPortError(f"port {value} is out of range")
    return value


def splitHostPort(text, allowZero=False):
    """
    C{"host:port"} or C{"[v6]:port"} -> C{(host, port)}, the host not
    checked beyond its brackets (a hostname is fine).  An unbracketed host
    with a colon is refused: C{"::1:80"} is ambiguous.
    """
    if not isinstance(text, str):
        raise HostPortError("HOST:PORT expected")
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise HostPortError(f"{text[:60]!r}: a bracketed IPv6 host must be followed by ]:PORT")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise HostPortError(f"{text[:60]!r}: bad IPv6 literal") from None
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not host:
            raise HostPortError(f"{text[:60]!r} has no HOST:PORT form")
        if ":" in host:
            raise HostPortError(f"{text[:60]!r}: write IPv6 hosts in brackets, [V6]:PORT")
    return host, parsePortNumber(port, allowZero)


def parseIPPort(text, allowZero=True, defaultHost=None):
    """
    Like L{splitHostPort}, but the host must be a literal IP address
    (normalised).  With C{defaultHost}, a bare port means that host.
    """
    if defaultHost is not None and (isinstance(text, int) and not isinstance(text, bool)
                                    or isinstance(text, str) and text.isascii() and text.isdigit()):
        return defaultHost, parsePortNumber(text, allowZero)
    host, port = splitHostPort(text, allowZero)
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        raise HostPortError(f"{text[:60]!r}: the host must be a literal IP address") from None
