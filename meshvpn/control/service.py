"""The control plane as a service of the node: API and dashboard listener, ticks, cookie, log tail.

While it runs: the control cookie exists in the data dir (written fresh on
start, removed on stop, as Tor does), the API and dashboard listen on their
loopback address (the node's C{"control"} listener, so C{node.json}
announces it and the node is ready only once it listens), the model ticks
once a second (bandwidth sample, new circuits, VPN state) and the log tail
observes the node's log.  With C{--metrics-listen}, a second listener
serves C{/metrics} without authentication (Prometheus' convention).
"""

from twisted.application import service
from twisted.internet import task
from twisted.logger import Logger, globalLogPublisher
from twisted.web import resource, server

from meshvpn.control.api import ControlResource
from meshvpn.control.auth import Guard, removeCookie, writeCookie
from meshvpn.ports import StreamListenerService

TICK = 1.0


class _QuietSite(server.Site):
    """No access log: the login URL carries a token, and a log line per request is noise."""

    def log(self, request):
        pass


class ControlService(service.MultiService):
    """
    @param model: the L{NodeModel}.
    @param bus: its L{EventBus}.
    @param listen: C{(host, port)} on loopback.
    @param metrics: a L{NodeMetrics} and C{(host, port)} to serve it on, or C{None}.
    """

    log = Logger()

    def __init__(self, reactor, dataDir, model, bus, listen, metrics=None, logPublisher=globalLogPublisher):
        super().__init__()
        self.reactor = reactor
        self.dataDir = dataDir
        self.model = model
        self.bus = bus
        self.guard = Guard(reactor, "")
        self.api = ControlResource(model, bus, self.guard, reactor)
        host, port = listen
        self.listener = StreamListenerService(reactor, _endpoint(host, port), _QuietSite(self.api))
        self.metricsListener = None
        self.metrics = None
        if metrics is not None:
            self.metrics, (mhost, mport) = metrics
            root = resource.Resource()
            root.putChild(b"metrics", self.metrics.resource())
            self.metricsListener = StreamListenerService(reactor, _endpoint(mhost, mport), _QuietSite(root))
        self.logPublisher = logPublisher
        self._loop = None

    def startService(self):
        # the cookie exists before the port: whoever sees the port can authenticate at once
        self.guard.cookie = writeCookie(self.dataDir)
        self.logPublisher.addObserver(self.model.logTail)
        if self.metrics is not None:
            self.metrics.start()
        super().startService()
        self.listener.whenListening.addCallback(self._listening)
        self._loop = task.LoopingCall(self.model.tick)
        self._loop.clock = self.reactor
        self._loop.start(TICK, now=False).addErrback(lambda f: self.log.failure("control tick stopped", f))

    def _listening(self, port):
        address = port.getHost()
        self.guard.listeningOn(address.host, address.port)
        self.log.info("control API and dashboard on http://{where}/ (meshvpn dashboard prints a login link)",
                      where=sorted(self.guard.hosts)[0])
        return port

    def stopService(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        for stream in list(self.api.streams):
            stream.stop()
        self.logPublisher.removeObserver(self.model.logTail)
        removeCookie(self.dataDir)
        return super().stopService()


def _endpoint(host, port):
    if ":" in host:
        return f"tcp6:{port}:interface={host.replace(':', chr(92) + ':')}"
    return f"tcp:{port}:interface={host}"
