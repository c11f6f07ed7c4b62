"""The control API: HTTP + JSON on loopback, version 1, with a Server-Sent Events stream.

One twisted.web resource answers every path (the routes are a table, so
doc/control.md and the code list the same endpoints).  Every request is
first checked by the L{Guard}: addressed to this node from its own pages
(else 403), then authenticated by the control cookie or a dashboard
session (else 401).  Answers are JSON; an error is C{{"error": "one
line"}} with a 4xx status.  C{GET /v1/events} streams the node's events
(see L{meshvpn.control.events}) as Server-Sent Events, resumable with
C{Last-Event-ID}; a client that cannot keep up is cut off rather than
buffered without bound, and resumes from where it was.

The dashboard's files and its one-time login link are served by the same
resource (L{meshvpn.control.dashboard}), so the page and the API share one
origin and the browser's same-origin rules protect both.
"""

import collections
import json

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server
from zope.interface import implementer
from twisted.internet.interfaces import IPushProducer

from meshvpn.errors import ConfigError, ControlError
from meshvpn.control import dashboard
from meshvpn.control.auth import LOGIN_TOKEN_LIFETIME

API_VERSION = 1
MAX_BODY = 64 * 1024
KEEPALIVE = 15.0  # seconds between SSE comments, so proxies and browsers keep the stream
MAX_QUEUED_EVENTS = 1000  # per event stream while its client reads slowly

# (method, path pattern, handler name, what it does): the whole API.  "{n}" is a
# number, "{id}" a relay id (hex prefix); doc/control.md documents each one.
ROUTES = [
    ("GET", "/v1", "index", "the API version and this list"),
    ("GET", "/v1/node", "node", "node id, role, addresses, version, uptime"),
    ("GET", "/v1/status", "status", "everything at once: node, NAT, DHT, links, circuit counts, VPN, bandwidth"),
    ("GET", "/v1/nat", "nat", "NAT class and public address, from the node's own socket"),
    ("POST", "/v1/nat/check", "natCheck", "probe the NAT again now"),
    ("GET", "/v1/dht", "dht", "DHT table size, records, relays known by role"),
    ("GET", "/v1/relays", "relays", "the relays the node knows, with pins, exclusions and measured weights"),
    ("POST", "/v1/relays/{id}/pin", "pin", "use this relay at a position ({\"position\": guard|middle|exit})"),
    ("POST", "/v1/relays/{id}/exclude", "exclude", "never use this relay; close circuits through it"),
    ("POST", "/v1/relays/{id}/clear", "clear", "forget the pin or exclusion of this relay"),
    ("GET", "/v1/links", "links", "link counts and one entry per link"),
    ("GET", "/v1/circuits", "circuits", "circuits: id, state, hops, age, bytes each way"),
    ("POST", "/v1/circuits/{n}/close", "closeCircuit", "close one circuit"),
    ("GET", "/v1/streams", "streams", "open streams with targets (only with history on)"),
    ("POST", "/v1/newnym", "newnym", "new circuits for new streams"),
    ("GET", "/v1/vpn", "vpn", "VPN state and kill switch"),
    ("POST", "/v1/vpn", "setVpn", "turn the VPN on or off ({\"up\": true|false})"),
    ("GET", "/v1/bandwidth", "bandwidth", "bytes per second up and down, one sample a second (?seconds=600)"),
    ("GET", "/v1/logs", "logs", "recent log lines (?level=info&limit=200)"),
    ("GET", "/v1/settings", "settings", "settings that change at run time, with values"),
    ("POST", "/v1/settings", "setSetting", "change one ({\"key\": ..., \"value\": ...}); validated as the config file"),
    ("GET", "/v1/events", "events", "Server-Sent Events (?types=circuit,vpn; Last-Event-ID resumes)"),
    ("POST", "/v1/login-link", "loginLink", "a one-time dashboard login URL"),
]


