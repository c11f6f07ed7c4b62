"""Circuit build times against real relay processes: the `build_time_*` of `meshvpn bench circuit`.

Starts the `meshvpn testnet` network, takes the relay descriptors its client
found in the DHT (and verified), and builds circuits from this process as a
client would: path selection, link to the guard (reused once open), CREATE2
and two EXTEND2s through three relay processes.  Each circuit is closed
before the next is built, so builds never overlap.
"""

import base64
import json
import os
import random
import statistics


def _descriptors(dataDir, now):
    from meshvpn.dht.descriptor import parseDescriptor

    with open(os.path.join(dataDir, "relays.json")) as f:
        entries = json.load(f)["relays"]
    return [parseDescriptor(base64.b64decode(e["descriptor"]), now=now) for e in entries]


async def _builds(reactor, dataDir, count):
    """
    @return: C{(classic, hybrid)} build times, built alternately through the
        same relays (the classic ones as if every descriptor listed no
        handshakes: ntor on every hop).
    """
    import attrs

    from meshvpn.circuits.builder import CircuitBuilder
    from meshvpn.streams.edge import attachStreams
    from meshvpn.identity import NodeIdentity
    from meshvpn.link.manager import LinkManager
    from meshvpn.link.protocol import LinkSettings
    from meshvpn.circuits.pathselect import choosePath
    from meshvpn.circuits.relayinfo import relayInfo
    from meshvpn.onion.service import OnionService

    identity = NodeIdentity.generate()
    links = LinkManager(reactor, identity, LinkSettings(authenticate=False))
    onion = OnionService(reactor, identity, None, relay=False)
    links.setCellHandler(onion.switch)
    descriptors = _descriptors(dataDir, reactor.seconds())
    relays = [r for r in (relayInfo(d) for d in descriptors) if r is not None]
    classic = {r.nodeId: attrs.evolve(r, descriptor=attrs.evolve(r.descriptor, handshakes=())) for r in relays}
    build = CircuitBuilder(reactor, onion.switch, links, onCircuit=attachStreams)
    rng = random.Random(1)
    times = {"classic": [], "hybrid": []}
    try:
        for _ in range(count):
            path = choosePath(relays, rng=rng)
            for kind, hops in (("classic", [classic[r.nodeId] for r in path]), ("hybrid", path)):
                started = reactor.seconds()
                circuit = await build(hops)
                times[kind].append(reactor.seconds() - started)
                if kind == "hybrid" and not all(circuit.postQuantumHops):
                    raise RuntimeError(f"a hybrid build was not post-quantum on every hop: {circuit.hopKinds}")
                circuit.close()
    finally:
        links.stopService()
    return times["classic"], times["hybrid"]


async def realProcessBuildTimes(reactor, count):
    """
    Start a testnet (blocking, before any build), build C{count + 1}
    circuits through it, stop it.

    @return: the C{build_time_*} fields (the first build, which opens links, apart).
    """
    from meshvpn.tools.testnet import Testnet

    net = Testnet(lambda line: None)
    try:
        net.start()
        out, hybrid = await _builds(reactor, net.client.dataDir, count + 1)
    finally:
        net.stop()
    first, rest, hybrid = out[0], sorted(out[1:]), sorted(hybrid[1:])
    return {
        "build_time_median_s": round(statistics.median(rest), 6),
        "build_time_p95_s": round(rest[min(len(rest) - 1, int(len(rest) * 0.95))], 6),
        "build_time_first_s": round(first, 6),
        "hybrid_build_time_median_s": round(statistics.median(hybrid), 6),
        "hybrid_build_time_p95_s": round(hybrid[min(len(hybrid) - 1, int(len(hybrid) * 0.95))], 6),
        "hybrid_over_classic_build": round(statistics.median(hybrid) / statistics.median(rest), 3),
        "builds": len(rest),
        "build_time_note": "real relay processes on loopback from DHT descriptors; links reused once open; "
        "build_time_first_s includes opening the first link; build_time_* are classic (ntor on every hop), "
        "hybrid_* X25519 + ML-KEM-768 on every hop, built alternately over the same paths",
    }
