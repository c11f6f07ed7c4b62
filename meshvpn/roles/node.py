"""A MeshVPN node: the MultiService every role is built from.

A role (relay, client, ...) is a choice of which child services to start.
The node owns only what every role needs: its identity, its one UDP socket
(C{node.udp}, where subsystems register their datagram handlers), its
listeners and its status file.  That is its whole surface (L{INode}); the
role builds every other service, hands each its collaborators, and adds it
as a named child.  While running, the node writes C{node.json} in its data
dir (its id and bound addresses) so local tools can find it; it is removed
on stop.
"""

import json
import os

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from meshvpn.control.status import StatusWriter
from meshvpn.identity import NodeIdentity
from meshvpn.interfaces import INode
from meshvpn.observer import OneShotObserver
from meshvpn.secretfile import writeSecretFile
from meshvpn.ports import StreamListenerService, UDPPortService
from meshvpn.udpmux import DatagramMultiplexer

NODE_FILE = "node.json"


@implementer(INode)
class Node(service.MultiService):
    """
    One MeshVPN node.  C{makeService} of each role builds one of these and
    adds the role's services.
    """

    log = Logger()

    def __init__(self, reactor, role, settings, identity=None):
        super().__init__()
        self.reactor = reactor
        self.role = role
        self.settings = settings
        self.dataDir = settings["data_dir"]
        self.identity = identity or NodeIdentity.loadOrCreate(self.dataDir)
        self.udp = DatagramMultiplexer()
        host, port = settings["udp"]
        self.udpService = UDPPortService(reactor, self.udp, host, port)
        self.udpService.setName("udp")
        self.udpService.setServiceParent(self)
        # A dual-stack node's second socket (the other family), same table.
        self.udp6Service = None
        if settings.get("udp6"):
            host6, port6 = settings["udp6"]
            if (":" in host6) == (":" in host):
                raise SystemExit(f"meshvpn-{role}: config error: --udp6 must be of the other address family than --udp")
            self.udp6Service = UDPPortService(reactor, self.udp.secondSocket(), host6, port6)
            self.udp6Service.setName("udp6")
            self.udp6Service.setServiceParent(self)
        # Listening services ("stream" for links, "socks", ...): name -> service
        # with whenListening and address(); the node is ready when all are.
        self.listeners = {}
        self.status = StatusWriter(reactor, self.dataDir, self._statusInfo, history=settings.get("status_history", False))
        self.status.setName("status")
        self.status.setServiceParent(self)
        self._started = OneShotObserver()

    @property
    def whenStarted(self):
        """
        A new Deferred firing with the announced addresses once started
        (C{None} if starting failed): any number of waiters, none of which
        can change what the others get.
        """
        return self._started.whenFired()

    def _statusInfo(self):
        info = {"role": self.role, "node_id": self.identity.nodeIdHex}
        if self.udpService.port is not None:
            info.update(self.addresses())
        info["udp_counters"] = self.udp.counters()
        return info

    def listenStream(self, description, factory, endpoint=None):
        """
        Accept links on C{description}, or on C{endpoint} (a server endpoint
        a pluggable transport built from it).
        """
        self.addListener("stream", StreamListenerService(self.reactor, description, factory, endpoint))

    @property
    def streamListener(self):
        """The service accepting links (relays), or C{None}."""
        return self.listeners.get("stream")

    def addListener(self, name, listener):
        """
        A child service that listens (C{whenListening}, C{port},
        C{address()}); the node is ready once it is, and announces it as C{name}.
        """
        self.listeners[name] = listener
        listener.setName(name)
        listener.setServiceParent(self)

    def startService(self):
        if self._started.fired:  # started again after a stop
            self._started = OneShotObserver()
        super().startService()
        running = defer.Deferred()
        # node.json announces readiness, so it is written only once the
        # reactor runs (and every child's startup trigger, e.g. the SIGTERM
        # handler, has run).
        self.reactor.callWhenRunning(running.callback, None)
        waits = [running] + [listener.whenListening for listener in self.listeners.values()]
        started = defer.gatherResults(waits, consumeErrors=True).addCallback(self._announceStarted)
        started.addErrback(self._failedToStart)
        started.addCallback(self._started.fire)

    def _announceStarted(self, _):
        if not self.running:  # stopped before every listener was up: nothing to announce
            return None
        info = self.addresses()
        self.log.info(
            "meshvpn {role} started: node id {nodeId}; udp {udp}{udp6}; stream {stream}{stream6}",
            role=self.role,
            nodeId=self.identity.nodeIdHex,
            udp=info["udp"],
            udp6=" " + info["udp6"] if "udp6" in info else "",
            stream=info.get("stream", "-"),
            stream6=" " + info["stream6"] if "stream6" in info else "",
        )
        info.update(role=self.role, node_id=self.identity.nodeIdHex, pid=os.getpid())
        writeSecretFile(os.path.join(self.dataDir, NODE_FILE), json.dumps(info, indent=1).encode())
        return info

    def _failedToStart(self, failure):
        self.log.failure("meshvpn {role} failed to start", failure, role=self.role)
        if self.reactor.running:
            self.reactor.stop()

    def addresses(self):
        info = {"udp": self.udpService.address()}
        if self.udp6Service is not None and self.udp6Service.port is not None:
            info["udp6"] = self.udp6Service.address()
        for name, listener in self.listeners.items():
            if listener.port is not None:
                info[name] = listener.address()
        return info

    def stopService(self):
        try:
            os.unlink(os.path.join(self.dataDir, NODE_FILE))
        except FileNotFoundError:
            pass
        self.log.info("meshvpn {role} {nodeId} stopping", role=self.role, nodeId=self.identity.nodeIdHex)
        return super().stopService()