class _Refused(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


class ControlResource(resource.Resource):
    """
    @param model: the L{IControlModel}.
    @param bus: the L{IControlEvents}.
    @param guard: the L{Guard}.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, model, bus, guard, clock):
        super().__init__()
        self.model = model
        self.bus = bus
        self.guard = guard
        self.clock = clock
        self.streams = set()

    # -- dispatch

    def render(self, request):
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        why = self.guard.foreign(request)
        if why is not None:
            return self._error(request, 403, why)
        path = request.path.decode("ascii", "replace").rstrip("/") or "/"
        if not path.startswith("/v1"):
            return dashboard.render(self, request, path)
        if not self.guard.authenticated(request):
            request.setHeader(b"www-authenticate", b'Bearer realm="meshvpn-control"')
            return self._error(request, 401, "authentication required: the control cookie or a dashboard session")
        method = request.method.decode("ascii", "replace")
        handler, args = self._route(method, path)
        if handler is None:
            return self._error(request, args[0], args[1])
        try:
            body = self._body(request) if method == "POST" else {}
            result = handler(request, body, *args)
        except _Refused as e:
            return self._error(request, e.code, str(e))
        except ControlError as e:
            return self._error(request, e.code, str(e))
        except ConfigError as e:
            return self._error(request, 400, str(e))
        if result is server.NOT_DONE_YET:
            return result
        if isinstance(result, defer.Deferred):
            result.addCallbacks(lambda r: self._finish(request, 200, r), lambda f: self._failed(request, f))
            return server.NOT_DONE_YET
        return self._json(request, 200, result)

    def _route(self, method, path):
        parts = path.split("/")[1:]
        allowed = False
        for m, pattern, name, _ in ROUTES:
            want = pattern.split("/")[1:]
            if len(want) != len(parts):
                continue
            args = []
            for w, p in zip(want, parts):
                if w == "{n}":
                    if not p.isdigit() or len(p) > 12:
                        break
                    args.append(int(p))
                elif w == "{id}":
                    args.append(p)
                elif w != p:
                    break
            else:
                if m == method:
                    return getattr(self, "api_" + name), args
                allowed = True
        if allowed:
            return None, (405, f"{method} is not allowed on {path}")
        return None, (404, f"no endpoint {path} (GET /v1 lists them)")

    def _body(self, request):
        raw = request.content.read(MAX_BODY + 1) if request.content is not None else b""
        if len(raw) > MAX_BODY:
            raise _Refused(413, f"request body over {MAX_BODY} bytes")
        if not raw.strip():
            return {}
        ctype = (request.getHeader("content-type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise _Refused(415, "a request body must be application/json")
        try:
            body = json.loads(raw)
        except ValueError:
            raise _Refused(400, "the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise _Refused(400, "the request body must be a JSON object")
        return body

    def _json(self, request, code, value):
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(value, default=str).encode() + b"\n"

    def _error(self, request, code, message):
        return self._json(request, code, {"error": message})

    def _finish(self, request, code, value):
        if not request.finished and not getattr(request, "_disconnected", False):
            request.write(self._json(request, code, value))
            request.finish()

    def _failed(self, request, failure):
        if failure.check(ControlError):
            return self._finish(request, failure.value.code, {"error": failure.getErrorMessage()})
        if failure.check(ConfigError):
            return self._finish(request, 400, {"error": failure.getErrorMessage()})
        self.log.failure("control request failed", failure)
        self._finish(request, 500, {"error": "internal error (see the node's log)"})

    # -- reads

    def api_index(self, request, body):
        return {"version": API_VERSION, "endpoints": [{"method": m, "path": p, "what": w} for m, p, _, w in ROUTES]}

    def api_node(self, request, body):
        return self.model.node()

    def api_status(self, request, body):
        return self.model.summary()

    def api_nat(self, request, body):
        return self.model.natStatus()

    def api_natCheck(self, request, body):
        return self.model.checkNat()

    def api_dht(self, request, body):
        return self.model.dhtStatus()

    def api_relays(self, request, body):
        return {"relays": self.model.relays(), "weights": self.model.weightsSummary()}

    def api_links(self, request, body):
        return self.model.links()

    def api_circuits(self, request, body):
        return {"circuits": self.model.circuits()}

    def api_streams(self, request, body):
        return self.model.streams()

    def api_vpn(self, request, body):
        return self.model.vpn()

    def api_bandwidth(self, request, body):
        seconds = _intArg(request, "seconds", 600, 1, 600)
        return {"interval_s": 1, "samples": self.model.bandwidth(seconds)}

    def api_logs(self, request, body):
        level = _arg(request, "level", "info")
        return {"lines": self.model.logs(level, _intArg(request, "limit", 200, 1, 500))}

    def api_settings(self, request, body):
        return {"settings": self.model.settings()}

    # -- actions

    def api_pin(self, request, body, relayId):
        position = body.get("position")
        if position is not None and not isinstance(position, str):
            raise _Refused(400, "position must be guard, middle or exit")
        return self.model.steerRelay(relayId, "pin", position)

    def api_exclude(self, request, body, relayId):
        return self.model.steerRelay(relayId, "exclude")

    def api_clear(self, request, body, relayId):
        return self.model.steerRelay(relayId, "clear")

    def api_closeCircuit(self, request, body, circuitId):
        return self.model.closeCircuit(circuitId)

    def api_newnym(self, request, body):
        return self.model.newIdentity()

    def api_setVpn(self, request, body):
        if "up" not in body:
            raise _Refused(400, "give {\"up\": true} or {\"up\": false}")
        return self.model.setVpn(body["up"])

    def api_setSetting(self, request, body):
        if not isinstance(body.get("key"), str) or "value" not in body:
            raise _Refused(400, "give {\"key\": NAME, \"value\": VALUE}")
        return self.model.setSetting(body["key"], body["value"])

    def api_loginLink(self, request, body):
        return {"url": self.loginURL(), "expires_in_s": int(LOGIN_TOKEN_LIFETIME)}

    def loginURL(self):
        host = sorted(self.guard.hosts, key=lambda h: h.startswith("localhost"))[0]
        return f"http://{host}/login?token={self.guard.loginToken()}"

    # -- events

    def api_events(self, request, body):
        kinds = _arg(request, "types", None)
        kinds = {k.strip() for k in kinds.split(",") if k.strip()} if kinds else None
        since = request.getHeader("last-event-id") or _arg(request, "since", None)
        try:
            since = int(since) if since is not None else None
        except ValueError:
            raise _Refused(400, "Last-Event-ID / since must be an event number") from None
        stream = EventStream(self, request, kinds)
        self.streams.add(stream)
        stream.start(since)
        return server.NOT_DONE_YET


@implementer(IPushProducer)
class EventStream:
    """One client's Server-Sent Events: bounded while it reads slowly, cut off past the bound."""

    def __init__(self, api, request, kinds):
        self.api = api
        self.request = request
        self.kinds = kinds
        self.paused = False
        self.queue = collections.deque()
        self._unsubscribe = None
        self._keepalive = None
        self.done = False

    def start(self, since):
        request = self.request
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"x-accel-buffering", b"no")
        request.registerProducer(self, True)
        request.write(b": meshvpn control events\nretry: 2000\n\n")
        request.notifyFinish().addBoth(self._gone)
        self._unsubscribe = self.api.bus.subscribe(self._event, since)
        self._keepalive = self.api.clock.callLater(KEEPALIVE, self._ping)

    def _event(self, event):
        if self.done:
            return
        if self.kinds is not None and not any(event["type"] == k or event["type"].startswith(k + ".")
                                              for k in self.kinds):
            return
        data = json.dumps(event["data"], default=str)
        frame = f"id: {event['id']}\nevent: {event['type']}\ndata: {data}\n\n".encode()
        if self.paused:
            if len(self.queue) >= MAX_QUEUED_EVENTS:
                self._close()  # the client resumes with Last-Event-ID from what the bus still holds
                return
            self.queue.append(frame)
        else:
            self.request.write(frame)

    def _ping(self):
        self._keepalive = None
        if not self.done:
            if not self.paused:
                self.request.write(b": keepalive\n\n")
            self._keepalive = self.api.clock.callLater(KEEPALIVE, self._ping)

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        while self.queue and not self.paused and not self.done:
            self.request.write(self.queue.popleft())

    def stopProducing(self):
        self._close()

    def _close(self):
        if not self.done:
            self._cleanup()
            self.request.unregisterProducer()
            self.request.finish()

    def _gone(self, _):
        self._cleanup()

    def _cleanup(self):
        self.done = True
        self.queue.clear()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._keepalive is not None and self._keepalive.active():
            self._keepalive.cancel()
        self._keepalive = None
        self.api.streams.discard(self)

    def stop(self):
        """The node stops: end the stream."""
        if not self.done:
            self._close()


def _arg(request, name, default):
    values = request.args.get(name.encode())
    return values[0].decode("utf-8", "replace") if values else default


def _intArg(request, name, default, low, high):
    raw = _arg(request, name, None)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _Refused(400, f"{name} must be a whole number {low}-{high}") from None
    if not low <= value <= high:
        raise _Refused(400, f"{name} must be a whole number {low}-{high}")
    return value
