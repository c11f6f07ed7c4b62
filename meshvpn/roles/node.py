"""A MeshVPN node: the MultiService every role is built from.

A role (relay, client, ...) is a choice of which child services to start.
The node always owns its identity and its one UDP socket; later subsystems
register their datagram handlers on C{node.udp} and add themselves as child
services.  While running, the node writes C{node.json} in its data dir (its
id and bound addresses) so local tools can find it; it is removed on stop.
"""

import json
import os

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from meshvpn.control.status import StatusWriter
from meshvpn.identity import NodeIdentity
from meshvpn.secretfile import writeSecretFile
from meshvpn.ports import StreamListenerService, UDPPortService
from meshvpn.udpmux import DatagramMultiplexer

NODE_FILE = "node.json"


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
        self.udpService.setServiceParent(self)
        # Listening services ("stream" for links, "socks", ...): name -> service
        # with whenListening and address(); the node is ready when all are.
        self.listeners = {}
        # The ILinkManager, attached by meshvpn.link.service.attachLinks.
        self.links = None
        self.status = StatusWriter(reactor, self.dataDir, self._statusInfo, history=settings.get("status_history", False))
        self.status.setServiceParent(self)

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
        listener.setServiceParent(self)

    def startService(self):
        super().startService()
        running = defer.Deferred()
        # node.json announces readiness, so it is written only once the
        # reactor runs (and every child's startup trigger, e.g. the SIGTERM
        # handler, has run).
        self.reactor.callWhenRunning(running.callback, None)
        waits = [running] + [listener.whenListening for listener in self.listeners.values()]
        self.whenStarted = defer.gatherResults(waits, consumeErrors=True).addCallback(self._announceStarted)
        self.whenStarted.addErrback(self._failedToStart)

    def _announceStarted(self, _):
        info = self.addresses()
        self.log.info(
            "meshvpn {role} started: node id {nodeId}; udp {udp}; stream {stream}",
            role=self.role,
            nodeId=self.identity.nodeIdHex,
            udp=info["udp"],
            stream=info.get("stream", "-"),
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
