"""``meshvpn bench circuit``: what one cell costs in the onion plane.

- crypto_us_origin_per_cell: the origin's work for one cell sent through 3
  hops (tag it for the exit, add 3 AES-CTR layers);
  crypto_us_relay_middle_per_cell: one relay's work for a cell passing
  through (remove its layer, see it is not for it);
  crypto_us_relay_exit_per_cell: the last hop's (remove its layer, check
  the tag).  Each pass is timed on its own, never mixed.
- relay_cells_per_s_inmemory: one relay's switch fed cells in memory at
  full speed (no sockets, no TLS; batches as a link delivers them; the
  output link is a sink), forward and backward; the headline is the slower
  direction.  The circuit uses CGO relay crypto (the default between relays
  that list it); relay_cells_per_s_inmemory_tor1 is the same with the
  original scheme (one AES-CTR call per run of cells).  The same relay through real sockets and TLS, in its own
  process, is ``meshvpn bench throughput``'s C{relay_cells_per_cpu_s_tls}.
- build_time_median_s / build_time_p95_s: builds from this process through
  the relay processes of a `meshvpn testnet` network (meshvpn/tools/benchbuild.py).
  build_time_inmemory_median_s is the CPU part alone: a 3-hop build over
  in-memory links in this process (3 ntor handshakes, 2 EXTEND2).
  build_time_tls_loopback_*: 3-hop builds over real TLS links on loopback
  TCP, all four nodes in this process (one core), links already open
  (the first build, which opens them, is reported apart).
  build_time_* are classic builds (ntor on every hop);
  hybrid_build_time_* the same with X25519 + ML-KEM-768 on every hop.
- create2_cpu_us_relay_<kind> / create2_cpu_us_client_<kind>: the CPU of one
  handshake of each kind (ntor, ntor3, ntor3-mlkem768) at the relay
  (answering a CREATE2) and at the client (making it and checking the reply).
- cgo_us_per_cell_per_hop: CGO (meshvpn.onion.cgo) at a relay a cell passes
  through (its UIV+ layer and the recognized check), per cell, in CPU time;
  cgo_us_origin_per_cell (3 layers, the key update of the hop it is for) and
  cgo_us_exit_per_cell (its layer, recognized, the key update) beside it;
  cgo_implementation: "c" (meshvpn/onion/_cgodirection.c) or "python" (the
  reference, when the C part was not built).
"""

import os
import time

from twisted.internet import task

from meshvpn.tools.benchoutput import report
from meshvpn.onion.cells import RelayCommand, packRelay
from meshvpn.link.cellsize import CELL_SIZE
from meshvpn.onion.origin import OriginCircuit
from meshvpn.onion.relaycrypto import OriginCrypto, RelayLayer
from meshvpn.tools.onionfakes import MemoryNetwork, TestRelay


def benchCrypto(cells):
    """Time the origin's pass and each relay's pass over the same cells, apart."""
    seeds = [os.urandom(32) for _ in range(3)]
    origin = OriginCrypto()
    for s in seeds:
        origin.addHop(s)
    relays = [RelayLayer(s) for s in seeds]
    plain = packRelay(RelayCommand.DATA, 1, os.urandom(400))
    t0 = time.perf_counter()
    sealed = [origin.encrypt(plain, 2)[0] for _ in range(cells)]
    originTime = time.perf_counter() - t0
    times = []
    for i, layer in enumerate(relays):
        decrypt, recognize = layer.decryptForward, layer.recognizeForward
        t0 = time.perf_counter()
        out = []
        for payload in sealed:
            payload = decrypt(payload)
            if recognize(payload) is not None and i < 2:
                raise AssertionError("a middle hop recognized a cell for the exit")
            out.append(payload)
        times.append(time.perf_counter() - t0)
        sealed = out
    if relays[2].fwdCount != cells:
        raise AssertionError("the exit did not recognize every cell meant for it")
    return {
        "crypto_us_origin_per_cell": round(originTime / cells * 1e6, 3),
        "crypto_us_origin_per_cell_per_hop": round(originTime / (cells * 3) * 1e6, 3),
        "crypto_us_relay_middle_per_cell": round(min(times[:2]) / cells * 1e6, 3),
        "crypto_us_relay_exit_per_cell": round(times[2] / cells * 1e6, 3),
    }


