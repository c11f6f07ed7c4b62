"""Fuzz target: the bytes a managed transport sends us over loopback (link/pt/socks.py, link/pt/extorport.py).

A client transport answers our SOCKS5 greeting, the RFC 1929 bridge
arguments and the CONNECT (L{SocksClient}); a server transport
authenticates to our Extended ORPort and names its client (USERADDR,
TRANSPORT, DONE; L{ExtORProtocol}).  The first input byte picks which; the
rest arrives in reads cut where the fuzzer likes.  For the Extended ORPort
the harness may answer the server's challenge with the right SAFE_COOKIE
hash (it knows the cookie, as the transport does), so the fuzzer reaches
the commands.  Neither may raise, hold more than its bounds, or hand the
link anything before its preamble is over.
"""

from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from meshvpn.errors import LinkError
from meshvpn.fuzz.target import FuzzTarget
from meshvpn.link.pt import extorport
from meshvpn.link.pt.socks import SocksClient

_SECRET = bytes(range(32))


class _Link(Protocol):
    """Stands for the link protocol: counts what reaches it."""

    def __init__(self):
        self.received = b""

    def dataReceived(self, data):
        self.received += data


def _reads(data):
    pos = 0
    while pos < len(data):
        n = data[pos]
        yield data[pos + 1 : pos + 1 + n]
        pos += 1 + n


def _socks(data, withArgs):
    done = defer.Deferred()
    failures = []
    done.addErrback(lambda f: failures.append(f.trap(LinkError)))
    args = (("cert", "x" * 300), ("iat-mode", "0")) if withArgs else ()
    client = SocksClient("transport obfs4", "198.18.0.9", 443, args, Factory.forProtocol(_Link), done)
    transport = StringTransport()
    client.makeConnection(transport)
    for chunk in _reads(data):
        client.dataReceived(chunk)
        if len(client._buf) > 4 + 1 + 255 + 2 + 255 and client.wrapped is None:
            raise AssertionError(f"the SOCKS client holds {len(client._buf)} bytes")
    client.connectionLost(None)
    if not done.called:
        raise AssertionError("the connection ended and nobody was told")


def _extor(data, answer):
    clock = Clock()
    links = []

    class Links(Factory):
        def buildProtocol(self, addr):
            links.append(_Link())
            return links[-1]

    factory = extorport.ExtORFactory(clock, Links(), _SECRET)
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    for chunk in _reads(data):
        if answer and proto.state is extorport.ExtState.CLIENT_HASH and chunk[:1] == b"\x01":
            serverNonce = transport.value()[-32:]
            chunk = extorport.clientHash(_SECRET, proto._clientNonce, serverNonce) + chunk[1:]
        before = proto.state
        proto.dataReceived(chunk)
        if links and before is not extorport.ExtState.OPEN and proto.state is not extorport.ExtState.OPEN:
            raise AssertionError("the link got a connection from a preamble that did not finish")
        if len(proto._buf) > 4 + extorport.MAX_COMMAND + 256:
            raise AssertionError(f"the Extended ORPort holds {len(proto._buf)} bytes")
    clock.advance(extorport.PREAMBLE_TIMEOUT + 1)
    if proto.state not in (extorport.ExtState.OPEN, extorport.ExtState.FAILED):
        raise AssertionError(f"the preamble timer left the connection in {proto.state}")
    proto.connectionLost(None)


def _run(data):
    if not data:
        return
    kind = data[0] % 4
    if kind < 2:
        _socks(data[1:], withArgs=kind == 1)
    else:
        _extor(data[1:], answer=kind == 3)


def _framed(*reads):
    return b"".join(bytes([len(r)]) + r for r in reads)


def _seeds():
    import struct

    noAuth = _framed(b"\x05\x00", b"\x05\x00\x00\x01" + bytes([198, 18, 0, 9]) + b"\x01\xbb" + b"TLS...")
    withAuth = _framed(b"\x05\x02", b"\x01\x00", b"\x05\x00\x00\x04" + bytes(16) + b"\x01\xbb")
    refused = _framed(b"\x05\x00", b"\x05\x05\x00\x01" + bytes(6))
    commands = (struct.pack(">HH", extorport.CMD_USERADDR, 15) + b"198.18.0.7:5555"
                + struct.pack(">HH", extorport.CMD_TRANSPORT, 5) + b"obfs4" + struct.pack(">HH", extorport.CMD_DONE, 0))
    extor = _framed(b"\x01" + bytes(32), b"\x01", commands, b"\x16\x03\x01link bytes")  # the second read: "answer the challenge"
    return [b"\0" + noAuth, b"\1" + withAuth, b"\0" + refused, b"\3" + extor, b"\2" + extor]


TARGET = FuzzTarget("pt-local", "link/pt/socks.py SocksClient (a client transport's SOCKS replies), "
                    "link/pt/extorport.py ExtORProtocol (a server transport's Extended ORPort preamble)",
                    (), _run, _seeds)
