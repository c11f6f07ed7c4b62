"""The control plane of a running testnet: circuit events, steering, the CLI, and metrics during a fetch.

Real twistd processes on loopback (L{Testnet}); the tests talk to them as
a user would, through the control API (L{ControlClient}), the `meshvpn`
CLI, and a Prometheus scrape.
"""

import io
import json
import os
import queue
import re
import shutil
import subprocess
import threading
import time
import urllib.request
from contextlib import redirect_stdout

from twisted.trial import unittest

from meshvpn.control.client import ControlClient
from meshvpn.tools.testnet import Testnet


def startTestnet(testCase, nodeArgs=None):
    """A running testnet; C{net.printed} holds the lines `meshvpn testnet` would print."""
    printed = []
    net = Testnet(printed.append, nodeArgs=nodeArgs)
    net.printed = printed
    testCase.addCleanup(net.stop)
    net.start()
    return net


def follow(client, types=None):
    """Events from the node in a thread: @return: a queue of events and a stop function."""
    events = queue.Queue()
    stopped = threading.Event()

    def run():
        try:
            for event in client.events(types):
                events.put(event)
                if stopped.is_set():
                    return
        except Exception as e:  # the node stopped: the test sees the queue run dry
            events.put({"type": "error", "data": str(e)})

    threading.Thread(target=run, daemon=True).start()
    return events, stopped.set


def waitFor(events, match, timeout=30.0):
    """The first event, already received or still to come, that C{match}es (events are kept in C{events.seen})."""
    seen = events.__dict__.setdefault("seen", [])
    for event in seen:
        if match(event):
            return event
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            event = events.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            break
        seen.append(event)
        if match(event):
            return event
    raise AssertionError(f"no matching event within {timeout}s; saw {[e['type'] for e in seen][-20:]}")


