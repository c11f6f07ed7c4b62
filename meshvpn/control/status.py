"""The node's local status: a JSON file in its data dir, rewritten every second.

A file (0600, atomic) rather than a socket: `meshvpn status` needs no
connection, no port, and sees exactly what the node last knew, even of a node
that has just died.  Sources are L{IStatusSource}s; their dicts must never
contain key material or payload.

The snapshot is taken in the reactor's thread (the sources' state lives
there), but the file is written in the reactor's thread pool: an atomic,
fsynced write takes 4-28 ms on this kind of disk, and done in the reactor
it held every circuit the node carries once a second.  One write is in
flight at most; a tick that finds one still running is skipped (the next
writes newer state anyway).
"""

import json
import os
import time

from twisted.application import service
from twisted.internet import defer, task, threads
from twisted.internet.interfaces import IReactorThreads
from twisted.logger import Logger

from meshvpn.secretfile import writeSecretFile

STATUS_FILE = "status.json"

# Keys whose values are the user's browsing history (each stream's target):
# kept off disk unless the user asked for them (the client's --status-history).
HISTORY_KEYS = frozenset({"target"})


class StatusWriter(service.Service):
    log = Logger()

    def __init__(self, reactor, dataDir, nodeInfo, every=1.0, history=False):
        self.reactor = reactor
        self.path = os.path.join(dataDir, STATUS_FILE)
        self.nodeInfo = nodeInfo  # callable -> dict (id, role, addresses)
        self.sources = {}  # name -> IStatusSource
        self.every = every
        self.history = history
        self._loop = None
        self._writing = None  # the Deferred of the write in the thread pool, while one runs

    def addSource(self, name, source):
        self.sources[name] = source

    def snapshot(self):
        status = {"time": time.time(), "node": self.nodeInfo()}
        for name, source in self.sources.items():
            try:
                status[name] = source.status()
            except Exception:
                self.log.failure("status source {name} failed", name=name)
                status[name] = {"error": "status unavailable"}
        return status

    def write(self):
        """
        Snapshot now and write it: in the reactor's thread pool when the
        reactor has one (then skipped while an earlier write still runs),
        else here.  @return: a Deferred that fires once the file is written.
        """
        if self._writing is not None:
            return self._writing
        status = self.snapshot() if self.history else withoutHistory(self.snapshot())
        data = json.dumps(status, indent=1, default=str).encode()
        if not IReactorThreads.providedBy(self.reactor):
            writeSecretFile(self.path, data)
            return defer.succeed(None)
        self._writing = threads.deferToThreadPool(
            self.reactor, self.reactor.getThreadPool(), writeSecretFile, self.path, data)

        def done(result):
            self._writing = None
            return result

        self._writing.addBoth(done)
        return self._writing

    def startService(self):
        super().startService()
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self.reactor
        self._loop.start(self.every, now=False).addErrback(lambda f: self.log.failure("status writer stopped", f))

    def _tick(self):
        self.write().addErrback(lambda f: self.log.failure("status file not written", f))

    def stopService(self):
        """Stop writing; once a write still in flight is done, remove the file."""
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        pending = self._writing if self._writing is not None else defer.succeed(None)

        def remove(_):
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

        return pending.addBoth(remove)


def withoutHistory(value):
    """C{value} (a status dict) with every L{HISTORY_KEYS} entry dropped, at any depth."""
    if isinstance(value, dict):
        return {k: withoutHistory(v) for k, v in value.items() if k not in HISTORY_KEYS}
    if isinstance(value, (list, tuple)):
        return [withoutHistory(v) for v in value]
    return value


def readStatus(dataDir):
    """@return: the last status a node wrote in C{dataDir}, or C{None}."""
    try:
        with open(os.path.join(dataDir, STATUS_FILE)) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def formatStatus(status):
    """A person-readable rendering of a status dict."""
    lines = []
    node = status.get("node", {})
    where = "  ".join(f"{k} {node[k]}" for k in ("udp", "stream", "socks") if k in node)
    lines.append(f"node {node.get('node_id', '?')[:16]}…  role {node.get('role', '?')}  {where}")
    circuits = status.get("circuits", {})
    for c in circuits.get("circuits", []):
        hops = " -> ".join(h[:8] for h in c.get("path", []))
        kind = "spare" if c.get("spare") else "in use"
        lines.append(
            f"  circuit {hops}  ({kind})  sent {c.get('bytes_sent', 0)} B  received {c.get('bytes_received', 0)} B"
        )
        for s in c.get("streams", []):
            lines.append(f"    stream {s.get('id')} {s.get('target') or ''} {s.get('state')}  "
                         f"sent {s.get('sent', 0)} B  received {s.get('received', 0)} B")
    if circuits.get("build_times_s"):
        lines.append(f"  recent build times: {', '.join(f'{t * 1000:.1f} ms' for t in circuits['build_times_s'][-5:])}")
    tun = status.get("tun")
    if isinstance(tun, dict) and "state" in tun:
        up = f"  (up {tun['up_after_s']:.2f} s after start)" if tun.get("up_after_s") is not None else ""
        lines.append(f"  vpn: {tun['state']} -- {tun.get('detail', '')}{up}")
        lines.append(f"    to circuit {tun.get('to_circuit', 0)} packets, from circuit {tun.get('from_circuit', 0)}, "
                     f"dropped while no circuit {tun.get('no_circuit_dropped', 0)}")
    for name, value in status.items():
        if name not in ("node", "circuits", "time", "tun"):
            lines.append(f"  {name}: {json.dumps(value, default=str)[:300]}")
    return "\n".join(lines)
