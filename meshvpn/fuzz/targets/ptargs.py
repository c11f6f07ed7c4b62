"""Fuzz target: the texts that configure a managed transport (link/pt/args.py, messages.py parseServerArgs).

Bridge lines and transport lines come from config files and from users
pasting what a bridge operator published; per-connection arguments come
back from SOCKS fields; SMETHOD ARGS from the transport's stdout.  The
first input byte picks the parser, the rest is the text.  Each raises only
L{ValueError} (what it expected), and what parses must survive the trip
back: a bridge line written out reads the same, arguments packed into
SOCKS fields unpack to themselves.
"""

from meshvpn.fuzz.target import FuzzTarget
from meshvpn.link.pt import args as a
from meshvpn.link.pt.messages import parseServerArgs


def _bridge(text):
    for line in a.parseBridgeLines(text):
        again = a.parseBridgeLine(str(line))
        if again != line:
            raise AssertionError(f"bridge line {line} reads back as {again}")
        _pack(line.address.args)


def _address(text):
    address = a.parsePTAddress(text)
    if a.parsePTAddress(str(address)) != address:
        raise AssertionError(f"{address} does not read back")
    _pack(address.args)


def _pack(args):
    try:
        user, password = a.packSocksArgs(args)
    except ValueError:
        return  # too long for the two SOCKS fields: refused, never cut
    if user is not None and a.unpackSocksArgs(user, password) != args:
        raise AssertionError(f"{args!r} packed into SOCKS fields unpacks differently")


def _socks(raw):
    cut = raw[0] if raw else 0
    a.unpackSocksArgs(raw[1 : 1 + cut], raw[1 + cut :] or b"\0")


def _serverArgs(text):
    parseServerArgs(text)


def _transportLines(text):
    a.parseTransportLines(text)


_PARSERS = (_bridge, _address, _serverArgs, _transportLines)


def _run(data):
    if not data:
        return
    which = data[0] % (len(_PARSERS) + 1)
    if which == len(_PARSERS):
        return _socks(data[1:])
    _PARSERS[which](data[1:].decode("utf-8", "replace"))


def _seeds():
    nodeId = "ab" * 32
    cert = "ssH+9rP8dG2NLDN2XuFw63hIO/9MNNinLmxQDpVa+7kTOa9/m+tGWT1SmSYpQ9uTBGa6Hw"
    return [
        b"\0" + f"Bridge obfs4 198.18.0.9:443 {nodeId} cert={cert} iat-mode=0\nobfs4 [2001:db8::9]:443 {nodeId} cert={cert} iat-mode=1".encode(),
        b"\1" + f"198.18.0.9:443 cert={cert} iat-mode=0".encode(),
        b"\2" + f"cert={cert},iat-mode=0,odd\\,key\\=x=v\\\\".encode(),
        b"\3" + b"obfs4,meek_lite exec /bin/sh -c true",
        b"\4" + bytes([20]) + b"cert=abc\\;def;iat-m" + b"ode=0",
    ]


TARGET = FuzzTarget("pt-args", "link/pt/args.py bridge lines, PT addresses, transport lines, SOCKS-packed arguments; "
                    "messages.py SMETHOD ARGS", (ValueError,), _run, _seeds)
