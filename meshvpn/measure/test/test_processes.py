"""Real processes: a testnet whose middles are throttled to different rates is ranked right after one epoch.

relay1 is the only guard and exit1/exit2 the only exits, all unthrottled;
relay2, relay3 and relay4 are middles throttled (``--bandwidth-rate``) to
12, 36 and 108 KB/s.  The client downloads through many isolated circuits
(one per SOCKS username), so every middle carries what it can.  Every
relay meters its links and publishes a signed report per 20-second epoch;
the client reads them from the DHT and computes the weights
(``weights.json``).  The middles must come out measured and in the order
of their rates.
"""

import json
import os
import threading
import time

from twisted.trial import unittest

from meshvpn.measure.epoch import epochOf
from meshvpn.measure.service import WEIGHTS_FILE
from meshvpn.tools import socksclient
from meshvpn.tools.testnet import Testnet

EPOCH = 20
# three times apart, and low enough to be the bottleneck on a loaded machine
RATES = {"relay2": "12K", "relay3": "36K", "relay4": "108K"}
WORKERS = 15


def nodeArgs(name, host):
    args = ["--measure-epoch", str(EPOCH)]
    if name == "relay1":
        args += ["--flags", "guard"]
    elif name in RATES:
        args += ["--flags", "middle", "--bandwidth-rate", RATES[name], "--bandwidth-burst", RATES[name]]
    elif name.startswith("exit"):
        args += ["--flags", "exit"]
    return args


class ThrottledTestnetTests(unittest.TestCase):
    def test_throttledRelaysRankedByRate(self):
        lines = []
        net = Testnet(lines.append, nodeArgs=nodeArgs)
        self.addCleanup(net.stop)
        net.start()
        host, port = net.startWeb()
        stop = threading.Event()
        done = []

        def worker(i):
            while not stop.is_set():
                try:
                    socksclient.httpGet(net.socksAddress(), host, port, "/bytes/400000", sink=lambda chunk: None,
                                        username=f"load{i}", password="x", timeout=20)
                    done.append(i)
                except Exception:
                    time.sleep(0.5)

        threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(WORKERS)]
        for t in threads:
            t.start()
        self.addCleanup(lambda: [t.join(30) for t in threads])
        self.addCleanup(stop.set)
        firstFull = epochOf(time.time(), EPOCH) + 1
        ids = {n.name: n.info["node_id"] for n in net.nodes}
        path = os.path.join(net.client.dataDir, WEIGHTS_FILE)
        deadline = time.monotonic() + 5 * EPOCH + 60
        got = None
        while time.monotonic() < deadline:
            try:
                with open(path) as f:
                    body = json.load(f)
            except (OSError, ValueError):
                body = {}
            if (body.get("epoch") or 0) >= firstFull:
                byId = {r["node_id"]: r for r in body["relays"]}
                middles = [byId.get(ids[name]) for name in RATES]
                if all(m is not None and "measured" in m["flags"] for m in middles):
                    got = body
                    break
            time.sleep(1)
        stop.set()
        self.assertIsNotNone(got, f"no epoch measured every middle; last weights: {body}; downloads {len(done)}\n"
                                  + "\n".join(lines))
        byId = {r["node_id"]: r for r in got["relays"]}
        measured = [byId[ids[name]]["bandwidth"] for name in RATES]
        print(f"\nepoch {got['epoch']}: measured middles (B/s, both directions, both links) "
              + ", ".join(f"{name} ({RATES[name]}B/s) {bw:.0f}" for name, bw in zip(RATES, measured)))
        self.assertEqual(measured, sorted(measured), json.dumps(got, indent=1))
        # (the weights also ramp with each relay's streak, which depends on when its first circuit came)
