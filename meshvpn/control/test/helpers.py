"""Test helpers for the control API: a real node started in-process, and HTTP requests to it."""

import json
import os

from twisted.internet import defer, protocol, reactor
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from meshvpn.control.auth import COOKIE_FILE


def startClientNode(testCase, extraArgs=()):
    """
    A real client node (no bootstrap: it builds no circuit) on loopback,
    stopped at cleanup.  @return: a Deferred firing with the node.
    """
    from meshvpn.roles import client

    dataDir = os.path.abspath(testCase.mktemp())
    options = client.Options()
    options.parseOptions(["--data-dir", dataDir, "--udp", "127.0.0.1:0", "--socks-listen", "127.0.0.1:0",
                          "--control-listen", "127.0.0.1:0",
                          # no spare circuit: with no relay to find, its build would wait past the test
                          "--circuits-spare", "0", *extraArgs])
    node = client.makeService(options)
    node.startService()
    testCase.addCleanup(node.stopService)
    return node.whenStarted.addCallback(lambda _: node)


class API:
    """Requests to a node's control API, as a client on this machine would make them."""

    def __init__(self, node):
        self.node = node
        self.address = node.addresses()["control"]
        with open(os.path.join(node.dataDir, COOKIE_FILE)) as f:
            self.cookie = f.read().strip()
        self.agent = Agent(reactor)

    def headers(self, auth=True, **extra):
        h = {"host": self.address}
        if auth:
            h["authorization"] = f"Bearer {self.cookie}"
        h.update({k.replace("_", "-"): v for k, v in extra.items()})
        return h

    @defer.inlineCallbacks
    def request(self, method, path, body=None, headers=None, raw=None):
        """@return: C{(code, decoded JSON or text, response)}."""
        headers = dict(self.headers() if headers is None else headers)
        producer = None
        if body is not None or raw is not None:
            from twisted.web.client import FileBodyProducer
            import io

            data = raw if raw is not None else json.dumps(body).encode()
            headers.setdefault("content-type", "application/json")
            producer = FileBodyProducer(io.BytesIO(data))
        h = Headers({k.encode(): [v.encode()] for k, v in headers.items()})
        response = yield self.agent.request(method.encode(), f"http://{self.address}{path}".encode(), h, producer)
        text = yield readBody(response)
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        return response.code, value, response

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body if body is not None else {}, **kw)

    @defer.inlineCallbacks
    def events(self, path="/v1/events", headers=None):
        """Open the event stream. @return: an L{EventCollector} (call C{close()})."""
        h = Headers({k.encode(): [v.encode()] for k, v in (headers or self.headers()).items()})
        response = yield self.agent.request(b"GET", f"http://{self.address}{path}".encode(), h)
        collector = EventCollector(response)
        response.deliverBody(collector)
        return collector


class EventCollector(protocol.Protocol):
    """Parses Server-Sent Events as they arrive; L{waitFor} waits for one of a type."""

    def __init__(self, response):
        self.response = response
        self.buffer = b""
        self.events = []
        self.waiters = []
        self.done = defer.Deferred()

    def dataReceived(self, data):
        self.buffer += data
        while b"\n\n" in self.buffer:
            frame, self.buffer = self.buffer.split(b"\n\n", 1)
            fields = {}
            for line in frame.decode().split("\n"):
                if line.startswith(":"):
                    continue
                k, _, v = line.partition(": ")
                fields[k] = v
            if "event" in fields:
                event = {"id": int(fields["id"]), "type": fields["event"], "data": json.loads(fields["data"])}
                self.events.append(event)
                for w in list(self.waiters):
                    if w[0](event):
                        self.waiters.remove(w)
                        w[1].callback(event)

    def waitFor(self, match, timeout=20.0):
        for event in self.events:
            if match(event):
                return defer.succeed(event)
        d = defer.Deferred()
        self.waiters.append((match, d))
        return d.addTimeout(timeout, reactor)

    def connectionLost(self, reason):
        self.done.callback(None)

    def close(self):
        self.transport.stopProducing()
        return self.done
