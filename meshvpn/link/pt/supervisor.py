"""Keeps a managed transport running for as long as the node runs.

A L{TransportSupervisor} is a service: started with the node, it launches
the program (L{meshvpn.link.pt.launch.Launch}); when the program exits or
a launch fails it launches it again after a delay that doubles from
C{backoff[0]} to C{backoff[1]} seconds (reset once a run has lasted
C{stableAfter}); stopped with the node, it stops the program and starts no
other.  Whoever needs the methods asks L{whenReady}: answered at once while
a launch is up, else at the next launch, or failed with that launch's
error so a user waiting on a connection sees why the transport is down.
"""

import os

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from meshvpn.interfaces import IStatusSource

from meshvpn.link.pt.launch import LAUNCH_TIMEOUT, Launch, LaunchState
from meshvpn.link.pt.messages import PTProtocolError


@implementer(IStatusSource)
class TransportSupervisor(service.Service):
    """
    @param envFor: called before each launch, returns the process environment.
    @param onReady: called with the methods dict after each successful launch.
    """

    log = Logger()

    def __init__(self, reactor, line, stateDir, envFor, server, onReady=None, timeout=LAUNCH_TIMEOUT,
                 backoff=(1.0, 60.0), stableAfter=60.0):
        self.reactor = reactor
        self.line = line
        self.stateDir = stateDir
        self.envFor = envFor
        self.server = server
        self.onReady = onReady
        self.timeout = timeout
        self.backoff = backoff
        self.stableAfter = stableAfter
        self.current = None
        self.methods = None
        self.lastError = None
        self.launches = 0
        self.failures = 0
        self._waiters = []
        self._restart = None
        self._upSince = None

    @property
    def label(self):
        return ",".join(self.line.names)

    def startService(self):
        super().startService()
        os.makedirs(self.stateDir, mode=0o700, exist_ok=True)
        os.chmod(self.stateDir, 0o700)
        self._launch()

    def stopService(self):
        super().stopService()
        if self._restart is not None and self._restart.active():
            self._restart.cancel()
        self._restart = None
        self.methods = None
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(PTProtocolError(f"managed transport {self.label} stopped"))
        if self.current is not None:
            return self.current.stop()
        return None

    def whenReady(self):
        """@return: a Deferred firing with C{{name: method}}, or failing with why the transport is down."""
        if self.methods is not None:
            return defer.succeed(self.methods)
        if not self.running:
            return defer.fail(PTProtocolError(f"managed transport {self.label} is not running"))
        d = defer.Deferred()
        self._waiters.append(d)
        return d

    def status(self):
        state = self.current.state.value if self.current is not None else "stopped"
        return {"state": state, "launches": self.launches, "pid": getattr(self.current, "pid", None),
                "last_error": str(self.lastError) if self.lastError else None}

    # ---- launching

    def _launch(self):
        self._restart = None
        if not self.running:
            return
        self.launches += 1
        launch = Launch(self.reactor, self.line, self.envFor(), self.server, self.timeout, self.label)
        self.current = launch
        launch.exited.addCallback(self._exited, launch)
        launch.start().addCallbacks(self._ready, self._failed, callbackArgs=(launch,), errbackArgs=(launch,))

    def _ready(self, methods, launch):
        if launch is not self.current or not self.running:
            return
        self.methods = methods
        self.lastError = None
        self._upSince = self.reactor.seconds()
        self.log.info("transport {label} up (pid {pid}): {methods}", label=self.label, pid=launch.pid,
                      methods=", ".join(f"{n} at {mm.host}:{mm.port}" for n, mm in methods.items()))
        if self.onReady is not None:
            self.onReady(methods)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(methods)

    def _failed(self, failure, launch):
        failure.trap(PTProtocolError)
        self.lastError = failure.value
        self.log.error("{error}", error=failure.value)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(failure.value)

    def _exited(self, reason, launch):
        if launch is not self.current:
            return
        wasUp = self._upSince is not None
        self.methods = None
        if not self.running:
            return
        if wasUp and self.reactor.seconds() - self._upSince >= self.stableAfter:
            self.failures = 0
        self._upSince = None
        delay = min(self.backoff[0] * 2 ** self.failures, self.backoff[1])
        self.failures += 1
        if wasUp:
            self.log.warn("transport {label} exited ({reason}); restarting in {delay:g}s", label=self.label,
                          reason=reason, delay=delay)
        else:
            self.log.warn("transport {label}: launching again in {delay:g}s", label=self.label, delay=delay)
        self._restart = self.reactor.callLater(delay, self._launch)
