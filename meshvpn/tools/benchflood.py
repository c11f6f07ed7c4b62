"""`meshvpn bench flood`: honest circuit builds through a relay that one peer floods with CREATE2.

A real relay process (twistd, on loopback 127.77.0.1) and three kinds of
peers, each from its own loopback source address, as they would come from
different hosts:

- honest clients (in this process), each with its own link, building
  one-hop circuits (CREATE2 -> CREATED2) one after another; first with the
  relay idle (the unloaded p95), then under attack;
- a CREATE2 flooder (a separate process): several links, CREATE2 cells
  with valid onionskins written as fast as the links take them, every
  circuit the relay answers destroyed at once so its per-link cap never
  stops the flood;
- a link flooder (the same separate process, another address): new TLS
  links as fast as it can, each held until refused or opened, then dropped.

The relay's resident memory is read from /proc while all this runs.  The
goal (doc/security.md): at least 99% of honest builds succeed and their p95
stays within 3x the unloaded p95; the relay's memory stays bounded.  The
one JSON object also carries what the attacker achieved, the relay's own
counters, and the cost of one CREATE2 handshake measured in this process.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

RELAY_HOST = "127.77.0.1"
HONEST_HOSTS = "127.88.0.{}"
FLOOD_HOST = "127.66.0.1"
LINKS_HOST = "127.67.0.1"


def addArguments(p):
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--clients", type=int, default=4, help="honest clients, each with its own link and address (default 4)")
    p.add_argument("--builds", type=int, default=50, help="circuits each honest client builds per phase (default 50)")
    p.add_argument("--flood-links", type=int, default=8, help="links the CREATE2 flooder uses (default 8)")
    p.add_argument("--link-flood", type=int, default=64, help="link attempts the link flooder keeps in flight (default 64)")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds the attack runs before honest builds start under it (default 3)")
    p.add_argument("--handshakes", type=int, default=300, help="CREATE2 handshakes timed in process (default 300)")


def _percentile(values, q):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def createCost(count):
    """@return: microseconds one CREATE2 costs the relay's switch (decode, ntor, circuit, CREATED2)."""
    import hashlib

    from twisted.internet import defer, task

    from meshvpn.onion import ntor
    from meshvpn.onion.cells import HTYPE_NTOR, Command, Create2, encodeCell
    from meshvpn.onion.keyring import OnionKeyRing
    from meshvpn.onion.switch import CircuitSwitch, SwitchLimits

    class Link:
        isInitiator, peerId, remoteHost = False, None, "198.18.0.1"

        def setCellReceiver(self, receiver):
            pass

        def whenClosed(self):
            return defer.Deferred()

        def acquire(self):
            pass

        def release(self):
            pass

        def sendCells(self, cells):
            pass

    clock = task.Clock()
    nodeId = hashlib.sha256(b"bench").digest()
    ring = OnionKeyRing(clock)
    unlimited = SwitchLimits(maxCircuitsPerPeer=10**9, createRate=1e12, createBurst=10**12,
                             createGlobalRate=1e12, createGlobalBurst=10**12)
    switch = CircuitSwitch(clock, nodeId, ring, limits=unlimited)
    channel = switch.attachLink(Link())
    B = ring.publicKeys()["current"]
    cells = [encodeCell(0x80000000 | (i + 1), Command.CREATE2,
                        Create2(HTYPE_NTOR, ntor.clientCreate(nodeId, B)[1]).encode()) for i in range(count)]
    started = time.perf_counter()
    for i in range(0, count, 32):
        channel.receive(cells[i:i + 32])
    elapsed = time.perf_counter() - started
    assert switch.counters["circuits_created"] == count
    return elapsed / count * 1e6