class CircuitEventsTests(unittest.TestCase):
    """One testnet: events when circuits are built and closed, and the user's actions on them."""

    def test_circuitEventsAndSteering(self):
        net = startTestnet(self)
        client = ControlClient.forDataDir(net.client.dataDir)
        events, stop = follow(client, ["circuit", "newnym", "relay"])
        self.addCleanup(stop)
        circuits = client.get("/v1/circuits")["circuits"]
        live = [c for c in circuits if c["state"] != "closed"]
        self.assertTrue(live)
        first = live[0]
        self.assertEqual(len(first["hops"]), 3)
        self.assertTrue(all(h["known"] for h in first["hops"]))

        # closing a circuit: a closed event at once, and the spare it was is built again
        client.post(f"/v1/circuits/{first['id']}/close")
        closed = waitFor(events, lambda e: e["type"] == "circuit.closed" and e["data"]["id"] == first["id"])
        self.assertEqual(closed["data"]["state"], "closed")
        self.assertIn("FINISHED", closed["data"]["reason"])
        built = waitFor(events, lambda e: e["type"] == "circuit.built" and e["data"]["id"] > first["id"])
        self.assertEqual(len(built["data"]["hops"]), 3)

        # new identity: the spare closes and a new one is built
        self.assertGreaterEqual(client.post("/v1/newnym")["retired"], 1)
        waitFor(events, lambda e: e["type"] == "newnym")
        waitFor(events, lambda e: e["type"] == "circuit.closed" and e["data"]["id"] == built["data"]["id"])
        rebuilt = waitFor(events, lambda e: e["type"] == "circuit.built" and e["data"]["id"] > built["data"]["id"])

        # excluding the middle: circuits through it close, and no new path uses it
        middle = rebuilt["data"]["hops"][1]["id"]
        result = client.post(f"/v1/relays/{middle[:12]}/exclude")
        self.assertEqual((result["relay"], result["excluded"]), (middle, True))
        self.assertEqual(result["circuits_closed"], 1)
        again = waitFor(events, lambda e: e["type"] == "circuit.built" and e["data"]["id"] > rebuilt["data"]["id"])
        self.assertNotIn(middle, [h["id"] for h in again["data"]["hops"]])
        relays = {r["id"]: r for r in client.get("/v1/relays")["relays"]}
        self.assertTrue(relays[middle]["excluded"])

        # pinning an exit: new circuits end there
        exits = sorted(h for h, r in relays.items() if "exit" in r["flags"] and h != middle)
        pinned = exits[0]
        client.post(f"/v1/relays/{pinned}/pin", {"position": "exit"})
        client.post("/v1/newnym")
        latest = waitFor(events, lambda e: e["type"] == "circuit.built" and e["data"]["id"] > again["data"]["id"])
        self.assertEqual(latest["data"]["hops"][2]["id"], pinned)
        with open(os.path.join(net.client.dataDir, "steering.json")) as f:
            self.assertEqual(json.load(f), {"pinned": {"exit": pinned}, "excluded": [middle]})
        client.post(f"/v1/relays/{pinned}/clear")
        self.assertEqual(client.get("/v1/status")["steering"], {"pinned": {}, "excluded": [middle]})

    def test_cli(self):
        """`meshvpn status|circuits|relays|events|newnym|set|dashboard` against the running client."""
        from meshvpn.cli import main

        net = startTestnet(self)
        dataDir = net.client.dataDir

        def run(*argv):
            out = io.StringIO()
            with redirect_stdout(out):
                code = main([*argv, "--data-dir", dataDir])
            return code, out.getvalue()

        code, out = run("status")
        self.assertEqual(code, 0)
        self.assertIn("role client", out)
        self.assertIn("nat        no-nat  public 127.1.0.1:", out)
        self.assertRegex(out, r"relays known \d")
        code, out = run("status", "--json")
        self.assertEqual(json.loads(out)["node"]["role"], "client")
        code, out = run("circuits")
        self.assertRegex(out, r"^\s+1  (in-use|spare)\s")
        self.assertEqual(out.splitlines()[0].count("->"), 2)
        code, out = run("relays", "--json")
        self.assertGreaterEqual(len(json.loads(out)["relays"]), 4)
        code, out = run("set", "circuits-spare", "2")
        self.assertEqual((code, out.strip()), (0, "circuits-spare = 2"))
        err = io.StringIO()
        from contextlib import redirect_stderr

        with redirect_stderr(err):
            code, out = run("set", "circuits-spare", "many")
        self.assertEqual(code, 1)
        self.assertEqual(err.getvalue().strip(), "meshvpn set: error: key 'circuits-spare' in control request: "
                         "expected a whole number 0 or more, got 'many'")
        code, out = run("newnym")
        self.assertIn("new identity:", out)
        code, out = run("events", "--types", "bandwidth", "--count", "2", "--json")
        self.assertEqual([json.loads(line)["type"] for line in out.splitlines()], ["bandwidth", "bandwidth"])
        code, out = run("dashboard")
        self.assertRegex(out, r"^http://127\.1\.0\.1:\d+/login\?token=")
        with redirect_stderr(io.StringIO()) as err:
            code, out = run("vpn", "up")
        self.assertEqual(code, 1)
        self.assertIn("--tun", err.getvalue())  # a node started without --tun (the VPN: test_vpnswitch)

        # --json on each command: the API's answer as is
        checks = {
            ("status",): lambda v: v["node"]["role"] == "client" and "circuits" in v,
            ("circuits",): lambda v: any(len(c["hops"]) == 3 for c in v["circuits"]),
            ("relays",): lambda v: len(v["relays"]) >= 4,
            ("newnym",): lambda v: isinstance(v["retired"], int),
            ("set", "circuits-spare", "1"): lambda v: v == {"key": "circuits-spare", "value": 1},
            ("dashboard",): lambda v: v["url"].startswith("http://127.1.0.1:") and v["expires_in_s"] == 600,
            ("events", "--types", "bandwidth", "--count", "1"): lambda v: v["type"] == "bandwidth",
        }
        for argv, check in checks.items():
            code, out = run(*argv, "--json")
            self.assertEqual(code, 0, argv)
            self.assertTrue(check(json.loads(out)), f"{argv}: {out}")
        with redirect_stderr(io.StringIO()) as err:
            code, out = run("vpn", "down", "--json")
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(err.getvalue().count("\n"), 1)  # one line, no traceback

        # `meshvpn testnet` printed the client's dashboard login link
        self.assertTrue(any(re.match(r"testnet: dashboard of the client: http://127\.1\.0\.1:\d+/login\?token=[\w-]+$",
                                     line) for line in net.printed), net.printed)

    def test_streamsOnlyWithHistory(self):
        """Stream targets are the user's browsing history: in the API only while history is on, never in events."""
        from meshvpn.control.status import STATUS_FILE
        from meshvpn.tools import socksclient

        net = startTestnet(self)
        client = ControlClient.forDataDir(net.client.dataDir)
        events, stop = follow(client)
        self.addCleanup(stop)
        host, port = net.startWeb()
        target = f"{host}:{port}"
        held = socksclient.connect(net.socksAddress(), host, port)
        self.addCleanup(held.close)

        def streams():
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                answer = client.get("/v1/streams")
                counted = sum(c["streams"] for c in client.get("/v1/circuits")["circuits"])
                if counted:
                    return answer
                time.sleep(0.1)
            self.fail("the open stream never showed in /v1/circuits")

        self.assertEqual(streams(), {"history": False, "streams": []})
        self.assertEqual(client.post("/v1/settings", {"key": "status-history", "value": "true"})["value"], True)
        shown = streams()
        self.assertTrue(shown["history"])
        self.assertIn(target, [s["target"] for s in shown["streams"]])
        self.assertEqual(client.post("/v1/settings", {"key": "status-history", "value": "false"})["value"], False)
        self.assertEqual(streams(), {"history": False, "streams": []})
        time.sleep(1.2)  # status.json is rewritten every second: it follows the setting
        with open(os.path.join(net.client.dataDir, STATUS_FILE)) as f:
            self.assertNotIn(target, f.read())
        held.close()
        time.sleep(1.5)  # the stream's end, its log lines and a bandwidth tick reach the follower
        seen = []
        while not events.empty():
            seen.append(events.get())
        seen = getattr(events, "seen", []) + seen
        self.assertIn("bandwidth", {e["type"] for e in seen})
        self.assertNotIn(target, json.dumps(seen))


