"""`meshvpn bench paths`: the share of circuits a hostile fraction of relays sees, through the client's real choices.

A directory of C{relays} signed descriptors, a C{hostile} fraction of them
run by one attacker who announces whatever helps: a huge bandwidth, every
role, a decoy address listed first (under a transport name that sorts
first, each decoy in a /16 of its own) and no family, while the relays
really sit in a few /16s of the attacker's (C{hostileNetworks}).  Honest
relays announce bandwidth 0 (as relays do today), each in a /16 of its
own; some declare a family of two.  Every descriptor goes through
L{relayInfo}, as the client's directory does.

Then C{clients} simulated clients, each with its own in-memory
L{GuardSet} and L{CircuitManager} on a virtual clock, build C{paths}
circuits each (a new isolation key every ten minutes) to an HTTPS target.
Builds succeed at once, except through the honest guards the attacker
knocks offline (C{dos}: a fraction of honest guards that fail every build,
to push clients towards new guards).  Nothing runs but path selection and
guard code: no processes, no sockets, the same numbers for the same seed.

It prints the fraction of built circuits whose guard, exit, and both, are
hostile, beside the hostile share of the relays that may take each
position, and the most guards any one client connected to.
"""

import math
import random
import time

from nacl.public import PrivateKey
from nacl.signing import SigningKey
from twisted.internet import defer
from twisted.internet.task import Clock

from meshvpn.circuits.guards import GuardSet
from meshvpn.circuits.manager import CircuitBuildFailed, CircuitManager
from meshvpn.circuits.relayinfo import relayInfo
from meshvpn.dht.descriptor import makeDescriptor
from meshvpn.errors import MeshVPNError
from meshvpn.identity import NodeIdentity
from meshvpn.tools.benchoutput import report

START = 1_800_000_000
TARGET = ("203.0.113.80", 443)
HUGE_BANDWIDTH = 10**15


def addArguments(p):
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--relays", type=int, default=500, help="relays in the directory (default 500)")
    p.add_argument("--hostile", type=float, default=0.1, help="fraction of relays the attacker runs (default 0.1)")
    p.add_argument("--hostile-networks", type=int, default=None,
                   help="/16s the attacker's relays really sit in (default: one per 10 hostile relays)")
    p.add_argument("--honest-exits", type=float, default=1.0,
                   help="fraction of honest relays that are exits (default 1.0; hostile relays always claim exit)")
    p.add_argument("--clients", type=int, default=400, help="simulated clients, each with its own guards (default 400)")
    p.add_argument("--paths", type=int, default=5, help="circuits each client builds (default 5)")
    p.add_argument("--dos", type=float, default=0.0,
                   help="fraction of honest guards the attacker knocks offline (default 0)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")


def command(args):
    result = benchPaths(args.relays, args.hostile, args.clients, args.paths, hostileNetworks=args.hostile_networks,
                        honestExits=args.honest_exits, dos=args.dos, seed=args.seed)
    report(result, args.json)
    return 0


def _identity(rng):
    return NodeIdentity(SigningKey(rng.randbytes(32)), PrivateKey(rng.randbytes(32)))


def _freshNetwork(rng, taken):
    while True:
        net = (rng.randrange(1, 224), rng.randrange(256))
        if net not in taken and net[0] not in (10, 127):
            taken.add(net)
            return net


def _host(net, rng):
    return f"{net[0]}.{net[1]}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


