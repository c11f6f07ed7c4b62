"""A MeshVPN node: the MultiService every role is built from.

A role (relay, client, ...) is a choice of which child services to start.
The node always owns its identity and its one UDP socket; later subsystems
register their datagram handlers on C{node.udp} and add themselves as child
services.  While running, the node writes C{node.json} in its data dir (its
id and bound addresses) so local tools can find it; it is removed on stop.
"""

import json
import os
import socket
import sys

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.logger import Logger

from meshvpn.config import formatHostPort
from meshvpn.control.status import StatusWriter
from meshvpn.identity import NodeIdentity
from meshvpn.secretfile import writeSecretFile
from meshvpn.udpmux import DatagramMultiplexer

NODE_FILE = "node.json"


class _BoundPortService(service.Service):
    """A service that holds one listening port (C{self.port}) while it runs."""

    port = None

    def stopService(self):
        super().stopService()
        port, self.port = self.port, None
        if port is not None:
            return defer.maybeDeferred(port.stopListening)

    def address(self):
        host = self.port.getHost()
        return formatHostPort(host.host, host.port)


# A directory sampling asks ~350 DHT questions at once and the answers of a
# nearby network arrive within milliseconds, faster than one reactor turn
# reads them: the default socket buffer (~200 KB of kernel accounting, a few
# hundred datagrams) overflowed, and each lost answer cost a 2 s lookup timeout.
UDP_RECEIVE_BUFFER = 4 << 20
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33 if sys.platform.startswith("linux") else None)


def growReceiveBuffer(sock, size=UDP_RECEIVE_BUFFER):
    """Ask for a C{size}-byte receive buffer (past C{net.core.rmem_max} when privileged)."""
    if sock is None:
        return
    for option in (_SO_RCVBUFFORCE, socket.SO_RCVBUF):
        if option is None:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, size)
            return
        except OSError:
            continue


class UDPPortService(_BoundPortService):
    """Binds the node's one UDP socket to its multiplexer for the service's lifetime."""

    def __init__(self, reactor, mux, host, port):
        self._reactor = reactor
        self.mux = mux
        self._host, self._port = host, port

    def privilegedStartService(self):
        # Bound before privileges are dropped, so low ports work under twistd -u.
        self.port = self._reactor.listenUDP(self._port, self.mux, interface=self._host)
        growReceiveBuffer(getattr(self.port, "socket", None))
        super().privilegedStartService()

    def startService(self):
        if self.port is None:
            self.privilegedStartService()
        super().startService()


class StreamListenerService(_BoundPortService):
    """Listens on a stream server endpoint; C{whenListening} fires with the port."""

    def __init__(self, reactor, description, factory, endpoint=None):
        self._endpoint = endpoint or endpoints.serverFromString(reactor, description)
        self.description = description
        self.factory = factory
        self.whenListening = None

    def startService(self):
        super().startService()

        def listening(port):
            self.port = port
            return port

        self.whenListening = self._endpoint.listen(self.factory).addCallback(listening)


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
        self.status = StatusWriter(reactor, self.dataDir, self._statusInfo)
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
