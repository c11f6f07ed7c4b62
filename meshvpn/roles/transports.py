"""Managed pluggable transports and bridges in a role: settings, the transports, the bridge's own line.

Configured like torrc: C{transport = "obfs4 exec /usr/bin/obfs4proxy"}
(repeatable; a TOML list in a config file) names a program and the
transports it provides.  A relay listens on one of them with
C{--link-transport obfs4}; a client dials through them to the bridges given
with C{--bridge} (repeatable), which then are its only first hops and its
only way to the directory.
"""

import os

from twisted.application import service
from twisted.logger import Logger

from meshvpn.config import Setting, parseBool
from meshvpn.hostport import formatHostPort
from meshvpn.errors import LinkError
from meshvpn.link.pt.args import parseBridgeLines, parseTransportLines
from meshvpn.link.transports import availableTransports
from meshvpn.secretfile import writeSecretFile

BRIDGE_LINE_FILE = "bridge_line.txt"
PT_STATE_DIR = "pt_state"


def transportSetting():
    return Setting(
        "transport", parseTransportLines, [],
        'A managed pluggable transport, as torrc\'s ClientTransportPlugin/ServerTransportPlugin: '
        '"obfs4 exec /usr/bin/obfs4proxy" (repeatable).',
    )


def bridgeSettings():
    return [
        transportSetting(),
        Setting("bridge", parseBridgeLines, [],
                'A bridge to enter the network through: "obfs4 HOST:PORT NODEID cert=... iat-mode=0" (repeatable). '
                "With bridges the client uses them as its only first hops and reads the directory through them "
                "(no DHT traffic of its own)."),
    ]


def bridgeModeSetting():
    return Setting(
        "bridge-mode", parseBool, False,
        "Run as a bridge: stay out of the public directory and write this relay's bridge line to "
        f"{BRIDGE_LINE_FILE} in --data-dir (give it only to the users it is meant for).",
        flag=True,
    )


def appendOption(options, name, value):
    """A repeatable option: each use adds a line."""
    options[name] = (options[name] + "\n" if options[name] else "") + value


def _stateDir(node):
    return os.path.join(node.dataDir, PT_STATE_DIR)


def clientTransports(node, settings):
    """
    @return: C{{name: IPluggableTransport}}: the plugins found with
        getPlugins plus each configured transport's client side, its
        program supervised by the C{"transports"} service (started before
        the links that use it, stopped after them).
    """
    from meshvpn.link.pt.transport import ManagedClientTransport, clientSupervisor
    from meshvpn.roles.common import addService

    found = dict(availableTransports())
    lines = settings.get("transport") or []
    if not lines:
        return found
    parent = addService(node, "transports", service.MultiService())
    for line in lines:
        supervisor = clientSupervisor(node.reactor, line, _stateDir(node))
        addService(parent, ",".join(line.names), supervisor)
        node.status.addSource(f"transport {','.join(line.names)}", supervisor)  # state, launches, last error
        for name in line.names:
            found[name] = ManagedClientTransport(name, supervisor)
    return found


def serverTransports(node, settings):
    """@return: C{{name: IPluggableTransport}}: the plugins plus each configured transport's server side."""
    from meshvpn.link.pt.transport import ManagedServerTransport

    found = dict(availableTransports())
    for line in settings.get("transport") or []:
        for name in line.names:
            found[name] = ManagedServerTransport(name, line, _stateDir(node))
    return found


def checkBridges(settings, transports):
    """@raise SystemExit: a bridge names a transport no program or plugin provides."""
    for bridge in settings.get("bridge") or []:
        transport = transports.get(bridge.transport)
        if transport is None or transport.kind != "stream":
            raise SystemExit(f"meshvpn-client: config error: --bridge uses transport {bridge.transport!r}; "
                             f'add --transport "{bridge.transport} exec /path/to/program"')


def bridgeLine(node, transportName, transport):
    """
    This relay's bridge line, Tor's shape: C{TRANSPORT HOST:PORT NODEID k=v ...}.
    @raise LinkError: the listener is not up yet.
    """
    listener = node.streamListener
    if listener is None or listener.port is None:
        raise LinkError("not listening yet")
    address = transport.describeAddress(listener.port)
    return f"{transportName} {address.split(' ', 1)[0]} {node.identity.nodeIdHex}" + (
        " " + address.split(" ", 1)[1] if " " in address else "")


def announceBridgeLine(node, transportName, transport, log=Logger(namespace="meshvpn.bridge")):
    """Once the node listens: write and log the bridge line (the operator hands it out, nobody else learns it)."""

    def write(_):
        try:
            line = bridgeLine(node, transportName, transport)
        except LinkError as e:
            log.error("no bridge line: {e}", e=e)
            return _
        writeSecretFile(os.path.join(node.dataDir, BRIDGE_LINE_FILE), (line + "\n").encode())
        host = line.split()[1]
        if host.startswith(("0.0.0.0:", "[::]:")):
            log.warn("bridge listens on every address: replace {host} in the bridge line with the public IP",
                     host=host)
        log.info("bridge line (give it only to your users): {line}", line=line)
        return _

    node.whenStarted.addCallback(write)


class UnreachableHint(service.Service):
    """
    A client without bridges whose DHT has not joined C{after} seconds
    after start says so once, naming the bootstrap addresses it got no UDP
    answer from and what to do behind a censor (the DHT's own retries say
    only that nobody answered).  A child of the DHT service: stopped with it.
    """

    log = Logger()

    def __init__(self, reactor, dhtService, bootstrap, after=20.0):
        self.reactor = reactor
        self.dht = dhtService
        self.bootstrap = bootstrap
        self.after = after
        self._call = None

    def startService(self):
        super().startService()
        if self.bootstrap:
            self._call = self.reactor.callLater(self.after, self._check)
            self.dht.joined.addBoth(lambda r: (self._cancel(), r)[1])

    def stopService(self):
        super().stopService()
        self._cancel()

    def _cancel(self):
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _check(self):
        self._call = None
        where = ", ".join(formatHostPort(h, p) for h, p in self.bootstrap)
        self.log.error(
            "cannot reach the network: no DHT bootstrap node answered over UDP ({where}) in {s:.0f}s. "
            "UDP, or these addresses, may be blocked (a censor?); if so use a bridge: "
            "--transport 'obfs4 exec /usr/bin/obfs4proxy' --bridge 'obfs4 HOST:PORT NODEID cert=... iat-mode=0' "
            "(doc/censorship.md)", where=where, s=self.after)
