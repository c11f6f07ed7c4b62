"""Fuzz target: a whole SOCKS session (client/socks.py SOCKSServerProtocol), an application's bytes and the
stream layer's answers interleaved in an order the fuzzer picks.

The input is a script of steps: the application sends a chunk, half-closes
or goes away; the stream opener answers (a stream, a refusal with an END
reason, no path, a resolve answer or failure); the stream delivers data,
ends its read side or ends; time passes past the handshake or request
timeout.  The session's state machine must never meet an event its table
does not list (our own bug, not the peer's), nothing may escape the
protocol, and what it buffers stays bounded.  The session's declared way
to reject an application is to answer and close, so no error is declared.
"""

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from meshvpn.client import socksparse as sp
from meshvpn.client.socks import _HANDSHAKE, MAX_EARLY_DATA, MAX_EARLY_OVERRUN, SOCKSServerProtocol
from meshvpn.errors import NoExitForTarget, NoPath, StreamRefused
from meshvpn.fuzz.target import FuzzTarget
from meshvpn.interfaces import IStreamOpener


class _Stream:
    """The stream the opener hands over: records what the session does to it."""

    def __init__(self):
        self.receiver = None
        self.closed = False
        self.written = 0
        self.producer = None

    def write(self, data):
        if self.closed:
            raise AssertionError("the session wrote to a closed stream")
        self.written += len(data)

    def halfClose(self):
        pass

    def close(self, reason=None):
        self.closed = True

    def setReceiver(self, receiver):
        self.receiver = receiver

    def registerProducer(self, producer, streaming):
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        self.closed = True


@implementer(IStreamOpener)
class _Opener:
    def __init__(self):
        self.pending = []

    def _later(self, what):
        d = defer.Deferred()
        self.pending.append((what, d))
        return d

    def openStream(self, host, port, isolationKey, early=None):
        return self._later("stream")

    def resolve(self, host, isolationKey):
        return self._later("resolve")

    def resolvePTR(self, address, isolationKey):
        return self._later("resolve")


def _answer(opener, stream, kind):
    """Answer the oldest request as the stream layer may: its kind of success, or one of its failures."""
    if not opener.pending:
        return
    what, d = opener.pending.pop(0)
    success = (lambda: d.callback(stream)) if what == "stream" else (lambda: d.callback(["198.18.0.80"]))
    outcomes = [
        success,
        lambda: d.errback(StreamRefused(kind % 15)),
        lambda: d.errback(NoPath("no relays")),
        lambda: d.errback(NoExitForTarget("no exit")),
        lambda: d.errback(defer.TimeoutError("the opener timed out")),
    ]
    if what == "resolve":
        outcomes.append(lambda: d.callback([]))
    outcomes[kind % len(outcomes)]()
    if isinstance(d.result, Failure):
        # the session's own callback raised: surface it (a real reactor would only log it)
        failure = d.result
        d.addErrback(lambda f: None)
        failure.raiseException()


def _run(data):
    clock = Clock()
    opener = _Opener()
    stream = _Stream()
    proto = SOCKSServerProtocol(opener, clock)
    transport = StringTransport()
    proto.makeConnection(transport)
    pos, n = 0, len(data)
    while pos < n:
        op = data[pos]
        pos += 1
        kind = op & 0x0F
        if kind <= 5:  # the application sends a chunk of up to 63 bytes
            size = min(op >> 2, n - pos)
            proto.dataReceived(data[pos : pos + size])
            pos += size
        elif kind == 6:
            _answer(opener, stream, op >> 4)
        elif kind == 7 and stream.receiver is not None:
            stream.receiver.streamDataReceived(b"x" * (op >> 4))
        elif kind == 8 and stream.receiver is not None:
            stream.receiver.streamReadEnded()
        elif kind == 9 and stream.receiver is not None:
            stream.receiver.streamEnded(op >> 4)
        elif kind == 10:
            proto.readConnectionLost()
        elif kind == 11:
            clock.advance(31 if op & 0x10 else 121)
        elif kind == 12:
            proto.connectionLost(None)
            break
        elif kind == 13:
            proto.dataReceived(b"y" * 4096)  # early data, a lot of it
        # waiting for the rest of a handshake message: never more than the biggest one;
        # early data: reading pauses at the limit; this transport ignores the
        # pause, so the session itself must refuse what overruns it
        waiting = proto.state in _HANDSHAKE and len(proto._buffer) > sp.MAX_HANDSHAKE
        if waiting or proto._early.size > MAX_EARLY_DATA + MAX_EARLY_OVERRUN:
            raise AssertionError(f"the session holds {len(proto._buffer)} + {proto._early.size} bytes in {proto.state}")
    if not transport.disconnecting:
        proto.connectionLost(None)


def _chunk(data):
    out = b""
    for i in range(0, len(data), 63):
        part = data[i : i + 63]
        out += bytes([len(part) << 2]) + part
    return out


def _seeds():
    greeting, auth = sp.encodeGreeting([sp.Method.USERNAME_PASSWORD]), sp.encodeAuth(b"user7", b"x")
    connect = sp.encodeRequest(sp.Command.CONNECT, "example.com", 443)
    return [
        # connect, early data, the stream opens, data both ways, both ends finish
        _chunk(greeting + auth + connect) + _chunk(b"GET / HTTP/1.0\r\n\r\n") + bytes([6, 0x57, 8, 10]),
        # refused by the exit's policy
        _chunk(sp.encodeGreeting([sp.Method.NO_AUTH]) + connect) + bytes([0x46]),
        # resolve at the exit
        _chunk(sp.encodeGreeting([sp.Method.NO_AUTH]) + sp.encodeRequest(sp.Command.RESOLVE, "example.com", 0))
        + bytes([0x46 + 0x30]),
        # nothing after the greeting: the handshake timeout
        _chunk(sp.encodeGreeting([sp.Method.NO_AUTH])) + bytes([0x1B]),
        # early data past the limit while connecting, then the app goes away
        _chunk(greeting + auth + connect) + bytes([13] * 20 + [12]),
    ]


TARGET = FuzzTarget("socks-session", "client/socks.py SOCKSServerProtocol: app bytes and stream events interleaved",
                    (), _run, _seeds)
