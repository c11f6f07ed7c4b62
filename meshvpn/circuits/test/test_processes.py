"""Real processes on loopback: circuits from DHT descriptors only, a dead middle replaced, no history on disk."""

import os
import time

from twisted.trial import unittest

from meshvpn.tools import socksclient, webfixture
from meshvpn.control.status import STATUS_FILE, readStatus
from meshvpn.tools.testnet import Testnet


def usedCircuits(client):
    circuits = (readStatus(client.dataDir) or {}).get("circuits", {})
    return [c for c in circuits.get("circuits", []) if not c.get("spare")], circuits


class MiddleDiesTests(unittest.TestCase):
    def assertNoHistoryOnDisk(self, net, proxy, host, port):
        """While a stream is open, status.json shows it, but not where it goes (no --status-history)."""
        held = socksclient.connect(proxy, host, port)
        self.addCleanup(held.close)
        path = os.path.join(net.client.dataDir, STATUS_FILE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            streams = [s for c in usedCircuits(net.client)[0] for s in c.get("streams", [])]
            if streams:
                break
            time.sleep(0.1)
        else:
            self.fail("the open stream never appeared in status.json")
        with open(path) as f:
            text = f.read()
        self.assertNotIn(f"{host}:{port}", text)
        self.assertFalse(any("target" in s for s in streams), streams)
        held.close()

    def test_killMiddleYieldsNewWorkingCircuit(self):
        lines = []
        net = Testnet(lines.append)
        self.addCleanup(net.stop)
        net.start()
        host, port = net.startWeb()
        proxy = net.socksAddress()
        status, body, _, _ = socksclient.httpGet(proxy, host, port, "/bytes/5000")
        self.assertEqual(body, webfixture.body(5000))
        deadline = time.monotonic() + 10
        while not usedCircuits(net.client)[0] and time.monotonic() < deadline:
            time.sleep(0.1)  # the status file is rewritten every second
        [circuit] = usedCircuits(net.client)[0]
        self.assertNoHistoryOnDisk(net, proxy, host, port)
        names = net.names()
        middleId = circuit["path"][1]
        middle = next(n for n in net.nodes if n.info["node_id"] == middleId)
        self.assertIn(middle.name, names.values())
        middle.process.kill()  # no goodbye: its links just drop
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            used, circuits = usedCircuits(net.client)
            if circuits.get("rebuild_times_s") and used and middleId not in used[0]["path"]:
                break
            time.sleep(0.2)
        else:
            self.fail(f"no replacement circuit; client log:\n{net.client.logTail()}")
        took = circuits["rebuild_times_s"][0]
        self.assertIn("replacement circuit through", net.client.logTail(200000))
        status, body, _, _ = socksclient.httpGet(proxy, host, port, "/bytes/5000")
        self.assertEqual(body, webfixture.body(5000))
        print(f"\n    middle {middle.name} killed; replacement circuit {net.describePath(used[0]['path'])} "
              f"ready after {took * 1000:.1f} ms")
