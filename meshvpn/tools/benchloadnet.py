"""The network the load and chaos benches run on: real processes on loopback, bigger than `meshvpn testnet`'s.

A bootstrap node, C{guards} guard/middle relays and C{exits} exits (at
least 8 relays in all), C{clients} client processes, each node on its own
loopback /16 as in L{meshvpn.tools.testnet}, and the local web server.
Clients keep no spare circuit, so a user's first fetch times a real build,
and sample the relay directory every 10 s (not 300), so the chaos bench's
restarted relays (new ports) are found again within its run.
Built on L{meshvpn.tools.testnet.Testnet}'s process handling and cleanup.
"""

import time

from meshvpn.control.status import readStatus
from meshvpn.errors import MeshVPNError
from meshvpn.tools.testnet import EXIT_ARGS, PRIVATE_NET, Testnet


def relayLayout(guards, exits):
    """C{[(name, host, extra args)]}: guards on 127.31-.., exits on 127.51-.."""
    out = [(f"relay{i + 1}", f"127.{31 + i}.0.1", ["--flags", "guard,middle", *PRIVATE_NET]) for i in range(guards)]
    out += [(f"exit{i + 1}", f"127.{51 + i}.0.1", EXIT_ARGS) for i in range(exits)]
    return out


class LoadNet:
    """The processes; L{stop} removes everything (also after a failed start)."""

    def __init__(self, out, guards=6, exits=4, clients=2, sampleInterval=10):
        if guards + exits < 8:
            raise MeshVPNError("the load network has at least 8 relays")
        self.out = out
        self.net = Testnet(out)
        self.guards, self.exits, self.clients = guards, exits, clients
        # clients re-read the relay directory this often: a restarted relay's new ports are found
        self.sampleInterval = sampleInterval
        self.boot = None
        self.relays = []
        self.clientNodes = []
        self.bootUdp = None

    def start(self, timeout=300.0):
        # generous: on a starved shared machine (load average 60+) relays take minutes to publish
        started = time.monotonic()
        self.boot = self.net.node("bootstrap", "relay", "127.2.0.1", ["--flags", "bootstrap"])
        self.bootUdp = self.boot.waitReady()["udp"]
        for name, host, extra in relayLayout(self.guards, self.exits):
            self.relays.append(self.net.node(name, "relay", host, extra + ["--bootstrap", self.bootUdp]))
        for i in range(self.clients):
            self.clientNodes.append(self.net.node(f"client{i + 1}", "client", f"127.{71 + i}.0.1",
                                                  ["--bootstrap", self.bootUdp, "--circuits-spare", "0",
                                                   "--dht-sample-interval", str(self.sampleInterval)]))
        for node in self.net.nodes:
            node.waitReady(timeout=120)
        self.web = self.net.startWeb()
        # Ready once every client knows every relay (it built nothing yet: no spares).
        want = self.guards + self.exits
        while True:
            known = [len(_relaysOf(c)) for c in self.clientNodes]
            if all(k >= want for k in known):
                break
            for node in self.net.nodes:
                if node.process.poll() is not None:
                    raise MeshVPNError(f"{node.name} exited early: {node.logTail()}")
            if time.monotonic() - started > timeout:
                raise MeshVPNError(f"clients know {known} of {want} relays after {timeout:.0f}s")
            time.sleep(0.5)
        self.out(f"load network: bootstrap, {self.guards} guards, {self.exits} exits, {self.clients} clients "
                 f"up in {time.monotonic() - started:.1f}s")

    def socksAddresses(self):
        return [c.info["socks"] for c in self.clientNodes]

    def relayPids(self):
        return {n.name: n.process.pid for n in self.relays}

    def nodeNamed(self, name):
        return next(n for n in self.net.nodes if n.name == name)

    def stop(self):
        return self.net.stop()


def _relaysOf(node):
    from meshvpn.tools.testnet import _relaysKnown

    return _relaysKnown(node.dataDir)


def statusOf(node):
    return readStatus(node.dataDir) or {}


def findKey(tree, key):
    """The first value under C{key} anywhere in nested dicts (status layouts differ per role)."""
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        for value in tree.values():
            found = findKey(value, key)
            if found is not None:
                return found
    return None
