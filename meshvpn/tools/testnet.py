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

`--hostile guard` makes relay1 the network's only guard and a hostile one
(L{meshvpn.onion.hostile}, switched on through the environment only tests
use): on the first cells of each of the first circuits the client uses, it
sends TRUNCATED, forges END, CONNECTED, RESOLVED and stream SENDMEs from its
own hop, and keeps everything the client sends afterwards.  `--check` then
passes only if the client closed those circuits and fetched the page
byte-exact through a later one, and if the guard's view (every cell the
client sent, with the guard's layer removed) holds neither the target nor
the request.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from meshvpn.client.socksparse import SocksError
from meshvpn.tools import socksclient, webfixture
from meshvpn.control.status import readStatus
from meshvpn.errors import MeshVPNError
from meshvpn import hybridkem
from meshvpn.hostport import formatHostPort, splitHostPort
from meshvpn.onion.hostile import ENV_PLAN, ENV_TESTING, VIEW_FILE
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
WEB_HOST = "127.3.0.1"  # the local web server the exits fetch from


def hopAddresses():
    """Every address a circuit's TCP hops end at: the relays' and the web server's."""
    return [host for _, _, host, _ in LAYOUT] + [WEB_HOST]

# The hostile guard of `--hostile guard`: each of the first 3 circuits that
# carry a cell is attacked every way a guard can at once, then swallowed;
# later circuits are carried honestly, so a client that defends itself
# still gets through.  Stream ids 1-64: what a client with sequential ids
# would use first.
HOSTILE_GUARD_PLAN = ("open=truncated+end:1-64+connected:1-64+resolved:1-64:6.6.6.6+sendme:1-64+swallow;"
                      "circuits=3")
HOSTILE_ATTEMPTS = 8
HOSTILE_ATTEMPT_TIMEOUT = 15.0


