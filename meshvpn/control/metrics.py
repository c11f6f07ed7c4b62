"""Prometheus metrics for a relay operator's board: off by default, on with --metrics-listen.

Served at C{/metrics} in the Prometheus text format by C{prometheus_client}'s
own Twisted resource.  Values are read when scraped, from the same model the
control API uses (services' C{status()} dicts and counters), by a custom
collector: nothing on the hot path updates a metric per cell.  The one
exception is DHT lookup latency, a histogram observed once per lookup.

The resource renders in the reactor's thread pool, while the node's state
belongs to the reactor thread, so the collector takes its snapshot on the
reactor thread (L{blockingCallFromThread}) and formats it in the pool.

Names follow Prometheus conventions (C{meshvpn_} prefix, C{_total} for
counters, base units: bytes and seconds).  No label identifies a client, a
peer or a destination: labels are only directions, states, results and the
node's own NAT class.  There is no authentication on C{/metrics}, as is
usual for Prometheus; it listens where the operator says (loopback unless
told otherwise).
"""

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from twisted.internet import threads
from twisted.python import threadable

LOOKUP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
NAT_TYPES = ("no-nat", "full-cone", "address-restricted", "port-restricted", "symmetric", "udp-blocked", "unknown")
VPN_STATES = ("waiting-for-relays", "building-circuit", "checking", "up", "reconnecting", "mesh-only", "stopped")


class NodeCollector:
    """
    A C{prometheus_client} collector over a L{NodeModel}.

    @param reactor: the reactor that owns the model (snapshots run there).
    """

    def __init__(self, reactor, model):
        self.reactor = reactor
        self.model = model

    def describe(self):
        return []  # collected on scrape only: no family is known before the node runs

    def collect(self):
        if threadable.isInIOThread() or not getattr(self.reactor, "running", False):
            snap = self.snapshot()
        else:
            snap = threads.blockingCallFromThread(self.reactor, self.snapshot)
        yield from families(snap)

    def snapshot(self):
        """Plain numbers, read on the reactor thread."""
        m = self.model
        parts = m.parts
        snap = {"node_role": m.theNode.role, "uptime": m.clock.seconds() - m.startedAt,
                "bandwidth": m.bandwidthSampler.totals(), "links": m.linkCounts(), "nat": m.natStatus().get("type")}
        if parts.dht is not None:
            status = parts.dht.status()
            snap["dht"] = {"contacts": status.get("contacts", 0), "records": status.get("records", 0),
                           "requests_in": status.get("counters", {}).get("requests_in", 0),
                           "requests_out": status.get("counters", {}).get("requests_out", 0),
                           "timeouts": status.get("counters", {}).get("timeouts", 0)}
        if parts.finder is not None:
            snap["relays_known"] = len(parts.finder.usable())
        if m.tracker is not None:
            snap["circuits"] = m.tracker.counts()
        if parts.onion is not None:
            snap["switch"] = m._switchStatus()
            limiter = getattr(getattr(parts.onion, "switch", None), "readLimiter", None)
            if limiter is not None:
                snap["read_limit_pauses"] = limiter.status().get("pauses", 0)
        if parts.exit is not None:
            status = parts.exit.status()
            snap["exit_streams"] = status.get("streams", {})
            snap["exit_dns"] = status.get("dns", {})
            circuits = status.get("bandwidth", {}).get("circuits", {})
            snap["exit_throttle_pauses"] = sum(c.get("pauses", 0) for c in circuits.values())
        if parts.tun is not None:
            snap["vpn"] = m.vpn()
        return snap


