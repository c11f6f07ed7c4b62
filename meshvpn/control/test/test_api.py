"""The control API of a real client node on loopback: every endpoint, its guards, its settings, its events."""

import os
import stat

from twisted.internet import defer
from twisted.trial import unittest

from meshvpn.control.api import ROUTES
from meshvpn.control.auth import COOKIE_FILE
from meshvpn.control.test.helpers import API, startClientNode


class ControlAPITests(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.node = yield startClientNode(self)
        self.api = API(self.node)

    def test_cookieFile(self):
        """The cookie is 64 hex digits in a file only its owner may read, gone when the node stops."""
        path = os.path.join(self.node.dataDir, COOKIE_FILE)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertRegex(self.api.cookie, r"^[0-9a-f]{64}$")

    @defer.inlineCallbacks
    def test_cookieRemovedOnStop(self):
        yield self.node.stopService()
        self.assertFalse(os.path.exists(os.path.join(self.node.dataDir, COOKIE_FILE)))
        yield self.node.startService()  # the cleanup stops it again

    def test_loopbackOnly(self):
        self.assertTrue(self.api.address.startswith("127.0.0.1:"))

    @defer.inlineCallbacks
    def test_missingCookie(self):
        for method, path in (("GET", "/v1/status"), ("POST", "/v1/newnym"), ("GET", "/v1/events")):
            code, body, response = yield self.api.request(method, path, headers=self.api.headers(auth=False))
            self.assertEqual(code, 401, path)
            self.assertIn("authentication required", body["error"])

    @defer.inlineCallbacks
    def test_wrongCookie(self):
        headers = self.api.headers(auth=False, authorization="Bearer " + "0" * 64)
        code, body, _ = yield self.api.get("/v1/status", headers=headers)
        self.assertEqual(code, 401)
        headers = self.api.headers(auth=False, cookie="meshvpn_session=forged")
        code, body, _ = yield self.api.get("/v1/status", headers=headers)
        self.assertEqual(code, 401)

    @defer.inlineCallbacks
    def test_foreignHost(self):
        """DNS rebinding: a page at evil.example resolving to 127.0.0.1 sends its own name as Host."""
        for host in ("evil.example", f"evil.example:{self.api.address.split(':')[1]}", "127.0.0.1:1"):
            code, body, _ = yield self.api.get("/v1/status", headers={**self.api.headers(), "host": host})
            self.assertEqual(code, 403, host)
            self.assertIn("Host", body["error"])

    @defer.inlineCallbacks
    def test_foreignOrigin(self):
        """A tab on another site: refused before the cookie is looked at, GET or POST."""
        for origin in ("http://evil.example", "null", f"http://localhost.evil.example:{self.api.address.split(':')[1]}"):
            code, body, _ = yield self.api.post("/v1/newnym", headers=self.api.headers(origin=origin))
            self.assertEqual(code, 403, origin)
            code, _, _ = yield self.api.get("/v1/status", headers=self.api.headers(auth=False, origin=origin))
            self.assertEqual(code, 403, origin)
        code, body, _ = yield self.api.get("/v1/status", headers=self.api.headers(sec_fetch_site="cross-site"))
        self.assertEqual(code, 403)

    @defer.inlineCallbacks
    def test_ownOrigin(self):
        code, _, _ = yield self.api.get("/v1/status", headers=self.api.headers(origin=f"http://{self.api.address}",
                                                                               sec_fetch_site="same-origin"))
        self.assertEqual(code, 200)

    @defer.inlineCallbacks
    def test_everyReadEndpoint(self):
        code, index, _ = yield self.api.get("/v1")
        self.assertEqual(index["version"], 1)
        self.assertEqual(len(index["endpoints"]), len(ROUTES))
        expected = {
            "/v1/node": lambda b: b["role"] == "client" and b["node_id"] == self.node.identity.nodeIdHex,
            "/v1/status": lambda b: {"node", "nat", "dht", "links", "circuits", "vpn", "bandwidth"} <= set(b),
            "/v1/nat": lambda b: "type" in b,
            "/v1/dht": lambda b: b["relays_known"] == 0 and "contacts" in b,
            "/v1/relays": lambda b: b["relays"] == [],
            "/v1/links": lambda b: b["counts"]["open"] == 0,
            "/v1/circuits": lambda b: b["circuits"] == [],
            "/v1/streams": lambda b: b == {"history": False, "streams": []},
            "/v1/vpn": lambda b: b["configured"] is False and b["state"] == "off",
            "/v1/bandwidth": lambda b: b["interval_s"] == 1 and isinstance(b["samples"], list),
            "/v1/logs": lambda b: any("client started" in line["text"] for line in b["lines"]),
            "/v1/settings": lambda b: {s["key"] for s in b["settings"]} >= {"circuits-spare", "dht-sample-interval"},
        }
        gets = {p for m, p, _, _ in ROUTES if m == "GET" and "{" not in p and p not in ("/v1", "/v1/events")}
        self.assertEqual(gets, set(expected))
        for path, check in expected.items():
            code, body, response = yield self.api.get(path)
            self.assertEqual(code, 200, path)
            self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/json"])
            self.assertTrue(check(body), f"{path}: {body}")

    @defer.inlineCallbacks
    def test_unknownAndBadRequests(self):
        code, body, _ = yield self.api.get("/v1/nothing")
        self.assertEqual((code, "no endpoint /v1/nothing (GET /v1 lists them)"), (code, body["error"]))
        self.assertEqual(code, 404)
        code, body, _ = yield self.api.request("DELETE", "/v1/status")
        self.assertEqual(code, 405)
        code, body, _ = yield self.api.request("POST", "/v1/settings", raw=b"{not json")
        self.assertEqual((code, body["error"]), (400, "the request body is not valid JSON"))
        code, body, _ = yield self.api.request("POST", "/v1/settings", raw=b'{"key": "circuits-spare", "value": 2}',
                                               headers=self.api.headers(content_type="text/plain"))
        self.assertEqual(code, 415)
        code, body, _ = yield self.api.get("/v1/logs?level=loud")
        self.assertEqual(code, 400)
        code, body, _ = yield self.api.get("/v1/bandwidth?seconds=601")
        self.assertEqual(code, 400)

    @defer.inlineCallbacks
    def test_actionsWithoutCircuits(self):
        """A fresh client: new identity retires nothing; unknown circuit and relay are 404; no VPN is 409."""
        code, body, _ = yield self.api.post("/v1/newnym")
        self.assertEqual((code, body), (200, {"retired": 0}))
        code, body, _ = yield self.api.post("/v1/circuits/7/close")
        self.assertEqual((code, body["error"]), (404, "no open circuit 7"))
        code, body, _ = yield self.api.post("/v1/relays/abcdef0123/pin")
        self.assertEqual((code, body["error"]), (404, "no known relay abcdef0123"))
        code, body, _ = yield self.api.post("/v1/relays/xyz/exclude")
        self.assertEqual(code, 400)
        code, body, _ = yield self.api.post("/v1/vpn", {"up": True})
        self.assertEqual(code, 409)
        self.assertIn("--tun", body["error"])
        code, body, _ = yield self.api.post("/v1/nat/check")
        self.assertEqual(code, 200)
        self.assertIn("type", body)

    @defer.inlineCallbacks
    def test_setSetting(self):
        code, body, _ = yield self.api.post("/v1/settings", {"key": "circuits-spare", "value": "3"})
        self.assertEqual((code, body), (200, {"key": "circuits-spare", "value": 3}))
        code, body, _ = yield self.api.get("/v1/settings")
        self.assertIn({"key": "circuits-spare", "value": 3}, [{k: s[k] for k in ("key", "value")} for s in body["settings"]])

    @defer.inlineCallbacks
    def test_badSettingChangesNothing(self):
        """The same one line as the config file (its parser, its words); the value in force stays."""
        from meshvpn.config import resolveSettings
        from meshvpn.errors import ConfigError
        from meshvpn.roles import client

        before = (yield self.api.get("/v1/settings"))[1]
        code, body, _ = yield self.api.post("/v1/settings", {"key": "circuits-spare", "value": "-1"})
        self.assertEqual(code, 400)
        self.assertEqual(body["error"], "key 'circuits-spare' in control request: expected a whole number 0 or more, got '-1'")
        self.assertNotIn("\n", body["error"])
        # the config file says the same of the same value
        spare = [s for s in client.Options.schema if s.name == "circuits-spare"]
        e = self.assertRaises(ConfigError, resolveSettings, spare, {}, {"circuits-spare": "-1"}, "--config x.toml")
        self.assertEqual(str(e).split(": ", 1)[1], body["error"].split(": ", 1)[1])
        code, body, _ = yield self.api.post("/v1/settings", {"key": "udp", "value": "127.0.0.1:1"})
        self.assertEqual(code, 400)
        self.assertIn("cannot change while the node runs", body["error"])
        code, body, _ = yield self.api.post("/v1/settings", {"key": "no-such", "value": "1"})
        self.assertEqual(code, 400)
        self.assertIn("unknown key 'no-such'", body["error"])
        after = (yield self.api.get("/v1/settings"))[1]
        self.assertEqual(before, after)

    @defer.inlineCallbacks
    def test_eventsStream(self):
        """Settings changes, log lines and bandwidth ticks arrive without polling; Last-Event-ID resumes."""
        stream = yield self.api.events()
        yield self.api.post("/v1/settings", {"key": "circuits-spare", "value": 2})
        changed = yield stream.waitFor(lambda e: e["type"] == "settings.changed")
        self.assertEqual(changed["data"], {"key": "circuits-spare", "value": 2})
        tick = yield stream.waitFor(lambda e: e["type"] == "bandwidth")
        self.assertEqual(set(tick["data"]), {"t", "up", "down"})
        yield stream.close()
        resumed = yield self.api.events(headers={**self.api.headers(), "last-event-id": str(changed["id"] - 1)})
        again = yield resumed.waitFor(lambda e: e["type"] == "settings.changed")
        self.assertEqual(again["id"], changed["id"])
        yield resumed.close()

    @defer.inlineCallbacks
    def test_eventTypeFilter(self):
        stream = yield self.api.events("/v1/events?types=settings")
        yield self.api.post("/v1/settings", {"key": "circuits-spare", "value": 2})
        yield stream.waitFor(lambda e: e["type"] == "settings.changed")
        self.assertEqual({e["type"] for e in stream.events}, {"settings.changed"})
        yield stream.close()

    @defer.inlineCallbacks
    def test_dashboardLogin(self):
        """The one-time link sets an HttpOnly SameSite=Strict session and works once."""
        code, body, _ = yield self.api.post("/v1/login-link")
        self.assertEqual(code, 200)
        url = body["url"]
        self.assertTrue(url.startswith(f"http://{self.api.address}/login?token="))
        path = url.split(self.api.address, 1)[1]
        code, _, response = yield self.api.get(path, headers=self.api.headers(auth=False))
        self.assertEqual(code, 303)
        [cookie] = response.headers.getRawHeaders(b"set-cookie")
        self.assertIn(b"HttpOnly", cookie)
        self.assertIn(b"SameSite=strict", cookie)
        session = cookie.split(b";")[0].decode()
        code, _, _ = yield self.api.get("/v1/status", headers=self.api.headers(auth=False, cookie=session))
        self.assertEqual(code, 200)
        code, text, _ = yield self.api.get(path, headers=self.api.headers(auth=False))
        self.assertEqual(code, 401)  # spent
        code, page, response = yield self.api.get("/", headers=self.api.headers(auth=False))
        self.assertEqual(code, 200)
        self.assertIn(b"<title>MeshVPN node</title>", page)
        self.assertIn(b"frame-ancestors 'none'", response.headers.getRawHeaders(b"content-security-policy")[0])
