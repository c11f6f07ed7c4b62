"""A real ``twistd meshvpn-client --turn-tcp`` on a host whose UDP is blocked: it reaches the DHT, loses its stream, comes back.

Namespaces from L{meshvpn.tools.nattestbed}: a DHT node (a meshvpn-relay) and
a TURN relay (L{meshvpn.tools.natmatrix.startRelay}, ``--turn-tcp``) on the
fake internet, and the client behind a box that drops all forwarded UDP.
Every DHT answer the client gets can only have come through its
allocation.  Its TCP connection to the relay is then destroyed with
``ss -K`` (both ends see a reset), and the client must allocate again and
talk to the DHT on the new allocation.  A second client pinned to another
node id never gets an allocation: the relay's TLS-bound proof names the
real relay, and the client says so.
"""

import os
import subprocess
import tempfile
import time

from twisted.trial import unittest

from meshvpn.control.status import readStatus
from meshvpn.hostport import formatHostPort
from meshvpn.tools import natmatrix, nattestbed
from meshvpn.tools.netns import requireRoot
from meshvpn.tools.processes import twistdPath

DHT_NODE = nattestbed.STUN_PRIMARY


def _waitUntil(check, proc, what, logPath, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"client exited ({proc.returncode}) waiting for {what}: {_tail(logPath)}")
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"not {what} after {timeout:.0f} s: {_tail(logPath)}")


def _tail(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()[-3000:]
    except OSError:
        return ""


class TurnTcpClientTests(unittest.TestCase):
    def test_udpBlockedClientReconnects(self):
        requireRoot(self, tools=("ip", "nft", "ss"))
        tb = nattestbed.build(self, natTypes=(), meshvpnStun=True)  # the meshvpn-relay there is our DHT node
        relayId = natmatrix.startRelay(tb, tb.addPublic("rly", [natmatrix.RELAY_IP]))
        host = tb.addHost("blocked", "udp-blocked")
        dataDir = tempfile.mkdtemp(prefix="turntcp-client-", dir=tb.workdir)
        logPath = os.path.join(dataDir, "twistd.log")
        relay = formatHostPort(natmatrix.RELAY_IP, natmatrix.TURN_TCP_PORT)
        proc = self._client(tb, host, dataDir, f"{relayId}@{relay}")
        wrongDir = tempfile.mkdtemp(prefix="turntcp-wrongpin-", dir=tb.workdir)
        wrong = self._client(tb, host, wrongDir, f"{'ab' * 32}@{relay}")

        def reached(previous=None):
            status = readStatus(dataDir) or {}
            turn, dht = status.get("turn_tcp") or {}, status.get("dht") or {}
            if turn.get("state") != "up" or turn.get("relayed") == previous:
                return None
            if not dht.get("contacts") or not turn.get("socket", {}).get("rx"):
                return None
            return turn

        first = _waitUntil(reached, proc, "up with a DHT contact", logPath, 120)
        self.assertEqual(first["relayed"].rsplit(":", 1)[0], natmatrix.RELAY_IP)  # the node's socket is at the relay
        self.assertIn("TURN over TCP: node socket up, relayed address " + first["relayed"], _tail(logPath))

        tb.run(host, "ss", "-K", "dst", natmatrix.RELAY_IP, "dport", "=", str(natmatrix.TURN_TCP_PORT))
        second = _waitUntil(lambda: reached(first["relayed"]), proc, "up again on a new allocation", logPath, 120)
        log = _tail(logPath)
        self.assertIn(f"TURN over TCP: stream to {relay} lost", log)
        self.assertEqual(second["lost"], 1)
        self.assertGreaterEqual(second["opened"], 2)
        self.assertIn("TURN over TCP: node socket up, relayed address " + second["relayed"], log)
        wrongLog = os.path.join(wrongDir, "twistd.log")
        _waitUntil(lambda: "not the abababababababab" in _tail(wrongLog), wrong, "refusing the unpinned relay", wrongLog, 60)
        self.assertEqual((readStatus(wrongDir) or {}).get("turn_tcp", {}).get("opened", 0), 0)
        for p in (proc, wrong):
            p.terminate()
            p.wait(30)

    def _client(self, tb, host, dataDir, turnTcp):
        argv = [twistdPath(), "-n", "--pidfile=", "--logfile", os.path.join(dataDir, "twistd.log"), "meshvpn-client",
                "--data-dir", dataDir, "--bootstrap", formatHostPort(*DHT_NODE), "--turn-tcp", turnTcp,
                "--socks-listen", "127.0.0.1:0", "--control-listen", "127.0.0.1:0", "--dht-sample-interval", "5"]
        return tb.popen(host, argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