def families(snap):
    """The metric families for one snapshot (a separate function so tests feed it numbers)."""
    bw = snap["bandwidth"]
    cells = CounterMetricFamily("meshvpn_link_cells", "Cells through the node's links (on a relay: cells relayed, "
                                "plus those of circuits ending here).", labels=["direction"])
    cells.add_metric(["in"], bw["cells_in"])
    cells.add_metric(["out"], bw["cells_out"])
    yield cells
    nbytes = CounterMetricFamily("meshvpn_link_bytes", "Bytes through the node's links, as cells.", labels=["direction"])
    nbytes.add_metric(["in"], bw["bytes_in"])
    nbytes.add_metric(["out"], bw["bytes_out"])
    yield nbytes
    links = GaugeMetricFamily("meshvpn_links", "Links by state.", labels=["state"])
    links.add_metric(["open"], snap["links"].get("open", 0))
    links.add_metric(["handshaking"], snap["links"].get("handshaking", 0))
    yield links
    opened = CounterMetricFamily("meshvpn_links_opened", "Links opened, by who dialled.", labels=["direction"])
    opened.add_metric(["out"], snap["links"].get("opened_out", 0))
    opened.add_metric(["in"], snap["links"].get("opened_in", 0))
    yield opened
    yield GaugeMetricFamily("meshvpn_uptime_seconds", "Seconds since the control plane started.", value=snap["uptime"])
    nat = GaugeMetricFamily("meshvpn_nat_type", "The node's NAT class (1 for the current one).", labels=["type"])
    current = snap.get("nat") or "unknown"
    for t in NAT_TYPES + ((current,) if current not in NAT_TYPES else ()):
        nat.add_metric([t], 1 if t == current else 0)
    yield nat
    if "dht" in snap:
        dht = snap["dht"]
        yield GaugeMetricFamily("meshvpn_dht_contacts", "Contacts in the DHT routing table.", value=dht["contacts"])
        yield GaugeMetricFamily("meshvpn_dht_records", "Records this node stores for the DHT.", value=dht["records"])
        req = CounterMetricFamily("meshvpn_dht_requests", "DHT requests, by direction.", labels=["direction"])
        req.add_metric(["in"], dht["requests_in"])
        req.add_metric(["out"], dht["requests_out"])
        yield req
        yield CounterMetricFamily("meshvpn_dht_request_timeouts", "DHT requests that got no answer.",
                                  value=dht["timeouts"])
    if "relays_known" in snap:
        yield GaugeMetricFamily("meshvpn_relays_known", "Relays known from the DHT directory.", value=snap["relays_known"])
    if "circuits" in snap:
        c = GaugeMetricFamily("meshvpn_circuits", "The client's circuits by state.", labels=["state"])
        for state in ("spare", "in-use", "retired", "building"):
            c.add_metric([state.replace("-", "_")], snap["circuits"].get(state, 0))
        yield c
    if "switch" in snap:
        sw = snap["switch"]
        yield GaugeMetricFamily("meshvpn_relay_circuits", "Circuit ends the relay's switch holds.",
                                value=sw.get("circuit_ends", 0))
        creates = CounterMetricFamily("meshvpn_relay_creates", "CREATE2 cells answered, by result.", labels=["result"])
        creates.add_metric(["accepted"], sw.get("circuits_created", 0))
        creates.add_metric(["refused"], sw.get("create_refused", 0))
        yield creates
        relayed = CounterMetricFamily(
            "meshvpn_relay_cells", "Cells this relay passed on along circuits through it (forward: away from the "
            "circuit's origin; backward: toward it); not the cells of circuits ending here.", labels=["direction"])
        relayed.add_metric(["forward"], sw.get("cells_relayed_forward", 0))
        relayed.add_metric(["backward"], sw.get("cells_relayed_backward", 0))
        yield relayed
        yield CounterMetricFamily("meshvpn_relay_circuits_destroyed", "Circuits torn down at this relay.",
                                  value=sw.get("circuits_destroyed", 0))
        yield CounterMetricFamily("meshvpn_relay_protocol_errors", "Cells that broke the protocol (their circuit closed).",
                                  value=sw.get("protocol_errors", 0))
        yield CounterMetricFamily("meshvpn_relay_queue_overflows", "Cells refused because a link's queue was full.",
                                  value=sw.get("queue_overflows", 0))
    waits = CounterMetricFamily("meshvpn_token_bucket_waits", "Times a token bucket made traffic wait.",
                                labels=["bucket"])
    any_ = False
    if "read_limit_pauses" in snap:
        waits.add_metric(["relay_read"], snap["read_limit_pauses"])
        any_ = True
    if "exit_throttle_pauses" in snap:
        waits.add_metric(["exit_circuit"], snap["exit_throttle_pauses"])
        any_ = True
    if "switch" in snap:
        waits.add_metric(["link_pause"], snap["switch"].get("link_pauses", 0))
        any_ = True
    if any_:
        yield waits
    if "exit_streams" in snap:
        s = snap["exit_streams"]
        streams = CounterMetricFamily("meshvpn_exit_streams", "Exit streams (BEGIN) by result.", labels=["result"])
        for result in ("connected", "refused_policy", "failed"):
            streams.add_metric([result], s.get(result, 0))
        yield streams
        yield CounterMetricFamily("meshvpn_exit_streams_begun", "BEGIN requests the exit acted on.",
                                  value=s.get("begun", 0))
        dns = snap.get("exit_dns", {})
        yield CounterMetricFamily("meshvpn_exit_dns_queries", "Names the exit resolved for clients.",
                                  value=dns.get("queries", 0))
        yield CounterMetricFamily("meshvpn_exit_dns_policy_refusals", "Names refused because they resolve to "
                                  "addresses the policy rejects.", value=dns.get("refused_by_policy", 0))
    if "vpn" in snap:
        v = snap["vpn"]
        state = GaugeMetricFamily("meshvpn_vpn_state", "The VPN's state (1 for the current one).", labels=["state"])
        for s in VPN_STATES:
            state.add_metric([s], 1 if v.get("state") == s else 0)
        yield state
        packets = CounterMetricFamily("meshvpn_vpn_packets", "IP packets between the TUN and circuits.",
                                      labels=["direction"])
        packets.add_metric(["to_circuit"], v.get("to_circuit_packets", 0))
        packets.add_metric(["from_circuit"], v.get("from_circuit_packets", 0))
        yield packets


class NodeMetrics:
    """The node's registry: the collector plus the DHT lookup histogram."""

    def __init__(self, reactor, model, dhtService=None):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(NodeCollector(reactor, model))
        self.lookups = Histogram("meshvpn_dht_lookup_duration_seconds", "Time an iterative DHT lookup took.",
                                 buckets=LOOKUP_BUCKETS, registry=self.registry)
        self.dhtService = dhtService

    def start(self):
        """Observe the DHT's lookups (its node exists once the DHT service has started, before us)."""
        node = getattr(self.dhtService, "dht", None)
        if node is not None and self._observe not in node.lookupObservers:
            node.lookupObservers.append(self._observe)

    def _observe(self, result):
        self.lookups.observe(max(0.0, result.elapsed))

    def resource(self):
        """The Twisted resource serving the text format (C{prometheus_client.twisted})."""
        from prometheus_client.twisted import MetricsResource

        return MetricsResource(self.registry)

    def text(self):
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
