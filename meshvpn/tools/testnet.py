"""`meshvpn testnet`: a complete local MeshVPN network of real twistd processes on loopback.

One bootstrap node, four guard/middle relays, two exits and a client, each
on its own loopback /16 (127.0.0.0/8 is all loopback on Linux) so the path
rules (no two hops in one /16) hold as on the internet.  The client finds
the relays only through the DHT, builds a 3-hop circuit, and serves SOCKS.
`--check` then fetches a page from a local web server through that circuit
via SOCKS and exits 0 only if every byte matches.  Everything lives in a
temporary directory that is removed on exit.

Relays run with `--extend-allow-private true` (they extend to each other on
127.x, which a real relay refuses) and the exits with
`--exit-reject-private false`: the local web server is on loopback, which
a real exit always refuses.  (A narrower "accept
127.0.0.0/8:*, reject *:*" would not do: descriptors summarise a policy by
the ports it accepts for most addresses, as Tor's do, so such an exit would
advertise that it accepts nothing.)
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from meshvpn.tools import socksclient, webfixture
from meshvpn.control.status import readStatus
from meshvpn.errors import MeshVPNError
from meshvpn.hostport import formatHostPort, splitHostPort
from meshvpn.tools.processes import NodeProcess

# Every relay is on this machine's loopback: extending to 127.x is the point here.
PRIVATE_NET = ["--extend-allow-private", "true"]
EXIT_ARGS = ["--flags", "exit,middle", "--exit-reject-private", "false", *PRIVATE_NET]
LAYOUT = [
    # name, role, loopback host, extra args
    ("relay1", "relay", "127.11.0.1", ["--flags", "guard,middle", *PRIVATE_NET]),
    ("relay2", "relay", "127.12.0.1", ["--flags", "guard,middle", *PRIVATE_NET]),
    ("relay3", "relay", "127.13.0.1", ["--flags", "guard,middle", *PRIVATE_NET]),
    ("relay4", "relay", "127.14.0.1", ["--flags", "guard,middle", *PRIVATE_NET]),
    ("exit1", "relay", "127.21.0.1", EXIT_ARGS),
    ("exit2", "relay", "127.22.0.1", EXIT_ARGS),
]
CHECK_BYTES = 1_000_000


class Testnet:
    """The processes of one local network; L{stop} removes everything."""

    def __init__(self, out, base=None):
        self.out = out
        self.base = base or tempfile.mkdtemp(prefix="meshvpn-testnet-")
        self.nodes = []
        self.web = None
        self.webPort = None

    def node(self, name, role, host, extra):
        node = NodeProcess(role, os.path.join(self.base, name), extraArgs=extra, name=name, host=host)
        self.nodes.append(node)
        return node.start()

    def start(self, timeout=90.0):
        started = time.monotonic()
        self.out("testnet: starting bootstrap node ...")
        boot = self.node("bootstrap", "relay", "127.2.0.1", ["--flags", "bootstrap"])
        bootUdp = boot.waitReady()["udp"]
        self.out(f"testnet: starting {len(LAYOUT)} relays and a client (DHT bootstrap {bootUdp}) ...")
        for name, role, host, extra in LAYOUT:
            self.node(name, role, host, extra + ["--bootstrap", bootUdp])
        self.client = self.node("client", "client", "127.1.0.1", ["--bootstrap", bootUdp])
        for node in self.nodes:
            node.waitReady()
        for node in self.nodes:
            info = node.info
            where = " ".join(f"{k}={info[k]}" for k in ("udp", "stream", "socks") if k in info)
            self.out(f"testnet: {node.name:9} {_roleOf(node):12} id {info['node_id'][:16]}…  {where}")
        self.out("testnet: waiting for the client to find relays in the DHT and build a circuit ...")
        deadline = started + timeout
        shown = None
        while True:
            status = readStatus(self.client.dataDir) or {}
            circuits = status.get("circuits", {}).get("circuits", [])
            if circuits:
                break
            known = len(_relaysKnown(self.client.dataDir))
            if known != shown:
                self.out(f"testnet:   client knows {known} nodes from the DHT")
                shown = known
            for node in self.nodes:
                if node.process.poll() is not None:
                    raise MeshVPNError(f"{node.name} exited early: {node.logTail()}")
            if time.monotonic() > deadline:
                raise MeshVPNError(f"no circuit after {timeout:.0f}s; client log:\n{self.client.logTail()}")
            time.sleep(0.2)
        self.out(f"testnet: circuit {self.describePath(circuits[0]['path'])} ready; "
                 f"network up in {time.monotonic() - started:.2f}s")
        self.out(f"testnet: SOCKS5 proxy for applications: {self.client.info['socks']}  (data in {self.base})")

    def names(self):
        return {n.info["node_id"]: n.name for n in self.nodes if n.info}

    def describePath(self, path):
        names = self.names()
        return " -> ".join(next((v for k, v in names.items() if k.startswith(h[:16])), h[:8]) for h in path)

    def socksAddress(self):
        return splitHostPort(self.client.info["socks"])

    def startWeb(self):
        portFile = os.path.join(self.base, "web.port")
        self.web = subprocess.Popen(
            [sys.executable, "-m", "meshvpn.tools.webfixture", "--listen", "tcp:0:interface=127.3.0.1", "--port-file", portFile],
            stdout=open(os.path.join(self.base, "web.log"), "wb"), stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while not os.path.exists(portFile) or not open(portFile).read():
            if time.monotonic() > deadline or self.web.poll() is not None:
                raise MeshVPNError("the local web server did not start")
            time.sleep(0.05)
        self.webPort = int(open(portFile).read())
        return "127.3.0.1", self.webPort

    def check(self, nbytes=CHECK_BYTES):
        host, port = self.startWeb()
        self.out(f"testnet: fetching http://{formatHostPort(host, port)}/bytes/{nbytes} through the circuit via SOCKS ...")
        status, body, ttfb, total = socksclient.httpGet(self.socksAddress(), host, port, f"/bytes/{nbytes}")
        ok = status == 200 and body == webfixture.body(nbytes)
        circuits = (readStatus(self.client.dataDir) or {}).get("circuits", {}).get("circuits", [])
        used = [c for c in circuits if not c.get("spare")] or circuits
        path = self.describePath(used[0]["path"]) if used else "?"
        self.out(f"testnet: path {path}")
        self.out(
            f"testnet: HTTP {status}, {len(body)} bytes, first byte after {ttfb * 1000:.1f} ms, "
            f"all in {total * 1000:.1f} ms ({len(body) * 8 / total / 1e6:.1f} Mbit/s); "
            + ("bytes match" if ok else "BYTES DO NOT MATCH")
        )
        return ok

    def stop(self):
        codes = {n.name: n.stop() for n in self.nodes}
        if self.web is not None:
            self.web.kill()
            self.web.wait()
        shutil.rmtree(self.base, ignore_errors=True)
        self.out("testnet: stopped " + ", ".join(f"{k} (exit {v})" for k, v in codes.items()))
        return codes


def _roleOf(node):
    if node.role == "client":
        return "client"
    extra = node.extraArgs
    return extra[extra.index("--flags") + 1] if "--flags" in extra else "relay"


def _relaysKnown(dataDir):
    try:
        with open(os.path.join(dataDir, "relays.json")) as f:
            return json.load(f).get("relays", [])
    except (FileNotFoundError, ValueError, AttributeError):
        return []


def run(args, out):
    net = Testnet(out)
    try:
        net.start()
        if args.check:
            return 0 if net.check() else 1
        out("testnet: running; press Ctrl-C to stop")
        try:
            while all(n.process.poll() is None for n in net.nodes):
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        return 0
    finally:
        net.stop()
