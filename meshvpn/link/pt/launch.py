"""One run of a managed transport: spawn it with the pt-spec environment and read its launch lines.

States (L{LaunchState}): STARTING (no VERSION yet), METHODS (VERSION 1
seen, methods arriving), READY (the DONE line came; later stdout lines are
only logged), FAILED, EXITED.  A launch that does not reach READY within
its timeout, writes a malformed line, reports a version, environment or
method error for every transport asked for, or exits early fails with one
L{PTProtocolError} that says which, with the last line the program wrote
on stderr when there is one.  The process is then stopped: stdin closed
(C{TOR_PT_EXIT_ON_STDIN_CLOSE=1}), SIGTERM after a grace period, SIGKILL
after another.

Its stderr goes to our log line by line (cut to a bounded length); nothing
it writes is kept beyond one partial line.
"""

import enum
import os

from twisted.internet import defer, error
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger

from meshvpn.hostport import formatHostPort
from meshvpn.link.pt import messages as m
from meshvpn.link.pt.messages import PTProtocolError

LAUNCH_TIMEOUT = 15.0
STOP_GRACE = 3.0
MAX_STDERR_LINE = 300
ENV_PASSED = ("PATH", "HOME", "LANG", "TMPDIR")  # Tor passes little of its own environment too


class LaunchState(enum.Enum):
    STARTING = "starting"
    METHODS = "methods"
    READY = "ready"
    FAILED = "failed"
    EXITED = "exited"


def ptEnvironment(names, stateDir, server=None, extended=None):
    """
    The environment of a managed transport (pt-spec "Pluggable Transport Configuration Environment Variables").

    @param server: C{None} for a client; else C{(bindHost, bindPort, orHost, orPort)}:
        where each transport listens for the censored world and where it hands
        the unwrapped bytes (our link listener on loopback).
    @param extended: C{None}, or C{(host, port, cookiePath)} of our Extended
        ORPort (L{meshvpn.link.pt.extorport}), preferred by the transport.
    """
    env = {k: os.environ[k] for k in ENV_PASSED if k in os.environ}
    env.update({
        "TOR_PT_MANAGED_TRANSPORT_VER": "1",
        "TOR_PT_STATE_LOCATION": stateDir,
        "TOR_PT_EXIT_ON_STDIN_CLOSE": "1",
    })
    if server is None:
        env["TOR_PT_CLIENT_TRANSPORTS"] = ",".join(names)
    else:
        bindHost, bindPort, orHost, orPort = server
        env["TOR_PT_SERVER_TRANSPORTS"] = ",".join(names)
        env["TOR_PT_SERVER_BINDADDR"] = ",".join(f"{n}-{formatHostPort(bindHost, bindPort)}" for n in names)
        env["TOR_PT_ORPORT"] = formatHostPort(orHost, orPort)
        if extended is not None:
            extHost, extPort, cookie = extended
            env["TOR_PT_EXTENDED_SERVER_PORT"] = formatHostPort(extHost, extPort)
            env["TOR_PT_AUTH_COOKIE_FILE"] = cookie
    return env