def _rssMB(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


class _BoundTCP:
    """The 'tls' transport, dialling from a chosen loopback source address (one 'host' per peer)."""

    name, kind = "tls", "stream"

    def __init__(self, bindHost):
        self.bindHost = bindHost

    def clientEndpoint(self, reactor, address, options):
        from twisted.internet import endpoints

        from meshvpn.hostport import splitHostPort

        host, port = splitHostPort(address)
        return endpoints.TCP4ClientEndpoint(reactor, host, port, timeout=10, bindAddress=(self.bindHost, 0))


def _linkManager(reactor, bindHost, authenticate=False):
    from meshvpn.identity import NodeIdentity
    from meshvpn.link.manager import LinkManager
    from meshvpn.link.protocol import LinkSettings

    return LinkManager(reactor, NodeIdentity.generate(), LinkSettings(authenticate=authenticate, idleTimeout=0),
                       transports={"tls": _BoundTCP(bindHost)})


def _relayTarget(info):
    from meshvpn.link.manager import LinkTarget

    return LinkTarget(bytes.fromhex(info["node_id"]), (("tls", info["stream"]),))


# ---- the honest clients (this process)


class _Honest:
    def __init__(self, reactor, index, info, onionKey):
        from meshvpn.onion.switch import CircuitSwitch

        self.reactor = reactor
        self.links = _linkManager(reactor, HONEST_HOSTS.format(index + 1))
        self.switch = CircuitSwitch(reactor, self.links.identity.nodeId)
        self.links.setCellHandler(self.switch)
        self.info, self.onionKey = info, onionKey
        self.link = None

    async def connect(self):
        self.link = await self.links.getLink(_relayTarget(self.info))

    async def builds(self, count, times, failures):
        from meshvpn.onion.origin import HopSpec, OriginCircuit

        spec = HopSpec(bytes.fromhex(self.info["node_id"]), self.onionKey)
        for _ in range(count):
            if self.link is None or self.link.state.value == "closed":
                try:
                    await self.connect()
                except Exception as e:
                    failures.append(f"link: {e}")
                    continue
            circuit = OriginCircuit(self.switch, self.link, [spec], buildTimeout=10.0)
            started = time.perf_counter()
            try:
                await circuit.build()
            except Exception as e:
                failures.append(str(e)[:120])
                continue
            times.append(time.perf_counter() - started)
            circuit.close()
            await _sleep(self.reactor, 0.02)


def _sleep(reactor, seconds):
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)


async def _phase(reactor, clients, builds):
    from twisted.internet import defer

    times, failures = [], []
    await defer.gatherResults([defer.Deferred.fromCoroutine(c.builds(builds, times, failures)) for c in clients])
    return times, failures


