"""SIGTERM means "stop cleanly", and a clean stop exits 0.

twistd re-raises the terminating signal after shutdown so the process dies
"by SIGTERM" (exit 143).  For a node, SIGTERM is the normal way to stop it
(systemd, `meshvpn testnet`, operators), and an orderly shutdown is success,
so while this service runs SIGTERM just stops the reactor.
"""

import signal

from twisted.application import service


class SignalWhileRunning(service.Service):
    """
    A service that handles C{SIGNAL} while it runs (installed after the
    reactor's own handlers, the previous handler put back on stop) and calls
    L{onSignal} in the reactor thread.
    """

    SIGNAL = None

    def __init__(self, reactor):
        self._reactor = reactor
        self._previous = None

    def startService(self):
        super().startService()
        if self._reactor.running:
            self._install()
        else:
            # The reactor installs its own handlers while starting up; ours
            # must come after them.
            self._reactor.addSystemEventTrigger("after", "startup", self._install)

    def _install(self):
        if self.running:
            self._previous = signal.signal(self.SIGNAL, self._caught)

    def _caught(self, signum, frame):
        self._reactor.callFromThread(self.onSignal)

    def onSignal(self):
        raise NotImplementedError

    def stopService(self):
        super().stopService()
        if self._previous is not None:
            signal.signal(self.SIGNAL, self._previous)
            self._previous = None


class CleanStopOnSIGTERM(SignalWhileRunning):
    SIGNAL = signal.SIGTERM

    def onSignal(self):
        if self._reactor.running:
            self._reactor.stop()
