"""The NAT connectivity matrix: every pair of NAT types, connected for real through kernel NATs.

Built on the NAT testbed (L{meshvpn.tools.nattestbed}): two hosts behind each
NAT type (C{<type>-1} and C{<type>-2}, each behind its own box), a relay
on the public segment (a real ``twistd meshvpn-relay --nat-relay true
--turn ...``: relay signalling and a TURN server), and one
L{meshvpn.tools.natmatrixagent} process per host.  For each ordered pair of
types, host C{a-1} connects to host C{b-2} (punching, falling back to
TURN) and both push C{size} bytes each way over the datagram link,
checked byte for byte.

Which pairs must be direct: every pair except symmetric with symmetric
and symmetric with port-restricted, where the symmetric side's new port
toward the peer is unknowable and the other side only admits the exact
address it sent to.  Those must go through the relay.  A host whose box
drops all UDP (C{udp-blocked}) runs its node socket on a TURN allocation
it reaches over TCP (C{--turn-tcp}); every pair with it goes that way
(path C{"turn-tcp"}): its peer punches to its relayed address, two such
hosts reach each other allocation to allocation.

The boxes get one addition to the testbed's rules: unsolicited UDP
addressed to the box itself is dropped in an input filter, as a home
router's firewall does.  Without it the kernel accepts such a packet
locally and keeps a conntrack entry for it, and that entry then forces the
box to pick a new port for the host's own outgoing flow to the same
remote -- a simultaneous-open collision that turns any Linux NAT that
lacks an input firewall into a symmetric one for the peer that probes
first.

Needs root (network namespaces, nftables).  Used by the root test and by
``meshvpn bench nat``.
"""

import json
import os
import select
import subprocess
import sys
import time

from meshvpn.hostport import formatHostPort

PAIR_TYPES = ("no-nat", "full-cone", "address-restricted", "port-restricted", "symmetric", "udp-blocked")
RELAY_IP = "198.18.0.5"
RELAY_PORT, TURN_PORT, TURN_TCP_PORT = 7000, 3478, 3478

_INPUT_FIREWALL = """
table ip natlink_input {{
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname "{wan}" meta l4proto udp ct state new drop
  }}
}}
"""


def expectedPath(a, b):
    if "udp-blocked" in (a, b):
        return "turn-tcp"
    relayed = {frozenset({"symmetric"}), frozenset({"symmetric", "port-restricted"})}
    return "relay" if frozenset({a, b}) in relayed else "direct"


class Agent:
    """One agent process: JSON lines in, JSON lines out, read with a deadline."""

    def __init__(self, name, proc):
        self.name, self.proc = name, proc
        self._buf = b""
        self.events = []

    def send(self, obj):
        self.proc.stdin.write((json.dumps(obj) + "\n").encode())
        self.proc.stdin.flush()

    def poll(self, timeout):
        """Read whatever lines arrive within C{timeout}; @return: new events."""
        fd = self.proc.stdout.fileno()
        new = []
        r, _, _ = select.select([fd], [], [], timeout)
        if r:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError(f"agent {self.name} exited ({self.proc.poll()}): {self.stderr()}")
            self._buf += chunk
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                try:
                    new.append(json.loads(line))
                except ValueError:
                    continue
        self.events += new
        return new

    def wait(self, match, timeout):
        deadline = time.monotonic() + timeout
        for e in self.events:
            if match(e):
                return e
        while time.monotonic() < deadline:
            for e in self.poll(min(0.2, max(0, deadline - time.monotonic()))):
                if match(e):
                    return e
        raise RuntimeError(f"agent {self.name}: timed out waiting; last events {self.events[-3:]}; {self.stderr()}")

    def stderr(self):
        if self.proc.poll() is None:
            return ""
        return self.proc.stderr.read().decode(errors="replace")[-1500:]


def _waitAll(agents, match, timeout):
    deadline = time.monotonic() + timeout
    out = {}
    while len(out) < len(agents):
        for a in agents:
            if a.name not in out:
                hits = [e for e in a.events if match(e)]
                if hits:
                    out[a.name] = hits[0]
                    continue
                a.poll(0.05)
        if time.monotonic() > deadline:
            missing = [a.name for a in agents if a.name not in out]
            raise RuntimeError(f"agents {missing} not ready in {timeout}s: " + "; ".join(a.stderr() for a in agents))
    return out


def _agentArgv(*args):
    return [sys.executable, "-m", "meshvpn.tools.natmatrixagent", *args]


COTURN_USER, COTURN_PASSWORD, COTURN_REALM = "meshvpn", "matrix-test-password", "meshvpn.test"


