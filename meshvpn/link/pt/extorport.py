"""The Extended ORPort (Tor's ext-orport-spec): where a server transport tells us who its client is.

Without it a server transport hands every client's connection to our link
listener from 127.0.0.1, so the link manager's per-address limits would
count all of a bridge's users as one address.  With it the transport first
authenticates to us with SAFE_COOKIE (an HMAC-SHA256 challenge over a
32-byte secret in a 0600 cookie file only it and we can read), then sends
C{USERADDR} (the client's real address) and C{TRANSPORT}, and C{DONE}; we
answer C{OKAY} and from then on the connection is the link's (TLS), built
with the client's address as its source.

States (L{ExtState}): AUTH_TYPE, CLIENT_NONCE, CLIENT_HASH, COMMANDS,
OPEN, FAILED.  The preamble is bounded (commands of at most 1 KiB, at most
16 of them, all within C{timeout}); anything else closes the connection.
"""

import enum
import hashlib
import hmac
import os
import struct

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from meshvpn.hostport import HostPortError, parseIPPort
from meshvpn.secretfile import writeSecretFile

COOKIE_HEADER = b"! Extended ORPort Auth Cookie !\x0a"
SAFE_COOKIE = 1
SERVER_CONTEXT = b"ExtORPort authentication server-to-client hash"
CLIENT_CONTEXT = b"ExtORPort authentication client-to-server hash"
CMD_DONE, CMD_USERADDR, CMD_TRANSPORT = 0x0000, 0x0001, 0x0002
REPLY_OKAY, REPLY_DENY = 0x1000, 0x1001
MAX_COMMAND = 1024
MAX_COMMANDS = 16
PREAMBLE_TIMEOUT = 20.0


def writeCookie(path):
    """A fresh cookie file (0600, atomic).  @return: the 32-byte secret."""
    secret = os.urandom(32)
    writeSecretFile(path, COOKIE_HEADER + secret)
    return secret


def serverHash(secret, clientNonce, serverNonce):
    return hmac.new(secret, SERVER_CONTEXT + clientNonce + serverNonce, hashlib.sha256).digest()


def clientHash(secret, clientNonce, serverNonce):
    return hmac.new(secret, CLIENT_CONTEXT + clientNonce + serverNonce, hashlib.sha256).digest()


class ExtState(enum.Enum):
    AUTH_TYPE = "auth-type"
    CLIENT_NONCE = "client-nonce"
    CLIENT_HASH = "client-hash"
    COMMANDS = "commands"
    OPEN = "open"
    FAILED = "failed"


class ExtORProtocol(Protocol):
    """Our side of one Extended ORPort connection; then a pipe for the link protocol."""

    log = Logger()

    def __init__(self, factory):
        self.factory = factory
        self.state = ExtState.AUTH_TYPE
        self.wrapped = None
        self.userAddress = None
        self.transportName = None
        self._buf = b""
        self._commands = 0
        self._timer = None
        self._clientNonce = self._serverNonce = None

    def connectionMade(self):
        self._timer = self.factory.reactor.callLater(PREAMBLE_TIMEOUT, self._fail, "preamble timed out")
        self.transport.write(bytes([SAFE_COOKIE, 0]))

    def dataReceived(self, data):
        if self.state is ExtState.OPEN:
            self.wrapped.dataReceived(data)
            return
        if self.state is ExtState.FAILED:
            return
        self._buf += data
        while self.state not in (ExtState.OPEN, ExtState.FAILED):
            if not self._step():
                break
        if self.state is ExtState.OPEN and self._buf:
            rest, self._buf = self._buf, b""
            self.wrapped.dataReceived(rest)

    def _step(self):
        state = self.state
        if state is ExtState.AUTH_TYPE:
            if len(self._buf) < 1:
                return False
            chosen, self._buf = self._buf[0], self._buf[1:]
            if chosen != SAFE_COOKIE:
                return self._fail(f"auth type {chosen} (only SAFE_COOKIE)")
            self.state = ExtState.CLIENT_NONCE
        elif state is ExtState.CLIENT_NONCE:
            if len(self._buf) < 32:
                return False
            self._clientNonce, self._buf = self._buf[:32], self._buf[32:]
            self._serverNonce = os.urandom(32)
            secret = self.factory.secret
            self.transport.write(serverHash(secret, self._clientNonce, self._serverNonce) + self._serverNonce)
            self.state = ExtState.CLIENT_HASH
        elif state is ExtState.CLIENT_HASH:
            if len(self._buf) < 32:
                return False
            got, self._buf = self._buf[:32], self._buf[32:]
            want = clientHash(self.factory.secret, self._clientNonce, self._serverNonce)
            if not hmac.compare_digest(got, want):
                self.transport.write(b"\x00")
                return self._fail("the transport failed SAFE_COOKIE authentication")
            self.transport.write(b"\x01")
            self.state = ExtState.COMMANDS
        elif state is ExtState.COMMANDS:
            if len(self._buf) < 4:
                return False
            command, length = struct.unpack_from(">HH", self._buf)
            if length > MAX_COMMAND:
                return self._fail(f"a command of {length} bytes")
            if len(self._buf) < 4 + length:
                return False
            body, self._buf = self._buf[4:4 + length], self._buf[4 + length:]
            self._commands += 1
            if self._commands > MAX_COMMANDS:
                return self._fail("too many commands")
            if command == CMD_USERADDR:
                try:
                    self.userAddress = parseIPPort(body.decode("ascii"), allowZero=True)
                except (UnicodeDecodeError, HostPortError):
                    return self._fail("a malformed USERADDR")
            elif command == CMD_TRANSPORT:
                self.transportName = body.decode("ascii", "replace")[:40]
            elif command == CMD_DONE:
                self.transport.write(struct.pack(">HH", REPLY_OKAY, 0))
                self._open()
            # other commands: ignored, as the spec asks
        return True

    def _open(self):
        self._cancel()
        host = self.userAddress[0] if self.userAddress else None
        port = self.userAddress[1] if self.userAddress else 0
        addr = None
        if host is not None:
            addr = (IPv6Address if ":" in host else IPv4Address)("TCP", host, port)
        wrapped = self.factory.wrapped.buildProtocol(addr)
        if wrapped is None:
            self.state = ExtState.FAILED
            self.transport.loseConnection()
            return
        self.state = ExtState.OPEN
        self.factory.counters["opened"] += 1
        self.wrapped = wrapped
        wrapped.makeConnection(self.transport)

    def _fail(self, why):
        self._cancel()
        if self.state is not ExtState.FAILED:
            self.state = ExtState.FAILED
            self.factory.counters["refused"] += 1
            self.log.warn("Extended ORPort connection refused: {why}", why=why)
            self._buf = b""
            self.transport.loseConnection()
        return False

    def _cancel(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def connectionLost(self, reason):
        self._cancel()
        if self.wrapped is not None:
            self.wrapped.connectionLost(reason)


class ExtORFactory(Factory):
    """Listens for the server transport's connections; each becomes a C{wrapped} (link) connection after its preamble."""

    noisy = False

    def __init__(self, reactor, wrapped, secret):
        self.reactor = reactor
        self.wrapped = wrapped
        self.secret = secret
        self.counters = {"opened": 0, "refused": 0}

    def buildProtocol(self, addr):
        return ExtORProtocol(self)

    def doStart(self):
        self.wrapped.doStart()

    def doStop(self):
        self.wrapped.doStop()