REFUSED = "127.3.0.9"


class MetricsTests(unittest.TestCase):
    """/metrics on every relay, opt-in; counters move during a fetch through the client's circuit."""

    def scrape(self, node):
        with urllib.request.urlopen(f"http://{node.info['metrics']}/metrics", timeout=10) as r:
            self.assertEqual(r.status, 200)
            return r.read().decode()

    def test_countersMoveDuringFetch(self):
        from prometheus_client.parser import text_string_to_metric_families

        def nodeArgs(name, host):
            # one address the exits refuse: no summary shows a single address, so clients still send it
            return ["--metrics-listen", f"{host}:0", *(["--exit-policy", f"reject {REFUSED}:*"] if "exit" in name else [])]

        net = startTestnet(self, nodeArgs=nodeArgs)
        client = ControlClient.forDataDir(net.client.dataDir)
        byId = {n.info["node_id"]: n for n in net.nodes}
        before = {}
        host, port = net.startWeb()
        # the circuit a fetch will use is the spare: its guard, middle and exit are scraped before and after
        [spare] = [c for c in client.get("/v1/circuits")["circuits"] if c["state"] == "spare"]
        path = [byId[h["id"]] for h in spare["hops"]]
        for node in path:
            before[node.name] = parse(self.scrape(node))
        from meshvpn.tools import socksclient

        status, body, _, _ = socksclient.httpGet(net.socksAddress(), host, port, "/bytes/500000")
        self.assertEqual(status, 200)
        texts = {node.name: self.scrape(node) for node in path}
        after = {name: parse(text) for name, text in texts.items()}
        guard, middle, exit = (n.name for n in path)
        for name in (guard, middle, exit):
            self.assertGreater(after[name]["meshvpn_link_cells_total"][("in",)],
                               before[name]["meshvpn_link_cells_total"][("in",)], name)
            self.assertGreater(after[name]["meshvpn_link_bytes_total"][("out",)], 500000, name)
            self.assertGreaterEqual(after[name]["meshvpn_relay_creates_total"][("accepted",)], 1, name)
            self.assertGreaterEqual(after[name]["meshvpn_links"][("open",)], 1, name)
            self.assertIn(("no-nat",), after[name]["meshvpn_nat_type"])
        self.assertEqual(after[exit]["meshvpn_exit_streams_total"][("connected",)],
                         before[exit]["meshvpn_exit_streams_total"][("connected",)] + 1)
        # cells relayed: the guard and the middle passed the body on toward the client (at most 498 bytes
        # of it a cell); the exit, where the circuit ends, relayed none of it (a few cells at most, were it
        # the middle of a spare circuit built meanwhile)
        def relayed(name, direction):
            return after[name]["meshvpn_relay_cells_total"][(direction,)] - before[name]["meshvpn_relay_cells_total"][(direction,)]

        for name in (guard, middle):
            self.assertGreaterEqual(relayed(name, "backward"), 500000 // 498, name)
            self.assertGreater(relayed(name, "forward"), 0, name)  # the request and the SENDMEs
        self.assertLess(relayed(exit, "backward"), 500000 // 498 // 10)
        self.assertEqual(client.get("/v1/status").get("relay"), None)  # a client relays nothing
        # the client: its circuits by state (the one the fetch used is in use)
        clientMetrics = parse(self.scrape(net.client))
        self.assertGreaterEqual(clientMetrics["meshvpn_circuits"][("in_use",)], 1)
        self.assertIn(("building",), clientMetrics["meshvpn_circuits"])
        # a target the exit's policy refuses, on the same circuit: a policy refusal
        from meshvpn.client.socksparse import SocksError

        self.assertRaises(SocksError, socksclient.connect, net.socksAddress(), REFUSED, port)
        refused = parse(self.scrape(byId[spare["hops"][2]["id"]]))["meshvpn_exit_streams_total"][("refused_policy",)]
        self.assertEqual(refused, after[exit]["meshvpn_exit_streams_total"][("refused_policy",)] + 1)
        self.assertGreater(after[guard]["meshvpn_dht_contacts"][()], 0)
        self.assertGreater(sum(after[guard]["meshvpn_dht_lookup_duration_seconds_count"].values()), 0)
        # every family parses, no label names a peer, client or destination
        for text in texts.values():
            families = list(text_string_to_metric_families(text))
            self.assertTrue(families)
            labels = {k for f in families for s in f.samples for k in s.labels}
            self.assertLessEqual(labels, {"direction", "state", "result", "type", "bucket", "le"})
            self.assertNotIn("127.3.0.1", text)
        promtool = shutil.which("promtool")
        if promtool is None:
            if os.environ.get("CI"):
                self.fail("promtool missing (bin/install installs Debian's prometheus)")
            return
        check = subprocess.run([promtool, "check", "metrics"], input=texts[exit], capture_output=True, text=True,
                               timeout=60)
        self.assertEqual(check.returncode, 0, check.stdout + check.stderr)

    def test_offByDefault(self):
        net = startTestnet(self)
        self.assertTrue(all("metrics" not in n.info for n in net.nodes))


def parse(text):
    """Prometheus text -> {sample name: {label values tuple: value}}."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = tuple(v for k, v in sorted(s.labels.items()) if k != "le")
            out.setdefault(s.name, {})[key] = out.get(s.name, {}).get(key, 0) + s.value
    return out