async def _bench(reactor, args, relay, out):
    from twisted.internet import defer, task

    from meshvpn.onion.keyring import OnionKeyRing

    info = relay.info
    onionKey = OnionKeyRing.loadOrCreate(reactor, os.path.join(relay.dataDir, "onion-ring.key")).publicKeys()["current"]
    pid = relay.process.pid
    rss = []
    sampler = task.LoopingCall(lambda: rss.append(_rssMB(pid)))
    sampler.clock = reactor
    sampler.start(0.2)
    clients = [_Honest(reactor, i, info, onionKey) for i in range(args.clients)]
    try:
        await defer.gatherResults([defer.Deferred.fromCoroutine(c.connect()) for c in clients])
        unloadedTimes, unloadedFailures = await _phase(reactor, clients, args.builds)
        rssBefore = max(r for r in rss if r is not None)
        ready = os.path.join(os.path.dirname(relay.dataDir), "attacker-ready")
        attacker = subprocess.Popen(
            [sys.executable, "-m", "meshvpn.tools.benchflood", "attack", json.dumps(info), onionKey.hex(),
             str(args.flood_links), str(args.link_flood), ready],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 30
            while not os.path.exists(ready) and attacker.poll() is None and time.monotonic() < deadline:
                await _sleep(reactor, 0.05)  # its links are open and flooding from here on
            await _sleep(reactor, args.duration)
            if attacker.poll() is not None:
                raise RuntimeError(f"the attacker exited: {attacker.stderr.read().decode(errors='replace')[-1500:]}")
            loadedTimes, loadedFailures = await _phase(reactor, clients, args.builds)
        finally:
            attacker.terminate()
            try:
                attackOut, attackErr = attacker.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                attacker.kill()
                attackOut, attackErr = attacker.communicate()
        attack = {}
        lines = attackOut.decode(errors="replace").strip().splitlines()
        if lines:
            attack = json.loads(lines[-1])
        else:
            out(f"bench flood: the attacker printed nothing: {attackErr.decode(errors='replace')[-1500:]}")
    finally:
        sampler.stop()
        for c in clients:
            await c.links.stopService()
    await _sleep(reactor, 1.5)  # one more status write by the relay
    return unloadedTimes, unloadedFailures, loadedTimes, loadedFailures, attack, rss, rssBefore


def run(args, out=print):
    from twisted.internet import defer, task

    from meshvpn.control.status import readStatus
    from meshvpn.tools.processes import NodeProcess

    if args.duration is None:
        args.duration = 3.0
    started = time.monotonic()
    cost = createCost(args.handshakes)
    base = tempfile.mkdtemp(prefix="meshvpn-benchflood-")
    relay = NodeProcess("relay", os.path.join(base, "relay"), host=RELAY_HOST,
                        extraArgs=["--flags", "guard,middle", "--stun-server", "false"], name="relay")
    result = {}
    try:
        relay.start()
        relay.waitReady()

        def main(reactor):
            bench = defer.Deferred.fromCoroutine(_bench(reactor, args, relay, out))
            return bench.addCallback(lambda r: result.update(r=r))

        task.react(main)
    except SystemExit:
        if "r" not in result:
            raise RuntimeError(f"bench flood failed; relay log:\n{relay.logTail()}") from None
    finally:
        status = readStatus(relay.dataDir) or {}
        relay.stop()
        import shutil

        shutil.rmtree(base, ignore_errors=True)
    unloadedTimes, unloadedFailures, loadedTimes, loadedFailures, attack, rss, rssBefore = result["r"]
    total = args.clients * args.builds
    rssValues = [r for r in rss if r is not None]
    unloadedP95 = _percentile(unloadedTimes, 0.95)
    loadedP95 = _percentile(loadedTimes, 0.95)
    success = len(loadedTimes) / total if total else None
    onion = status.get("onion", {})
    links = status.get("links", {})
    report = {
        "honest_build_success": round(success, 4) if success is not None else None,
        "honest_build_p95_s": round(loadedP95, 4) if loadedP95 is not None else None,
        "honest_build_p50_s": round(statistics.median(loadedTimes), 4) if loadedTimes else None,
        "unloaded_build_p95_s": round(unloadedP95, 4) if unloadedP95 is not None else None,
        "unloaded_build_p50_s": round(statistics.median(unloadedTimes), 4) if unloadedTimes else None,
        "unloaded_build_success": round(len(unloadedTimes) / total, 4) if total else None,
        "honest_failures": (unloadedFailures + loadedFailures)[:5],
        "relay_rss_mb_max": round(max(rssValues), 1) if rssValues else None,
        "relay_rss_mb_before_attack": round(rssBefore, 1),
        "create2_cost_us": round(cost, 1),
        "attacker": attack,
        "relay_onion": {k: onion.get(k) for k in ("circuits_created", "create_refused", "create_queued", "create_expired",
                                                  "creates_waiting", "circuit_ends") if k in onion},
        "relay_links": {k: links.get(k) for k in ("links_open", "links_in", "refused_full", "refused_address",
                                                  "refused_rate", "opened_in") if k in links},
        "clients": args.clients,
        "builds_per_phase": total,
        "attack_warmup_s": args.duration,
    }
    report["within_goal"] = bool(success is not None and success >= 0.99 and loadedP95 is not None
                                 and unloadedP95 and loadedP95 <= 3 * unloadedP95)
    report["wall_s"] = round(time.monotonic() - started, 1)
    if args.json:
        out(json.dumps(report))
    else:
        for key, value in report.items():
            out(f"{key:28} {value}")
    return 0


# ---- the attacker (a separate process: python -m meshvpn.tools.benchflood attack ...)


class _Flooder:
    """CREATE2 cells on one link as fast as it takes them; every answered circuit destroyed at once."""

    def __init__(self, reactor, link, cells, stats):
        self.reactor, self.link, self.cells, self.stats = reactor, link, cells, stats
        self.paused = False
        self.nextId = 1
        link.setCellReceiver(self.received)
        link.registerProducer(self, True)
        self.pump()

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        if self.paused:
            self.paused = False
            self.reactor.callLater(0, self.pump)

    def stopProducing(self):
        self.paused = True

    def pump(self):
        from meshvpn.onion.cells import Command

        if self.paused or self.link.state.value == "closed":
            return
        batch = []
        for i in range(64):
            circId = 0x80000000 | self.nextId
            self.nextId = self.nextId % 0x7FFFFFFF + 1
            skin = self.cells[(self.nextId + i) % len(self.cells)]
            batch.append(circId.to_bytes(4, "big") + bytes([Command.CREATE2]) + skin)
        self.stats["create2_sent"] += len(batch)
        self.link.sendCells(batch)
        self.reactor.callLater(0, self.pump)

    def received(self, cells):
        from meshvpn.onion.cells import Command, DestroyReason
        from meshvpn.onion.destroy import destroyCell

        back = []
        for cell in cells:
            if cell[4] == Command.CREATED2:
                self.stats["created"] += 1
                back.append(destroyCell(int.from_bytes(cell[:4], "big"), DestroyReason.REQUESTED))
            elif cell[4] == Command.DESTROY:
                self.stats["refused"] += 1
        if back:
            self.link.sendCells(back)


async def _attack(reactor, info, onionKey, floodLinks, linkFlood, ready, stats):
    from twisted.internet import defer

    from meshvpn.link.cellsize import CELL_SIZE
    from meshvpn.onion import ntor
    from meshvpn.onion.cells import HTYPE_NTOR, Create2

    nodeId = bytes.fromhex(info["node_id"])
    body = CELL_SIZE - 5
    skins = [Create2(HTYPE_NTOR, ntor.clientCreate(nodeId, onionKey)[1]).encode().ljust(body, b"\0") for _ in range(256)]
    # CREATE2 flood: each link from its own manager (one manager keeps one link per peer).
    for _ in range(floodLinks):
        try:
            link = await _linkManager(reactor, FLOOD_HOST).getLink(_relayTarget(info))
        except Exception:
            stats["flood_links_failed"] += 1
            continue
        stats["flood_links"] += 1
        _Flooder(reactor, link, skins, stats)

    # Link flood: attempts kept in flight from another address.
    target = _relayTarget(info)

    def another(_=None):
        manager = _linkManager(reactor, LINKS_HOST)
        stats["link_attempts"] += 1
        d = manager.getLink(target)

        def opened(link):
            stats["links_opened"] += 1
            link.close(None)

        def failed(f):
            stats["links_refused"] += 1

        d.addCallbacks(opened, failed)
        d.addBoth(lambda _: reactor.callLater(0, another))

    for _ in range(linkFlood):
        another()
    with open(ready, "w"):
        pass
    await defer.Deferred()  # until terminated


def attackMain(argv):
    import collections
    import signal

    from twisted.internet import defer, reactor

    info, onionKey, floodLinks, linkFlood, ready = json.loads(argv[0]), bytes.fromhex(argv[1]), int(argv[2]), int(argv[3]), argv[4]
    stats = collections.Counter()
    started = time.monotonic()

    def report(*_):
        stats["seconds"] = round(time.monotonic() - started, 2)
        for key in ("create2_sent", "created", "refused", "link_attempts", "links_opened", "links_refused"):
            stats[key + "_per_s"] = round(stats[key] / max(stats["seconds"], 0.001), 1)
        print(json.dumps(dict(stats)), flush=True)
        os._exit(0)

    signal.signal(signal.SIGTERM, report)
    defer.Deferred.fromCoroutine(_attack(reactor, info, onionKey, floodLinks, linkFlood, ready, stats)).addErrback(
        lambda f: (sys.stderr.write(f.getTraceback()), reactor.stop()))
    reactor.run(installSignalHandlers=False)  # SIGTERM is the report's cue, not the reactor's


if __name__ == "__main__":
    if sys.argv[1:2] == ["attack"]:
        attackMain(sys.argv[2:])