def directory(relays, hostile, rng, hostileNetworks=None, honestExits=1.0):
    """
    @return: C{(infos, hostileIds)}: L{relayInfo}s of signed descriptors,
        and the node ids of the attacker's relays.
    """
    nHostile = round(relays * hostile)
    taken = set()
    attackerNets = [_freshNetwork(rng, taken) for _ in range(hostileNetworks or max(1, nHostile // 10))]
    descriptors, hostileIds = [], set()
    for i in range(nHostile):
        ident = _identity(rng)
        addresses = [("aaa", f"{_host(_freshNetwork(rng, taken), rng)}:443"),  # the decoy, listed first
                     ("tls", f"{_host(attackerNets[i % len(attackerNets)], rng)}:9001")]
        descriptors.append(makeDescriptor(ident, addresses, {"guard", "middle", "exit"}, START,
                                          exitPolicy="accept 1-65535", bandwidth=HUGE_BANDWIDTH))
        hostileIds.add(ident.nodeId)
    honest = [_identity(rng) for _ in range(relays - nHostile)]
    families = {}
    for a, b in zip(honest[0:20:2], honest[1:20:2]):  # ten honest operators with two relays each
        families[a.nodeId], families[b.nodeId] = [b.nodeId], [a.nodeId]
    for ident in honest:
        flags = {"guard", "middle"} | ({"exit"} if rng.random() < honestExits else set())
        descriptors.append(makeDescriptor(ident, [("tls", f"{_host(_freshNetwork(rng, taken), rng)}:9001")], flags,
                                          START, exitPolicy="accept 1-65535", family=families.get(ident.nodeId, ())))
    infos = [r for r in (relayInfo(d) for d in descriptors) if r is not None]
    rng.shuffle(infos)
    return infos, hostileIds


class _Circuit:
    def whenClosed(self):
        return defer.Deferred()

    def close(self, reason):
        pass


class _Client:
    """One client: its own guards and circuit manager; its builder only records paths."""

    def __init__(self, relays, offline, rng):
        self.clock = Clock()
        self.clock.advance(START)
        self.offline = offline
        self.built = []
        self.guards = GuardSet(None, self.clock, random.Random(rng.getrandbits(64)))
        self.manager = CircuitManager(self.clock, lambda: defer.succeed(relays), self._build, guards=self.guards,
                                      spares=0, rng=random.Random(rng.getrandbits(64)))
        self.connected = set()

    def _build(self, path):
        self.connected.add(path[0].nodeId)
        if path[0].nodeId in self.offline:
            return defer.fail(CircuitBuildFailed("guard unreachable", hop=0))
        self.built.append(path)
        return defer.succeed(_Circuit())

    def run(self, paths):
        for n in range(paths):
            d = self.manager.getCircuit(TARGET, isolation=n)
            d.addErrback(lambda f: f.trap(MeshVPNError))
            self.clock.advance(600)


def benchPaths(relays, hostile, clients, paths, hostileNetworks=None, honestExits=1.0, dos=0.0, seed=1):
    started = time.perf_counter()
    rng = random.Random(seed)
    infos, hostileIds = directory(relays, hostile, rng, hostileNetworks, honestExits)
    honestGuards = sorted(r.nodeId for r in infos if "guard" in r.roles and r.nodeId not in hostileIds)
    offline = set(rng.sample(honestGuards, round(len(honestGuards) * dos)))
    built, tried = [], []
    for _ in range(clients):
        client = _Client(infos, offline, rng)
        client.run(paths)
        built.extend(client.built)
        tried.append(len(client.connected))
    n = len(built)
    guardHostile = sum(p[0].nodeId in hostileIds for p in built)
    exitHostile = sum(p[2].nodeId in hostileIds for p in built)
    both = sum(p[0].nodeId in hostileIds and p[2].nodeId in hostileIds for p in built)
    shareGuards = _share(infos, hostileIds, "guard", offline)
    shareExits = _share(infos, hostileIds, "exit")
    errGuard = 2 * math.sqrt(shareGuards * (1 - shareGuards) / max(clients, 1))  # a client keeps its guard
    errExit = 2 * math.sqrt(shareExits * (1 - shareExits) / max(n, 1))
    square = shareGuards * shareExits
    errBoth = 2 * math.sqrt(square * (1 - square) / max(clients, 1))
    result = {
        "relays": len(infos),
        "hostile": hostile,
        "hostile_relays": len(hostileIds),
        "hostile_networks": hostileNetworks or max(1, len(hostileIds) // 10),
        "honest_guards_offline": len(offline),
        "clients": clients,
        "paths": n,
        "hostile_share_guards": round(shareGuards, 4),
        "hostile_share_exits": round(shareExits, 4),
        "hostile_guard_fraction": round(guardHostile / n, 4) if n else None,
        "hostile_exit_fraction": round(exitHostile / n, 4) if n else None,
        "hostile_guard_and_exit_fraction": round(both / n, 4) if n else None,
        "sampling_error_guard": round(errGuard, 4),
        "sampling_error_exit": round(errExit, 4),
        "sampling_error_guard_and_exit": round(errBoth, 4),
        "guards_connected_max": max(tried, default=0),
        "seed": seed,
    }
    result["within_goal"] = bool(n) and (
        guardHostile / n <= shareGuards + errGuard
        and exitHostile / n <= shareExits + errExit
        and both / n <= square + errBoth
    )
    result["wall_s"] = round(time.perf_counter() - started, 2)
    return result


def _share(infos, hostileIds, role, unusable=()):
    """The hostile fraction, by count, of the relays that may take C{role} (and are not knocked offline)."""
    eligible = [r.nodeId for r in infos if role in r.roles and r.nodeId not in unusable]
    return sum(n in hostileIds for n in eligible) / len(eligible) if eligible else 0.0
