"""Mesh mode in the NAT testbed (root; runs in CI): two ``twistd meshvpn-client``
processes behind different NAT boxes ping each other's TUN (mesh) addresses -- directly when the NATs let
a hole be punched, through the relay's TURN when they do not.  No exit.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time

from twisted.trial import unittest

from meshvpn.client.tunmesh import meshAddress
from meshvpn.identity import NodeIdentity
from meshvpn.test.rootenv import requireRoot
from meshvpn.webfixture import body

PAIRS = (("full-cone", "port-restricted", "direct"), ("symmetric", "symmetric", "relay"))


def meshWorld(testCase, pairs, workdir):
    """
    The NAT testbed with a NAT relay and one ``twistd meshvpn-client --tun
    --tun-capture false --mesh-relay ...`` per host, each knowing its pair's
    node id.  @return: C{(testbed, {name: info}, names in pair order)}.
    """
    from meshvpn.nat import matrix
    from meshvpn.processes import twistdPath
    from meshvpn.test import nattestbed

    tb = nattestbed.build(testCase, natTypes=(), meshvpnStun=False)
    relayNs = tb.addPublic("rly", [matrix.RELAY_IP])
    relayId = matrix.startRelay(tb, relayNs)
    ids, names = {}, []
    for i, (a, b, _expected) in enumerate(pairs):
        for t, side in ((a, 1), (b, 2)):
            name = f"{t}-{i}{side}"
            host = tb.addHost(name, t)
            if host.box is not None:
                tb.netns.exec(host.box, "nft", "-f", "-", input=matrix._INPUT_FIREWALL.format(wan=matrix._wanOf(tb, host)).encode())
            ids[name] = NodeIdentity.loadOrCreate(os.path.join(workdir, name)).nodeId
            names.append(name)
    infos = {}
    for i, _pair in enumerate(pairs):
        a, b = names[2 * i], names[2 * i + 1]
        for me, peer in ((a, b), (b, a)):
            dataDir = os.path.join(workdir, me)
            argv = [twistdPath(), "-n", "--pidfile=", "--logfile", os.path.join(dataDir, "twistd.log"), "meshvpn-client",
                    "--data-dir", dataDir, "--tun", "--tun-capture", "false",
                    "--mesh-relay", f"{relayId}@{matrix.RELAY_IP}:{matrix.RELAY_PORT}",
                    "--mesh-turn", f"{matrix.RELAY_IP}:{matrix.TURN_PORT}", "--mesh-peers", ids[peer].hex()]
            proc = tb.popen(me, argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
            infos[me] = {"dataDir": dataDir, "proc": proc, "peer": peer, "address": meshAddress(ids[me]),
                         "log": os.path.join(dataDir, "twistd.log")}
    deadline = time.monotonic() + 40
    for name, info in infos.items():
        while "mesh: registered" not in _read(info["log"]):
            if info["proc"].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mesh client {name} did not register: {_read(info['log'])[-2000:]}")
            time.sleep(0.05)
    return tb, infos, names


def _read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def meshPeers(info):
    """The mesh peers in the client's status file (rewritten every second)."""
    from meshvpn.control.status import readStatus

    return ((readStatus(info["dataDir"]) or {}).get("tun") or {}).get("mesh", {}).get("peers", {})


class MeshTests(unittest.TestCase):
    def test_meshPingDirectAndRelayed(self):
        requireRoot(self, tools=("ip", "nft", "ping"))
        workdir = tempfile.mkdtemp(prefix="mvmesh-")
        self.addCleanup(shutil.rmtree, workdir, True)
        tb, infos, names = meshWorld(self, PAIRS, workdir)
        for i, (_a, _b, expected) in enumerate(PAIRS):
            a, b = names[2 * i], names[2 * i + 1]
            target = infos[b]["address"]
            out = subprocess.run(["ip", "netns", "exec", tb.hosts[a].ns, "ping", "-c", "3", "-i", "0.2", "-w", "15",
                                  target], capture_output=True, text=True)
            self.assertEqual(out.returncode, 0, out.stdout + out.stderr + _read(infos[a]["log"])[-2000:])
            # The reply path: b answers a over the link a opened.
            back = subprocess.run(["ip", "netns", "exec", tb.hosts[b].ns, "ping", "-c", "2", "-i", "0.2", "-w", "5",
                                   infos[a]["address"]], capture_output=True, text=True)
            self.assertEqual(back.returncode, 0, back.stdout)
            deadline = time.monotonic() + 5
            while target not in meshPeers(infos[a]) and time.monotonic() < deadline:
                time.sleep(0.2)
            peers = meshPeers(infos[a])
            self.assertEqual(peers[target]["path"], expected, peers)
        # TCP with full-size segments over the direct mesh link (route MTU, MSS).
        a, b = names[0], names[1]
        portFile = os.path.join(workdir, "web.port")
        tb.popen(b, [sys.executable, "-m", "meshvpn.webfixture", "--listen", f"tcp:8080:interface={infos[b]['address']}",
                     "--port-file", portFile], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not os.path.exists(portFile) and time.monotonic() < deadline:
            time.sleep(0.05)
        fetched = os.path.join(workdir, "fetched")
        code = subprocess.run(["ip", "netns", "exec", tb.hosts[a].ns, "curl", "-sS", "--max-time", "10", "-o", fetched,
                               "-w", "%{http_code}", f"http://{infos[b]['address']}:8080/bytes/200000"],
                              capture_output=True, text=True)
        self.assertEqual(code.stdout, "200", code.stderr)
        with open(fetched, "rb") as f:
            self.assertEqual(f.read(), body(200000))
