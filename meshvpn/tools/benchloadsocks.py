"""A non-blocking SOCKS5 + HTTP/1.0 fetch for the load generator: one stream, timed, checked byte for byte.

The load generator runs a thousand users in one reactor, so the blocking
L{meshvpn.tools.socksclient} will not do.  Username/password
authentication carries each user's isolation key: MeshVPN gives different
credentials different circuits, so every user has circuits of its own.
"""

import hashlib
import struct

from twisted.internet import defer, endpoints, protocol

from meshvpn.client.socksparse import Reply
from meshvpn.tools import webfixture


class FetchFailed(Exception):
    """A fetch did not return the right bytes; C{kind} is the SOCKS reply name or what went wrong."""

    def __init__(self, kind, message=""):
        super().__init__(message or kind)
        self.kind = kind


class _Fetch(protocol.Protocol):
    def __init__(self, reactor, user, host, port, path, size, timeout):
        self.reactor = reactor
        self.user = user.encode()
        self.target = host.encode(), port
        self.path = path
        self.size = size
        self.done = defer.Deferred()
        self.started = reactor.seconds()
        self.connected = None  # seconds from start to the SOCKS success reply
        self._state = "method"
        self._buf = b""
        self._digest = hashlib.sha256()
        self._header = None
        self._got = 0
        self._timer = reactor.callLater(timeout, self._timeout)

    def connectionMade(self):
        self.transport.write(b"\x05\x01\x02")

    def _fail(self, kind, message=""):
        if not self.done.called:
            self._cancelTimer()
            self.done.errback(FetchFailed(kind, message))
        self.transport.abortConnection()

    def _cancelTimer(self):
        if self._timer.active():
            self._timer.cancel()

    def _timeout(self):
        self._fail("hung" if self.connected is None or self._got == 0 else "stalled", "no answer before the deadline")

    def dataReceived(self, data):
        self._buf += data
        while self._buf and not self.done.called:
            if self._state == "method":
                if len(self._buf) < 2:
                    return
                if self._buf[1] != 0x02:
                    return self._fail("socks-method", "the SOCKS server refused username/password")
                self._buf = self._buf[2:]
                self.transport.write(bytes([1, len(self.user)]) + self.user + b"\x01x")
                self._state = "auth"
            elif self._state == "auth":
                if len(self._buf) < 2:
                    return
                self._buf = self._buf[2:]
                host, port = self.target
                self.transport.write(b"\x05\x01\x00\x03" + bytes([len(host)]) + host + struct.pack(">H", port))
                self._state = "reply"
            elif self._state == "reply":
                if len(self._buf) < 5:
                    return
                if self._buf[1] != 0:
                    try:
                        name = Reply(self._buf[1]).name
                    except ValueError:
                        name = f"reply-{self._buf[1]}"
                    return self._fail(name, f"SOCKS reply {self._buf[1]}")
                need = 4 + {1: 4, 4: 16}.get(self._buf[3], 1 + self._buf[4]) + 2
                if len(self._buf) < need:
                    return
                self._buf = self._buf[need:]
                self.connected = self.reactor.seconds() - self.started
                self.transport.write(b"GET %s HTTP/1.0\r\nHost: load\r\n\r\n" % self.path.encode())
                self._state = "header"
            elif self._state == "header":
                end = self._buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(self._buf) > 8192:
                        return self._fail("http", "no end of the HTTP header")
                    return
                self._header, self._buf = self._buf[:end], self._buf[end + 4 :]
                if not self._header.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200")):
                    return self._fail("http", self._header.split(b"\r\n")[0].decode("latin-1"))
                self._state = "body"
            else:
                self._got += len(self._buf)
                self._digest.update(self._buf)
                self._buf = b""

    def connectionLost(self, reason):
        self._cancelTimer()
        if self.done.called:
            return
        if self._state != "body":
            self.done.errback(FetchFailed("closed-" + self._state, reason.getErrorMessage()))
        elif self._got < self.size:
            # cut mid-body: a circuit or stream torn down, not corruption
            self.done.errback(FetchFailed("short-body", f"{self._got} of {self.size} bytes"))
        elif self._got != self.size or self._digest.hexdigest() != _expected(self.size):
            self.done.errback(FetchFailed("bad-bytes", f"{self._got} bytes of {self.size}, not the expected ones"))
        else:
            self.done.callback((self.connected, self.reactor.seconds() - self.started, self._got))


_DIGESTS = {}


def _expected(size):
    if size not in _DIGESTS:
        _DIGESTS[size] = webfixture.expectedDigest(size)
    return _DIGESTS[size]


async def fetch(reactor, socks, user, web, size, timeout):
    """
    GET C{/bytes/SIZE} from C{web} through the SOCKS proxy C{socks} as C{user}.

    @return: C{(secondsToConnected, secondsTotal, bytes)}.
    @raise FetchFailed: refused by SOCKS (the reply's name), wrong bytes,
        closed early, or C{hung} when nothing came back before C{timeout}.
    """
    host, port = web
    factory = protocol.Factory.forProtocol(lambda: _Fetch(reactor, user, host, port, f"/bytes/{size}", size, timeout))
    endpoint = endpoints.TCP4ClientEndpoint(reactor, socks[0], socks[1], timeout=timeout)
    try:
        proto = await endpoint.connect(factory)
    except Exception as e:
        raise FetchFailed("socks-connect", str(e)) from None
    return await proto.done
