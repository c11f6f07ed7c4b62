"""The node tells systemd when it is ready, alive and stopping (``Type=notify`` units).

C{READY=1} goes out when the node has announced itself (every listener
bound, C{node.json} written), so C{systemctl start} returns when the node
really serves and units ordered C{After=} it start against a working node.
With C{WatchdogSec=} set, C{WATCHDOG=1} is sent from the reactor at half
the interval: a reactor stuck in a loop stops sending and systemd restarts
the node.  Not under systemd, nothing is sent.
"""

from twisted.application import service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from meshvpn import sdnotify


class SystemdNotifier(service.Service):
    log = Logger()

    def __init__(self, reactor, node, environ=None, notify=sdnotify.notify):
        self._reactor = reactor
        self._node = node
        self._environ = environ
        self._notify = notify
        self._watchdog = None

    def send(self, **fields):
        return self._notify(self._environ, **fields)

    def startService(self):
        super().startService()
        self._node.whenStarted.addCallback(self._ready)
        interval = sdnotify.watchdogInterval(self._environ)
        if interval:
            self._watchdog = LoopingCall(self.send, WATCHDOG=1)
            self._watchdog.clock = self._reactor
            self._watchdog.start(interval, now=True)

    def _ready(self, info):
        if info is None or not self.running:
            return
        where = ", ".join(f"{name} {address}" for name, address in sorted(info.items())
                          if name in ("udp", "stream", "socks", "control"))
        self.send(READY=1, STATUS=f"{self._node.role} up: {where}")

    def stopService(self):
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()
        self.send(STOPPING=1, STATUS="stopping")
        return super().stopService()