def _relayUnderTest(handshakes=None):
    """C{handshakes}: what the relays' descriptors list (C{None}: all they speak, so CGO)."""
    clock = task.Clock()
    net = MemoryNetwork(clock)
    d = {}
    relay = TestRelay(net, clock, "relay", directory=d)
    nxt = TestRelay(net, clock, "next", directory=d)
    client = TestRelay(net, clock, "client", directory=d)
    link = client.linkTo(relay.nodeId)
    circ = OriginCircuit(client.switch, link, [relay.hopSpec(handshakes), nxt.hopSpec(handshakes)])
    built = circ.build()
    net.pump()
    if circ.closed or not built.called:
        raise RuntimeError("benchmark circuit did not build")
    [fromClient] = [ch for ch in relay.switch.channels() if ch.peerId == client.nodeId]
    [toNext] = [ch for ch in relay.switch.channels() if ch.peerId == nxt.nodeId]
    fromClient.link.discard = True
    toNext.link.discard = True
    rc = fromClient.circuits[circ.circId]
    return relay, fromClient, toNext, circ.prefix, rc.nextPrefix, clock


def benchRelay(cells, batch, handshakes=None, suffix=""):
    relay, fromClient, toNext, prevPrefix, nextPrefix, clock = _relayUnderTest(handshakes)
    body = os.urandom(CELL_SIZE - 5)
    fwd = [prevPrefix + b"\x03" + body] * batch
    back = [nextPrefix + b"\x03" + body] * batch
    rounds = max(1, cells // batch)
    out = {}
    for name, channel, batchCells, sink in (("forward", fromClient, fwd, toNext.link),
                                            ("backward", toNext, back, fromClient.link)):
        before = sink.cellsSent
        receive = channel.receive
        endTurn = clock.advance  # each link read is one reactor turn: its cells leave at the end of it
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(rounds):
            receive(batchCells)
            endTurn(0)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        if sink.cellsSent - before != rounds * batch:
            raise RuntimeError(f"relay dropped cells in the {name} direction")
        out[name] = rounds * batch / elapsed
        out[name + "_cpu"] = rounds * batch / max(cpu, 1e-9)
    if relay.switch.counters["protocol_errors"]:
        raise RuntimeError("relay reported protocol errors during the benchmark")
    return {
        f"relay_cells_per_s_inmemory{suffix}": int(min(out.values())),
        f"relay_cells_per_s_inmemory{suffix}_forward": int(out["forward"]),
        f"relay_cells_per_s_inmemory{suffix}_backward": int(out["backward"]),
        # The same per second of this process's CPU (steadier on a shared machine).
        f"relay_cells_per_cpu_s_inmemory{suffix}": int(min(out["forward_cpu"], out["backward_cpu"])),
        "relay_batch_cells": batch,
    }


def benchBuildInMemory(builds, hybrid=False):
    """
    3-hop builds over in-memory links: the CPU cost of a build (3 handshakes,
    2 EXTEND2), no network; classic (ntor) or, with C{hybrid}, X25519 + ML-KEM-768.
    """
    clock = task.Clock()
    net = MemoryNetwork(clock)
    d = {}
    relays = [TestRelay(net, clock, name, directory=d) for name in ("guard", "middle", "exit")]
    client = TestRelay(net, clock, "client", directory=d)
    link = client.linkTo(relays[0].nodeId)
    times = []
    for _ in range(builds):
        t0 = time.perf_counter()
        circ = OriginCircuit(client.switch, link, [r.hopSpec(None if hybrid else ()) for r in relays])
        built = circ.build()
        net.pump()
        times.append(time.perf_counter() - t0)
        if not built.called or circ.closed:
            raise RuntimeError("in-memory build failed")
        circ.close()
        net.pump()
    times.sort()
    return {f"{'hybrid_' if hybrid else ''}build_time_inmemory_median_s": round(times[len(times) // 2], 6)}


def benchHandshakes(count=200):
    """CPU per handshake of each kind, relay side and client side, apart."""
    from meshvpn import hybridkem
    from meshvpn.onion import circhandshake as ch
    from meshvpn.onion.keyring import OnionKeyRing

    ring = OnionKeyRing(task.Clock())
    nodeId, B = os.urandom(32), ring.publicKeys()["current"]
    out = {}
    kinds = (ch.NTOR, ch.NTOR3, ch.HYBRID) if hybridkem.available() else (ch.NTOR, ch.NTOR3)
    for kind in kinds:
        started = [ch.ClientHandshake(kind, nodeId, B) for _ in range(count)]
        t0 = time.perf_counter()
        answers = [ch.serverAnswer(h.htype, h.hdata, nodeId, ring.findKey) for h in started]
        relay = time.perf_counter() - t0
        t0 = time.perf_counter()
        clients = [ch.ClientHandshake(kind, nodeId, B) for _ in range(count)]
        client = time.perf_counter() - t0
        t0 = time.perf_counter()
        for h, (_, reply) in zip(started, answers):
            h.finish(reply)
        client += time.perf_counter() - t0
        del clients
        name = kind.replace("-", "_")
        out[f"create2_cpu_us_relay_{name}"] = round(relay / count * 1e6, 1)
        out[f"create2_cpu_us_client_{name}"] = round(client / count * 1e6, 1)
    return out


def benchCgo(cells):
    """
    CGO's crypto per cell: the origin, a middle relay (the per-hop cost), the
    exit.  CPU time of this process (C{time.process_time}), best of three
    passes: on a shared machine wall time also counts other processes' turns.
    """
    import hashlib

    from meshvpn.onion import cgo

    material = [hashlib.shake_256(b"bench %d" % i).digest(cgo.KEY_MATERIAL_LEN) for i in range(3)]
    body, cmd = bytes(cgo.BODY_LEN), b"\x03"
    best = None
    for _ in range(3):
        origin = cgo.CgoOriginCrypto()
        relays = [cgo.CgoRelayLayer(m) for m in material]
        for m in material:
            origin.addHop(m)
        t0 = time.process_time()
        sealed = [origin.encrypt(cmd, body, 2) for _ in range(cells)]
        times = [time.process_time() - t0]
        for relay in relays:
            forward = relay.forward
            t0 = time.process_time()
            out = [forward(cmd, c) for c in sealed]
            times.append(time.process_time() - t0)
            sealed = [c for c, _ in out]
        if any(tag is None for _, tag in out):
            raise AssertionError("the exit did not recognize every CGO cell meant for it")
        best = times if best is None else [min(a, b) for a, b in zip(best, times)]
    originTime, times = best[0], best[1:]
    return {
        "cgo_us_per_cell_per_hop": round(min(times[:2]) / cells * 1e6, 3),
        "cgo_us_origin_per_cell": round(originTime / cells * 1e6, 3),
        "cgo_us_exit_per_cell": round(times[2] / cells * 1e6, 3),
        "cgo_implementation": "python" if cgo._Direction is cgo.PyDirection else "c",
    }


def run(cells=200000, batch=64, builds=50):
    result = {"cell_size": CELL_SIZE}
    result.update(benchCrypto(max(1, cells // 4)))
    result.update(benchRelay(cells, batch))  # CGO circuits, the default
    result.update(benchRelay(cells, batch, handshakes=("ntor", "ntor3"), suffix="_tor1"))
    result.update(benchBuildInMemory(builds))
    result.update(benchBuildInMemory(builds, hybrid=True))
    result.update(benchHandshakes())
    result.update(benchCgo(max(1, min(cells // 4, 20000))))
    result["cells"] = cells
    return result


def _onReactor(*coroutineFactories):
    """Run coroutines one after another on the real reactor; @return: their merged dicts."""
    from twisted.internet import defer, reactor

    async def all():
        out = {}
        for make in coroutineFactories:
            out.update(await make(reactor))
        return out

    out, failures = {}, []
    d = defer.Deferred.fromCoroutine(all())
    d.addCallbacks(out.update, failures.append).addBoth(lambda _: reactor.stop())
    reactor.run()
    if failures:
        failures[0].raiseException()
    return out


def main(args):
    result = run(cells=args.cells, batch=args.batch, builds=args.builds)
    from meshvpn.tools.benchbuild import realProcessBuildTimes
    from meshvpn.tools.onionloopback import buildTimes

    steps = []
    if args.tls_builds > 0:
        steps.append(lambda reactor: buildTimes(reactor, args.tls_builds))
    if args.real_builds > 0:
        steps.append(lambda reactor: realProcessBuildTimes(reactor, args.real_builds))
    else:
        result.update(build_time_median_s=None, build_time_p95_s=None, build_time_note="--real-builds 0")
    if steps:
        result.update(_onReactor(*steps))
    report(result, args.json)
    return 0

