"""A small blocking client of the control API, for the `meshvpn` CLI and `meshvpn testnet`.

It finds a running node through its data dir alone: the API's address in
C{node.json} (the node's C{"control"} listener) and the cookie in
C{control.cookie}.  Plain C{http.client}: the CLI runs outside any reactor
and makes one request (or follows one event stream) per command.
"""

import http.client
import json
import os

from meshvpn.control.auth import readCookie
from meshvpn.errors import KeyFileError, MeshVPNError
from meshvpn.hostport import HostPortError, splitHostPort

NODE_FILE = "node.json"  # written by the node (meshvpn.roles.node) once it is ready


class ControlClientError(MeshVPNError):
    """The API could not be reached or refused the request; the message is the one line to show."""


class ControlClient:
    def __init__(self, host, port, cookie, timeout=10.0):
        self.host = host
        self.port = port
        self.cookie = cookie
        self.timeout = timeout

    @classmethod
    def forDataDir(cls, dataDir, timeout=10.0):
        """
        @raise ControlClientError: no node is running there, or it has no control API.
        """
        try:
            with open(os.path.join(dataDir, NODE_FILE)) as f:
                info = json.load(f)
        except (FileNotFoundError, ValueError):
            raise ControlClientError(f"{dataDir}: no node running (no node.json)") from None
        address = info.get("control")
        if not address:
            raise ControlClientError(f"{dataDir}: the node announces no control API")
        try:
            host, port = splitHostPort(address)
            cookie = readCookie(dataDir)
        except HostPortError:
            raise ControlClientError(f"{dataDir}: bad control address {address!r} in node.json") from None
        except (OSError, KeyFileError) as e:
            raise ControlClientError(f"cannot read the control cookie: {e}") from None
        return cls(host, int(port), cookie, timeout)

    @property
    def hostHeader(self):
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def _connect(self, timeout):
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def request(self, method, path, body=None):
        """@return: the decoded JSON answer. @raise ControlClientError: with the API's one-line error."""
        conn = self._connect(self.timeout)
        headers = {"Host": self.hostHeader, "Authorization": f"Bearer {self.cookie}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        except OSError as e:
            raise ControlClientError(f"cannot reach the control API at {self.hostHeader}: {e}") from None
        finally:
            conn.close()
        try:
            value = json.loads(raw)
        except ValueError:
            raise ControlClientError(f"the control API answered HTTP {response.status} without JSON") from None
        if response.status >= 400:
            raise ControlClientError(value.get("error", f"HTTP {response.status}"))
        return value

    def get(self, path):
        return self.request("GET", path)

    def post(self, path, body=None):
        return self.request("POST", path, body if body is not None else {})

    def events(self, types=None, since=None):
        """
        Follow C{/v1/events}: yields each event as C{{"id", "type", "data"}}
        until the node stops (then returns).
        """
        conn = self._connect(None)
        path = "/v1/events" + (f"?types={','.join(types)}" if types else "")
        headers = {"Host": self.hostHeader, "Authorization": f"Bearer {self.cookie}", "Accept": "text/event-stream"}
        if since is not None:
            headers["Last-Event-ID"] = str(since)
        try:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            if response.status != 200:
                raise ControlClientError(json.loads(response.read() or b"{}").get("error", f"HTTP {response.status}"))
            yield from parseEventStream(response)
        except OSError as e:
            raise ControlClientError(f"event stream from {self.hostHeader} broke: {e}") from None
        finally:
            conn.close()


def parseEventStream(lines):
    """Server-Sent Events from an iterable of byte lines -> event dicts (comments skipped)."""
    event = {}
    data = []
    for raw in lines:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            if data:
                try:
                    payload = json.loads("\n".join(data))
                except ValueError:
                    payload = "\n".join(data)
                yield {"id": int(event["id"]) if event.get("id", "").isdigit() else None,
                       "type": event.get("event", "message"), "data": payload}
            event, data = {}, []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "data":
            data.append(value)
        elif field in ("id", "event"):
            event[field] = value