class Launch(ProcessProtocol):
    """
    @ivar methods: C{{name: ClientMethod or ServerMethod}} once READY.
    @ivar ready: fires with C{methods}, or fails with L{PTProtocolError}.
    @ivar exited: fires with the exit reason once the process is gone.
    """

    log = Logger()

    def __init__(self, reactor, line, env, server, timeout=LAUNCH_TIMEOUT, label=None):
        self.reactor = reactor
        self.line = line
        self.env = env
        self.server = server
        self.timeout = timeout
        self.label = label or ",".join(line.names)
        self.state = LaunchState.STARTING
        self.methods = {}
        self.methodErrors = {}
        self.ready = defer.Deferred()
        self.exited = defer.Deferred()
        self._out = b""
        self._err = b""
        self._lastStderr = ""
        self._timer = None
        self._stopTimers = []
        self.pid = None

    # ---- lifetime

    def start(self):
        """Spawn the program.  @return: L{ready}."""
        self._timer = self.reactor.callLater(self.timeout, self._timedOut)
        try:
            self.reactor.spawnProcess(self, self.line.path, [self.line.path, *self.line.argv], env=self.env)
        except OSError as e:
            self._fail(f"cannot run {self.line.path}: {e.strerror or e}")
        return self.ready

    def stop(self):
        """Close stdin, then SIGTERM and SIGKILL if it lingers.  @return: L{exited}'s result, once gone."""
        if self.state is not LaunchState.EXITED and self.transport is not None:
            try:
                self.transport.closeStdin()
            except Exception:
                pass
            self._stopTimers.append(self.reactor.callLater(STOP_GRACE, self._signal, "TERM"))
            self._stopTimers.append(self.reactor.callLater(2 * STOP_GRACE, self._signal, "KILL"))
        waiting = defer.Deferred()
        self.exited.addBoth(lambda r: (waiting.callback(None), r)[1])
        return waiting

    def _signal(self, name):
        try:
            self.transport.signalProcess(name)
        except (error.ProcessExitedAlready, AttributeError, OSError):
            pass

    # ---- ProcessProtocol

    def connectionMade(self):
        self.pid = self.transport.pid

    def outReceived(self, data):
        self._out += data
        while b"\n" in self._out:
            raw, self._out = self._out.split(b"\n", 1)
            self._line(raw.rstrip(b"\r"))
            if self.state in (LaunchState.FAILED, LaunchState.EXITED):
                self._out = b""
                return
        if len(self._out) > m.MAX_LINE:
            self._out = b""
            self._protocolError(PTProtocolError(f"a stdout line longer than {m.MAX_LINE} bytes"))

    def errReceived(self, data):
        self._err += data
        lines = self._err.split(b"\n")
        self._err = lines.pop()
        if len(self._err) > MAX_STDERR_LINE:
            lines.append(self._err)
            self._err = b""
        for raw in lines:
            text = raw.decode("utf-8", "replace").strip()[:MAX_STDERR_LINE]
            if text:
                self._lastStderr = text
                self.log.warn("transport {label} (stderr): {text}", label=self.label, text=text)

    def processEnded(self, reason):
        self._cancelTimer()
        for t in self._stopTimers:
            if t.active():
                t.cancel()
        if self._err:
            self.errReceived(b"\n")
        was = self.state
        self.state = LaunchState.EXITED
        if was in (LaunchState.STARTING, LaunchState.METHODS):
            code = getattr(reason.value, "exitCode", None)
            sig = getattr(reason.value, "signal", None)
            how = f"was killed by signal {sig}" if sig else f"exited with code {code}"
            self._failReady(f"{how} before {self._doneLine()}")
        self.exited.callback(reason.value)

    # ---- the launch protocol

    def _doneLine(self):
        return "SMETHODS DONE" if self.server else "CMETHODS DONE"

    def _line(self, raw):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return self._protocolError(PTProtocolError("a stdout line that is not UTF-8"))
        if self.state is LaunchState.READY:
            return self._afterReady(text)
        if self.state in (LaunchState.FAILED, LaunchState.EXITED):
            return  # the launch is over and its answer given; the process is being stopped
        try:
            msg = m.parseLine(text)
        except PTProtocolError as e:
            return self._protocolError(e)
        self._handle(msg)

    def _afterReady(self, text):
        try:
            msg = m.parseLine(text)
        except PTProtocolError as e:
            self.log.warn("transport {label}: ignoring a bad line after launch: {e}", label=self.label, e=e)
            return
        if isinstance(msg, m.Log):
            self.log.info("transport {label}: {kw} {text}", label=self.label, kw=msg.keyword, text=msg.text[:MAX_STDERR_LINE])

    def _handle(self, msg):
        state = self.state
        if isinstance(msg, m.VersionError):
            return self._fail(f"supports no pt-spec version we speak (we offer 1): {msg.message[:200]}")
        if isinstance(msg, m.EnvError):
            return self._fail(f"rejected its environment: {msg.message[:200]}")
        if isinstance(msg, m.Version):
            if state is not LaunchState.STARTING:
                return self._protocolError(PTProtocolError("a second VERSION line"))
            if msg.version != "1":
                return self._protocolError(PTProtocolError(f"chose version {msg.version[:20]!r}; we offered 1"))
            self.state = LaunchState.METHODS
            return
        if isinstance(msg, (m.Log, m.Unknown)):
            if isinstance(msg, m.Log):
                self._afterReady(f"{msg.keyword} {msg.text}")
            else:
                self.log.debug("transport {label}: ignoring unknown keyword {kw!r}", label=self.label, kw=msg.keyword)
            return
        if state is LaunchState.STARTING:
            return self._protocolError(PTProtocolError(f"{type(msg).__name__} line before VERSION"))
        wanted = m.ServerMethod if self.server else m.ClientMethod
        if isinstance(msg, (m.ClientMethod, m.ServerMethod)):
            if not isinstance(msg, wanted):
                kind = "SMETHOD" if self.server else "CMETHOD"
                return self._protocolError(PTProtocolError(f"answered a {kind} launch with the other kind of method"))
            if msg.name not in self.line.names:
                return self._protocolError(PTProtocolError(f"offered transport {msg.name!r}, which we did not ask for"))
            if isinstance(msg, m.ClientMethod) and msg.protocol != "socks5":
                return self._protocolError(PTProtocolError(f"{msg.name}: only socks5 client methods are supported"))
            self.methods[msg.name] = msg
            return
        if isinstance(msg, m.MethodError):
            if msg.server != self.server:
                return self._protocolError(PTProtocolError("a method error of the other kind"))
            self.methodErrors[msg.name] = msg.message[:200]
            self.log.warn("transport {name} failed to start: {msg}", name=msg.name, msg=msg.message[:200])
            return
        if isinstance(msg, m.MethodsDone):
            if msg.server != self.server:
                return self._protocolError(PTProtocolError(f"ended with the wrong DONE line (expected {self._doneLine()})"))
            missing = [n for n in self.line.names if n not in self.methods]
            if not self.methods:
                why = "; ".join(f"{n}: {self.methodErrors.get(n, 'not offered')}" for n in missing)
                return self._fail(f"started none of the transports asked for ({why})")
            for n in missing:
                self.log.warn("transport {name} was not started: {why}", name=n, why=self.methodErrors.get(n, "not offered"))
            self.state = LaunchState.READY
            self._cancelTimer()
            self.ready.callback(dict(self.methods))
            return
        return self._protocolError(PTProtocolError(f"unexpected {type(msg).__name__} line"))

    def _protocolError(self, e):
        self._fail(f"broke the managed-transport protocol: {e}")

    def _timedOut(self):
        self._timer = None
        self._fail(f"did not finish launching ({self._doneLine()}) within {self.timeout:g}s")

    def _fail(self, why):
        if self.state in (LaunchState.READY, LaunchState.FAILED, LaunchState.EXITED):
            return
        self.state = LaunchState.FAILED
        self._failReady(why)
        if self.transport is not None:
            self.stop()

    def _failReady(self, why):
        self._cancelTimer()
        if self.ready.called:
            return
        tail = f" (its last stderr line: {self._lastStderr!r})" if self._lastStderr else ""
        self.ready.errback(PTProtocolError(f"managed transport {self.label} ({self.line.path}) {why}{tail}"))

    def _cancelTimer(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
