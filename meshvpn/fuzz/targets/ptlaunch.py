"""Fuzz target: what a managed transport writes while it starts (link/pt/launch.py Launch, link/pt/messages.py parseLine).

The transport is a program we run but do not control (a broken or
hostile obfs4proxy build): an input is its stdout and stderr in chunks cut
where the fuzzer likes, with time passing and the process exiting at some
point, read by a real L{Launch} (client or server mode).  The launch must
never raise: a bad line fails C{ready} with L{PTProtocolError}, nothing
else, at most once; it never holds more than one line of either stream.
"""

from twisted.internet.task import Clock

from meshvpn.fuzz.target import FuzzTarget
from meshvpn.link.pt import messages
from meshvpn.link.pt.args import TransportLine
from meshvpn.link.pt.launch import MAX_STDERR_LINE, Launch, LaunchState

_LINE = TransportLine(("obfs4", "meek_lite"), "/usr/bin/obfs4proxy")


class _Process:
    """The process transport a spawned program would have; records what the launch asks of it."""

    pid = 4242

    def __init__(self):
        self.signals = []
        self.stdinClosed = False

    def closeStdin(self):
        self.stdinClosed = True

    def signalProcess(self, name):
        self.signals.append(name)


class _Exited(Exception):
    exitCode = 1
    signal = None


class _Reason:
    value = _Exited()

    def getErrorMessage(self):
        return "exited"


def _run(data):
    if not data:
        return
    clock = Clock()
    launch = Launch(clock, _LINE, {}, server=bool(data[0] & 1), timeout=15.0)
    outcome = []
    launch.ready.addCallbacks(outcome.append, lambda f: outcome.append(f.trap(messages.PTProtocolError)))
    launch._timer = clock.callLater(launch.timeout, launch._timedOut)  # what start() does before spawning
    launch.makeConnection(_Process())
    pos, ended = 1, False
    while pos + 2 <= len(data) and not ended:
        op, n = data[pos], data[pos + 1]
        chunk = data[pos + 2 : pos + 2 + n]
        pos += 2 + n
        kind = op & 3
        if kind == 0:
            launch.outReceived(chunk)
        elif kind == 1:
            launch.errReceived(chunk)
        elif kind == 2:
            clock.advance(op >> 2)
        else:
            launch.processEnded(_Reason())
            ended = True
        if len(launch._out) > messages.MAX_LINE or len(launch._err) > MAX_STDERR_LINE:
            raise AssertionError(f"the launch holds {len(launch._out)} + {len(launch._err)} bytes of a partial line")
    if not ended:
        launch.processEnded(_Reason())
    clock.advance(60)
    if len(outcome) != 1:
        raise AssertionError(f"ready fired {len(outcome)} times")
    if launch.state is not LaunchState.EXITED:
        raise AssertionError(f"the launch ended in {launch.state}")


def _script(server, *steps):
    out = bytes([server])
    for op, payload in steps:
        for i in range(0, max(len(payload), 1), 255):
            piece = payload[i : i + 255]
            out += bytes([op, len(piece)]) + piece
    return out


def _seeds():
    client = (b"VERSION 1\nLOG SEVERITY=notice MESSAGE=\"starting\"\nCMETHOD obfs4 socks5 127.0.0.1:43210\n"
              b"CMETHOD-ERROR meek_lite no front domain\nCMETHODS DONE\n")
    server = (b"VERSION 1\nSMETHOD obfs4 198.18.0.9:443 ARGS:cert=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA,"
              b"iat-mode=0\nSMETHOD meek_lite [::1]:8443\nSTATUS TRANSPORT=obfs4 CONNECT=Success\nSMETHODS DONE\n")
    return [
        _script(0, (0, client[:30]), (1, b"obfs4proxy: starting\n"), (0, client[30:]), (2 | 4, b"")),
        _script(1, (0, server), (0, b"LOG SEVERITY=info MESSAGE=\"after\"\n"), (3, b"")),
        _script(0, (0, b"VERSION-ERROR no-version\n"), (3, b"")),
        _script(0, (0, b"VERSION 1\nENV-ERROR no TOR_PT_STATE_LOCATION\n")),
    ]


TARGET = FuzzTarget("pt-launch", "link/pt/launch.py Launch + messages.py parseLine (a managed transport's stdout/stderr)",
                    (), _run, _seeds)
