"""The control plane of a role: one call that hands the control API its collaborators.

Each role's C{makeService} ends with one L{addControl} call naming the
services it built; nothing is looked up on the node.  This is also where
the run-time settings are listed (which setting a running node can
change, and how), since only the role knows which service reads which
setting.
"""

from meshvpn.control.connectivity import ConnectivityCheck
from meshvpn.control.events import EventBus
from meshvpn.control.model import NodeModel, Parts
from meshvpn.control.runtime import RuntimeSettings, Tunable
from meshvpn.control.service import ControlService
from meshvpn.control.steering import RelaySteering, steeringPath


def addControl(node, options, *, links=None, dht=None, finder=None, circuits=None, onion=None, tun=None,
               exitParts=None, stun=None, weights=None):
    """
    The node's C{"control"} service (and its C{"control"} and, with
    C{--metrics-listen}, C{"metrics"} listeners).

    @param options: the role's options (C{schema} and parsed C{settings}).
    @param stun: the node's L{IStunEndpoint}, for the NAT check (C{None}: no check).
    @return: the L{ControlService}.
    """
    settings = options.settings
    bus = EventBus(node.reactor)
    steering = None
    if circuits is not None:
        steering = RelaySteering(steeringPath(node.dataDir))
        circuits.relayFilter = steering
    parts = Parts(dht=dht, finder=finder, links=links, circuits=circuits, onion=onion, tun=tun, exit=exitParts,
                  steering=steering, weights=weights)
    model = NodeModel(node, bus, parts, history=settings.get("status_history", False))
    parts.runtime = RuntimeSettings(options.schema, _tunables(node, model, settings, circuits, finder), settings, bus)
    if stun is not None and dht is not None:
        parts.nat = _natCheck(node, settings, stun, dht, finder, bus)
    metrics = None
    if settings.get("metrics_listen") is not None:
        from meshvpn.control.metrics import NodeMetrics

        metrics = (NodeMetrics(node.reactor, model, dht), settings["metrics_listen"])
    control = ControlService(node.reactor, node.dataDir, model, bus, settings["control_listen"], metrics)
    control.setName("control-plane")  # "control" names its listener (the address in node.json)
    # listeners first: the control service reads their bound addresses when it starts
    node.addListener("control", control.listener)
    if control.metricsListener is not None:
        node.addListener("metrics", control.metricsListener)
    if parts.nat is not None:
        parts.nat.setServiceParent(control)
    control.setServiceParent(node)
    return control


def _tunables(node, model, settings, circuits, finder):
    out = []
    if circuits is not None:
        out.append(Tunable("circuits-spare", lambda: circuits.spares, lambda v: setattr(circuits, "spares", v)))
    if finder is not None:
        def sampleInterval(v):
            finder.interval = v

        out.append(Tunable("dht-sample-interval", lambda: finder.interval, sampleInterval))
    if "status_history" in settings:
        def history(v):
            model.history = v
            node.status.history = v  # status.json keeps step with the API

        out.append(Tunable("status-history", lambda: model.history, history))
    return out


def _natCheck(node, settings, stun, dht, finder, bus):
    from meshvpn.nat.classify import NATProbe

    # Bound to one address (a testnet's loopback /16): that is our local address, not the kernel's guess.
    specific = settings["udp"][0] not in ("0.0.0.0", "::")

    def servers():
        out = list(settings.get("bootstrap") or ())
        for d in (finder.usable() if finder is not None else ()):
            for transport, address in d.addresses:
                if transport == "udp":
                    out.append(address)
        return out

    class _LazyProbe:
        """The socket's port is known only once the node listens."""

        def probe(self, servers):
            bound = node.getServiceNamed("udp").port.getHost()
            udpHost, udpPort = bound.host, bound.port
            addresses = [(udpHost, udpPort)] if specific else None
            # only to STUN servers it talks to anyway (a VPN's egress gate lets nothing else
            # out, and leak checks rightly count anything else)
            return NATProbe(node.reactor, stun, udpPort, localAddresses=addresses, onlyTo=True).probe(servers)

    return ConnectivityCheck(node.reactor, _LazyProbe(), servers, ready=_joined(dht), bus=bus)


def _joined(dht):
    from twisted.internet import defer

    d = defer.Deferred()
    dht.joined.addBoth(lambda r: (d.callback(None) if not d.called else None, r)[1])
    return d
