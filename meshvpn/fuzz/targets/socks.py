"""Fuzz target: SOCKS5 (client/socksparse.py) as the client's SOCKS port reads it, the reply a SOCKS client reads."""

from meshvpn.client import socksparse as sp
from meshvpn.fuzz.target import FuzzTarget

_STEPS = [sp.parseGreeting, sp.parseAuth, sp.parseRequest]


def _run(data):
    if data[:1] == b"R":
        sp.parseReply(data[1:])
        return
    # one connection: greeting, optional auth, request, read in order as a session does
    rest = data
    for step in _STEPS:
        got = step(rest)
        if got is None:
            return
        _, used = got
        if not 0 < used <= len(rest):
            raise AssertionError(f"{step.__name__} consumed {used} of {len(rest)} bytes")
        rest = rest[used:]


def _seeds():
    request = sp.encodeRequest(sp.Command.CONNECT, "example.com", 443)
    return [
        sp.encodeGreeting([sp.Method.NO_AUTH]) + sp.encodeAuth(b"u", b"p") + request,
        sp.encodeGreeting([sp.Method.NO_AUTH, sp.Method.USERNAME_PASSWORD]) + sp.encodeAuth(b"isolation-1", b"x")
        + sp.encodeRequest(sp.Command.CONNECT, "2001:db8::1", 80),
        sp.encodeGreeting([sp.Method.NO_AUTH]) + sp.encodeAuth(b"a", b"b") + sp.encodeRequest(0xF0, "example.org", 0),
        b"R" + sp.encodeReply(sp.Reply.SUCCEEDED, "198.18.0.80", 443),
    ]


TARGET = FuzzTarget("socks", "client/socksparse.py greeting/auth/request, and replies (the SOCKS port)",
                    (sp.SocksError,), _run, _seeds)