class Testnet:
    """The processes of one local network; L{stop} removes everything."""

    def __init__(self, out, base=None, nodeArgs=None, hostile=None):
        """@param nodeArgs: C{callable(name, host) -> [args]} added to each node's command line."""
        if hostile not in (None, "guard"):
            raise MeshVPNError(f"--hostile {hostile!r}: only 'guard' is supported")
        self.out = out
        self.nodeArgs = nodeArgs or (lambda name, host: [])
        self.base = base or tempfile.mkdtemp(prefix="meshvpn-testnet-")
        self.hostile = hostile
        self.hostileNode = None
        self.nodes = []
        self.web = None
        self.webPort = None
        self.webAddress = None
        self._webs = []  # every web server process started (stopped with the network)

    def node(self, name, role, host, extra, env=None):
        extra = list(extra) + self.nodeArgs(name, host)
        node = NodeProcess(role, os.path.join(self.base, name), extraArgs=extra, name=name, host=host, env=env)
        self.nodes.append(node)
        return node.start()

    def layout(self):
        """The relays to start; with a hostile guard, relay1 is the only guard and the rest are middles."""
        if self.hostile != "guard":
            return [(name, role, host, extra, None) for name, role, host, extra in LAYOUT]
        env = {ENV_TESTING: "1", ENV_PLAN: HOSTILE_GUARD_PLAN}
        out = []
        for name, role, host, extra in LAYOUT:
            if name == "relay1":
                out.append((name, role, host, ["--flags", "guard", *PRIVATE_NET], env))
            elif extra == ["--flags", "guard,middle", *PRIVATE_NET]:
                out.append((name, role, host, ["--flags", "middle", *PRIVATE_NET], None))
            else:
                out.append((name, role, host, extra, None))
        return out

    def start(self, timeout=90.0):
        started = time.monotonic()
        self.out("testnet: starting bootstrap node ...")
        boot = self.node("bootstrap", "relay", "127.2.0.1", ["--flags", "bootstrap"])
        bootUdp = boot.waitReady()["udp"]
        self.out(f"testnet: starting {len(LAYOUT)} relays and a client (DHT bootstrap {bootUdp}) ...")
        for name, role, host, extra, env in self.layout():
            node = self.node(name, role, host, extra + ["--bootstrap", bootUdp], env)
            if env is not None:
                self.hostileNode = node
                self.out(f"testnet: {name} is a HOSTILE guard (plan {HOSTILE_GUARD_PLAN})")
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
        self.out(f"testnet: dashboard of the client: {self.dashboardURL()}")
        self.out(f"testnet:   (a one-time login link; another: meshvpn dashboard --data-dir {self.client.dataDir})")

    def waitForDirectory(self, timeout=90.0):
        """
        Wait until the client's directory lists every relay of the network
        (the client starts as soon as one path fits; a test of a relay's
        death wants the alternatives a real network's client would know).
        """
        wanted = {n.info["node_id"] for n in self.nodes if n.role == "relay" and n.name != "bootstrap" and n.info}
        deadline = time.monotonic() + timeout
        while True:
            known = {r.get("node_id") for r in _relaysKnown(self.client.dataDir)}
            if wanted <= known:
                return
            if time.monotonic() > deadline:
                raise MeshVPNError(f"the client's directory lists {len(wanted & known)} of {len(wanted)} "
                                   f"nodes after {timeout:.0f}s")
            time.sleep(0.2)

    def dashboardURL(self):
        """A one-time login link to the client's dashboard (from its control API)."""
        from meshvpn.control.client import ControlClient

        return ControlClient.forDataDir(self.client.dataDir).post("/v1/login-link")["url"]

    def names(self):
        return {n.info["node_id"]: n.name for n in self.nodes if n.info}

    def describePath(self, path):
        names = self.names()
        return " -> ".join(next((v for k, v in names.items() if k.startswith(h[:16])), h[:8]) for h in path)

    def socksAddress(self):
        return splitHostPort(self.client.info["socks"])

    def startWeb(self, host=WEB_HOST):
        """Start a local web server on C{host}; @return: its C{(host, port)}."""
        portFile = os.path.join(self.base, f"web-{host}.port")
        web = subprocess.Popen(
            [sys.executable, "-m", "meshvpn.tools.webfixture", "--listen", f"tcp:0:interface={host}", "--port-file", portFile],
            stdout=open(os.path.join(self.base, f"web-{host}.log"), "wb"), stderr=subprocess.STDOUT,
        )
        self._webs.append(web)
        deadline = time.monotonic() + 30
        while not os.path.exists(portFile) or not open(portFile).read():
            if time.monotonic() > deadline or web.poll() is not None:
                raise MeshVPNError("the local web server did not start")
            time.sleep(0.05)
        port = int(open(portFile).read())
        if host == WEB_HOST:
            self.web, self.webPort = web, port
            self.webAddress = (host, port)
        return host, port

    def check(self, nbytes=CHECK_BYTES):
        if self.hostile is not None:
            return self.checkHostile(nbytes)
        host, port = self.startWeb()
        self.out(f"testnet: fetching http://{formatHostPort(host, port)}/bytes/{nbytes} through the circuit via SOCKS ...")
        status, body, ttfb, total = socksclient.httpGet(self.socksAddress(), host, port, f"/bytes/{nbytes}")
        ok = status == 200 and body == webfixture.body(nbytes)
        circuits = (readStatus(self.client.dataDir) or {}).get("circuits", {}).get("circuits", [])
        used = [c for c in circuits if not c.get("spare")] or circuits
        path = self.describePath(used[0]["path"]) if used else "?"
        self.out(f"testnet: path {path}")
        # Hybrid (X25519 + ML-KEM-768) on every hop is the default wherever ML-KEM works.
        pq = bool(used) and all(used[0].get("post_quantum_hops") or [False])
        self.out("testnet: handshakes " + ("post-quantum (X25519 + ML-KEM-768) on every hop" if pq
                                           else "NOT post-quantum on every hop"))
        if hybridkem.available() and not pq:
            ok = False
        # CGO relay crypto (tagging-resistant) on every hop is the default too.
        cgo = bool(used) and (used[0].get("relay_crypto") or []) == ["cgo"] * len(used[0]["path"])
        self.out("testnet: relay crypto " + ("CGO on every hop" if cgo else
                                             f"NOT CGO on every hop ({used[0].get('relay_crypto') if used else '?'})"))
        ok = ok and cgo
        self.out(
            f"testnet: HTTP {status}, {len(body)} bytes, first byte after {ttfb * 1000:.1f} ms, "
            f"all in {total * 1000:.1f} ms ({len(body) * 8 / total / 1e6:.1f} Mbit/s); "
            + ("bytes match" if ok else "BYTES DO NOT MATCH")
        )
        return ok

    def guardView(self):
        """What the hostile guard could read of everything the client sent (its view file)."""
        try:
            with open(os.path.join(self.hostileNode.dataDir, VIEW_FILE), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return b""

    def readable(self, host, port):
        """The client's secrets found in the hostile guard's view: the BEGIN target and the request."""
        view = self.guardView()
        needles = {"the BEGIN target": formatHostPort(host, port).encode(), "the HTTP request": b"GET /bytes/"}
        return [name for name, needle in needles.items() if needle in view], len(view)

    def checkHostile(self, nbytes):
        """
        Fetch through the hostile guard until a circuit it leaves alone
        carries the page; fail as soon as its view holds anything readable.
        """
        host, port = self.startWeb()
        path = f"/bytes/{nbytes}"
        self.out(f"testnet: fetching http://{formatHostPort(host, port)}{path} through the hostile guard ...")
        ok = False
        for attempt in range(1, HOSTILE_ATTEMPTS + 1):
            try:
                status, body, ttfb, total = socksclient.httpGet(
                    self.socksAddress(), host, port, path, timeout=HOSTILE_ATTEMPT_TIMEOUT
                )
            except (SocksError, OSError) as e:
                self.out(f"testnet:   attempt {attempt}: no page ({e})")
                leaked, _ = self.readable(host, port)
                if leaked:
                    break
                time.sleep(0.5)
                continue
            ok = status == 200 and body == webfixture.body(nbytes)
            self.out(f"testnet:   attempt {attempt}: HTTP {status}, {len(body)} bytes in {total * 1000:.1f} ms; "
                     + ("bytes match" if ok else "BYTES DO NOT MATCH"))
            break
        hostile = (readStatus(self.hostileNode.dataDir) or {}).get("hostile", {})
        leaked, viewed = self.readable(host, port)
        self.out(f"testnet: the hostile guard attacked {hostile.get('circuits_attacked', '?')} circuits "
                 f"(actions {hostile.get('actions', {})}); it read {viewed} bytes of the client's cells, "
                 + (f"among them {' and '.join(leaked)}: LEAKED" if leaked else "none of them the target or the request"))
        return ok and not leaked

    def stop(self):
        codes = {n.name: n.stop() for n in self.nodes}
        for web in self._webs:
            web.kill()
            web.wait()
        shutil.rmtree(self.base, ignore_errors=True)
        self.out("testnet: stopped " + ", ".join(f"{k} (exit {v})" for k, v in codes.items()))
        return codes


def _roleOf(node):
    if node.role in ("client", "issuer"):
        return node.role
    extra = node.extraArgs
    return extra[extra.index("--flags") + 1] if "--flags" in extra else "relay"


def _relaysKnown(dataDir):
    try:
        with open(os.path.join(dataDir, "relays.json")) as f:
            return json.load(f).get("relays", [])
    except (FileNotFoundError, ValueError, AttributeError):
        return []


def run(args, out):
    if getattr(args, "payments", False):
        from meshvpn.tools.paytestnet import run as runWithPayments

        return runWithPayments(args, out)
    net = Testnet(out, hostile=getattr(args, "hostile", None))
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
