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

from meshvpn.tools.netns import requireRoot
from meshvpn.tools.meshworld import _read, meshPeers, meshWorld
from meshvpn.tools.webfixture import body

PAIRS = (("full-cone", "port-restricted", "direct"), ("symmetric", "symmetric", "relay"))


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
        tb.popen(b, [sys.executable, "-m", "meshvpn.tools.webfixture", "--listen", f"tcp:8080:interface={infos[b]['address']}",
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
