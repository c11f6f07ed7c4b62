"""What the peer-measured weights say of each relay, as the control API shows it next to the directory's view.

A client computes relay weights from the relays' signed traffic reports
once per epoch (L{meshvpn.measure}); the API's C{/v1/relays} adds to each
relay its measured bandwidth, its share of path weight among the relays
listed, its uptime (streak x epoch length), its earned flags, the partners
that confirmed it, its own last report and its probed capacity (what its
capacity probes read it forwarding).  Everything here is public (the
reports are in the DHT for anyone to recompute).
"""


def measuredEntries(weights, nodeIds):
    """
    @param weights: the node's L{meshvpn.interfaces.IRelayWeights}, or C{None}.
    @param nodeIds: the relays listed, in order.
    @return: C{{nodeId: dict or None}}: C{None} for a relay no report names.
    """
    if weights is None:
        return {n: None for n in nodeIds}
    measured = {n: weights.measurement(n) for n in nodeIds}
    total = sum(m.weight for m in measured.values() if m is not None) or 1
    length = weights.epochLength
    out = {}
    for n in nodeIds:
        m = measured[n]
        if m is None:
            out[n] = None
            continue
        entry = {
            "bandwidth": round(m.bandwidth, 1),
            "weight": m.weight,
            "share": round(m.weight / total, 6),
            "uptime_s": m.streak * length,
            "seen_epochs": m.seen,
            "partners": m.reporters,
            "flags": sorted(m.flags),
            "report": None,
            "probed": None,
        }
        probed = getattr(weights, "probedCapacity", lambda n: None)(n)
        if probed is not None:
            entry["probed"] = round(probed, 1)
        report = weights.report(n)
        if report is not None:
            entry["report"] = {"epoch": report.epoch, "neighbours": len(report.traffic),
                               "bytes": sum(b for b, _ in report.traffic.values())}
        out[n] = entry
    return out


def weightsSummary(weights):
    """The epoch the weights come from and how many relays they measure (C{None}: this node has no weights)."""
    if weights is None:
        return None
    state = weights.status()
    return {k: state.get(k) for k in ("epoch", "epoch_length", "reports", "measured", "rejected", "probed")}