def build(testCase, types=PAIR_TYPES, size=1 << 20, classify=False, punchDeadline=2.5, coturn=False):
    """
    Build the testbed and start every agent.  With C{coturn}, peers that
    cannot punch allocate on a stock coturn (long-term credentials) instead
    of on our relay's TURN server.  @return: C{(testbed, agents)}.
    """
    from meshvpn.tools import nattestbed

    tb = nattestbed.build(testCase, natTypes=(), meshvpnStun=classify)
    turnArgs = ["--turn", formatHostPort(RELAY_IP, TURN_PORT)]
    if coturn:
        tb.startCoturn(extraArgs=["--lt-cred-mech", "--user", f"{COTURN_USER}:{COTURN_PASSWORD}", "--realm", COTURN_REALM,
                                  "--fingerprint", "--no-tcp-relay"])
        turnArgs = ["--turn", formatHostPort(*nattestbed.COTURN_PRIMARY), "--turn-user", COTURN_USER, "--turn-password", COTURN_PASSWORD]
    relayNs = tb.addPublic("rly", [RELAY_IP])
    relayId = startRelay(tb, relayNs)
    for t in types:
        for side in (1, 2):
            host = tb.addHost(f"{t}-{side}", t)
            if host.box is not None:
                wan = _wanOf(tb, host)
                tb.netns.exec(host.box, "nft", "-f", "-", input=_INPUT_FIREWALL.format(wan=wan).encode())
    agents = {}
    for name, host in tb.hosts.items():
        argv = _agentArgv(
            "peer", "--relay", formatHostPort(RELAY_IP, RELAY_PORT), "--relay-id", relayId,
            "--bytes", str(size), "--punch-deadline", str(punchDeadline), *turnArgs,
        )
        if host.natType == "udp-blocked":
            argv += ["--turn-tcp", formatHostPort(RELAY_IP, TURN_TCP_PORT)]
        agents[name] = Agent(name, tb.popen(host, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    ready = _waitAll(list(agents.values()), lambda e: e.get("event") in ("ready", "error"), 60)
    for name, e in ready.items():
        if e.get("event") != "ready":
            raise RuntimeError(f"agent {name} failed: {e}")
        agents[name].info = e
    return tb, agents


def startRelay(tb, ns):
    """A real C{twistd meshvpn-relay --nat-relay true --turn ...} in C{ns}.  @return: its node id (hex)."""
    import tempfile

    from meshvpn.tools.processes import twistdPath
    from meshvpn.tools.nattestbed import _waitFor

    dataDir = tempfile.mkdtemp(prefix="natrelay-", dir=tb.workdir)
    argv = [twistdPath(), "-n", "--pidfile=", "--logfile", os.path.join(dataDir, "twistd.log"), "meshvpn-relay"]
    argv += ["--data-dir", dataDir, "--udp", formatHostPort(RELAY_IP, RELAY_PORT), "--listen", f"tcp:0:interface={RELAY_IP}"]
    argv += ["--nat-relay", "true", "--turn", formatHostPort(RELAY_IP, TURN_PORT), "--turn-tcp", formatHostPort(RELAY_IP, TURN_TCP_PORT)]
    proc = tb.netns.popen(ns, argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    nodeFile = os.path.join(dataDir, "node.json")
    _waitFor(lambda: os.path.exists(nodeFile), proc, f"meshvpn-relay in {ns}", dataDir)
    with open(nodeFile) as f:
        return json.load(f)["node_id"]


def _wanOf(tb, host):
    from meshvpn.tools.nattestbed import _ifIn

    return _ifIn(tb.netns, host.box, host.publicAddress)


def runPair(agents, a, b, timeout=40.0):
    """Connect C{a-1} to C{b-2}, push the data both ways.  @return: a result row."""
    A, B = agents[f"{a}-1"], agents[f"{b}-2"]
    aId, bId = A.info["node_id"], B.info["node_id"]
    row = {"a": a, "b": b, "expected_path": expectedPath(a, b), "path": None, "connected": False,
           "connect_time_s": None, "verified": False}
    try:
        # B acts only on offers from peers it knows (as a mesh client knows its --mesh-peers).
        B.send({"cmd": "allow", "peer": aId})
        B.wait(lambda e: e.get("event") == "allowed" and e.get("peer") == aId, 10)
        A.send({"cmd": "connect", "peer": bId})
        conn = A.wait(lambda e: e.get("event") == "connected" and e.get("peer") == bId, timeout)
        if not conn.get("connected"):
            row["error"] = conn.get("error")
            return row
        row.update(path=conn["path"], connected=True, connect_time_s=conn["connect_time_s"])
        start = time.monotonic()
        doneA = A.wait(lambda e: e.get("event") == "done" and e.get("peer") == bId, timeout)
        doneB = B.wait(lambda e: e.get("event") == "done" and e.get("peer") == aId, timeout)
        row["transfer_s"] = round(time.monotonic() - start, 3)
        row["verified"] = bool(doneA["received_ok"] and doneB["received_ok"])
        row["bytes_each_way"] = doneA["bytes"]
    except RuntimeError as e:
        row["error"] = str(e)[:500]
    return row


def pairs(types=PAIR_TYPES, ordered=True):
    """
    C{(initiator type, answerer type)}: every ordered pair by default (36
    for six types), since who offers changes who probes first.
    """
    if ordered:
        return [(a, b) for a in types for b in types]
    return [(a, b) for i, a in enumerate(types) for b in types[i:]]


def runMatrix(testCase, types=PAIR_TYPES, size=1 << 20, classify=False, progress=None, pairList=None, coturn=False):
    """
    Build, run every pair, and (with C{classify}) classify every host with
    ``meshvpn netcheck``.  Everything is removed by C{testCase}'s
    cleanups.  @return: C{{"pairs": [...], "classified": [...]}}.
    """
    started = time.monotonic()
    tb, agents = build(testCase, types, size, classify, coturn=coturn)
    setup = time.monotonic() - started
    rows = []
    for a, b in pairList or pairs(types):
        row = runPair(agents, a, b)
        rows.append(row)
        if progress:
            progress(row)
    classified = []
    if classify:
        for r in tb.classify():
            classified.append({"host": r["host"], "expected": r["expected"], "detected": r["detected"]})
    for name, agent in agents.items():
        try:
            agent.proc.stdin.close()
        except OSError:
            pass
    return {"pairs": rows, "classified": classified, "setup_s": round(setup, 2),
            "total_s": round(time.monotonic() - started, 2), "bytes_each_way": size}
