"""A bridge behind obfs4: a client that knows only the bridge line builds a 3-hop circuit and fetches byte-exact.

Real processes on loopback: the test network (bootstrap, relays, exits),
one relay in bridge mode listening only through Debian's obfs4proxy, and
a client given nothing but the bridge line: no bootstrap, so every relay it
knows came through the bridge's link, and its UDP socket sends nothing.
"""

import os
import shutil

from twisted.trial import unittest

from meshvpn.control.status import readStatus
from meshvpn.link.pt.args import parseBridgeLine
from meshvpn.tools import socksclient, webfixture
from meshvpn.tools.testnet import PRIVATE_NET, Testnet
from meshvpn.hostport import splitHostPort

OBFS4PROXY = shutil.which("obfs4proxy") or "/usr/bin/obfs4proxy"


def requireObfs4(test):
    if not os.access(OBFS4PROXY, os.X_OK):
        if os.environ.get("CI") == "true":
            test.fail("obfs4proxy is not installed (bin/install installs it)")
        raise unittest.SkipTest("obfs4proxy is not installed")


def waitFor(predicate, timeout, what, nodes=()):
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        for node in nodes:
            if node.process.poll() is not None:
                raise AssertionError(f"{node.name} exited: {node.logTail()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; " + " | ".join(n.logTail()[-1500:] for n in nodes))
        time.sleep(0.2)


class BridgeTests(unittest.TestCase):
    timeout = 240

    def test_bridgedClientBuildsThreeHopsThroughObfs4(self):
        requireObfs4(self)
        net = Testnet(lambda line: None, base=os.path.abspath(self.mktemp()))
        self.addCleanup(net.stop)
        net.start(timeout=150)
        bootUdp = net.nodes[0].info["udp"]
        transport = f"obfs4 exec {OBFS4PROXY}"
        bridge = net.node("bridge", "relay", "127.31.0.1", [
            "--bootstrap", bootUdp, "--flags", "guard,middle", *PRIVATE_NET,
            "--transport", transport, "--link-transport", "obfs4", "--bridge-mode"])
        bridge.waitReady()
        linePath = os.path.join(bridge.dataDir, "bridge_line.txt")
        line = waitFor(lambda: os.path.exists(linePath) and open(linePath).read().strip(), 30, "the bridge line", [bridge])
        self.assertEqual(os.stat(linePath).st_mode & 0o777, 0o600)
        parsed = parseBridgeLine(line)
        self.assertEqual(parsed.nodeId.hex(), bridge.info["node_id"])
        self.assertEqual(parsed.address.host, "127.31.0.1")
        self.assertRegex(line, r"^obfs4 127\.31\.0\.1:\d+ [0-9a-f]{64} cert=\S+ iat-mode=0$")
        # the bridge line's cert is the one obfs4proxy wrote in its state dir
        with open(os.path.join(bridge.dataDir, "pt_state", "obfs4_bridgeline.txt")) as f:
            self.assertIn(dict(parsed.address.args)["cert"], f.read())

        client = net.node("bclient", "client", "127.41.0.1", ["--transport", transport, "--bridge", line])
        client.waitReady()

        def circuit():
            status = readStatus(client.dataDir) or {}
            return status.get("circuits", {}).get("circuits", [])

        circuits = waitFor(circuit, 120, "a circuit through the bridge", [client, bridge])
        self.assertEqual(len(circuits[0]["path"]), 3)
        self.assertTrue(bridge.info["node_id"].startswith(circuits[0]["path"][0][:16]), circuits[0]["path"])

        host, port = net.startWeb()
        status, body, _, _ = socksclient.httpGet(splitHostPort(client.info["socks"]), host, port, "/bytes/200000")
        self.assertEqual(status, 200)
        self.assertEqual(body, webfixture.body(200000))
        # the bridge is no public relay: the normal client's directory never lists it
        known = {r["node_id"] for r in _relays(net.client.dataDir)}
        self.assertNotIn(bridge.info["node_id"], known)
        # and the bridged client's UDP socket saw no datagram at all: it asked no DHT node, no STUN server
        counters = readStatus(client.dataDir)["node"]["udp_counters"]
        self.assertEqual({k: v for k, v in counters.items() if v}, {})


def _relays(dataDir):
    import json

    try:
        with open(os.path.join(dataDir, "relays.json")) as f:
            return json.load(f)["relays"]
    except (OSError, ValueError):
        return []
