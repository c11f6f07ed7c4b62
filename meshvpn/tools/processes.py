"""Real ``twistd`` node processes on loopback, for `meshvpn testnet` and tests.

A node writes ``node.json`` (id and bound addresses) once it is listening, so
callers wait for that file instead of guessing ports: every node binds port 0.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

from meshvpn.errors import MeshVPNError
from meshvpn.hostport import formatHostPort
from meshvpn.roles.node import NODE_FILE
from meshvpn.tools.leftovers import dieWithParent


def twistdPath():
    """The twistd that belongs to this Python (the venv's), else the one on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "twistd")
    found = beside if os.access(beside, os.X_OK) else shutil.which("twistd")
    if not found:
        raise NodeStartError("twistd not found next to this Python or on PATH (run bin/install)")
    return found


class NodeStartError(MeshVPNError):
    """A node process exited early or never became ready."""


class NodeProcess:
    """One ``twistd -n meshvpn-<role>`` child process with its own data dir."""

    def __init__(self, role, dataDir, extraArgs=(), name=None, host="127.0.0.1", env=None):
        self.role = role
        self.env = env  # extra environment variables (test tooling, e.g. a hostile relay's plan)
        self.host = host
        self.name = name or role
        self.dataDir = dataDir
        self.logPath = os.path.join(dataDir, "twistd.log")
        self.extraArgs = list(extraArgs)
        self.process = None
        self.info = None

    def argv(self):
        args = [twistdPath(), "-n", "--pidfile=", "--logfile", self.logPath, f"meshvpn-{self.role}"]
        args += ["--data-dir", self.dataDir, "--udp", formatHostPort(self.host, 0)]
        args += ["--control-listen", formatHostPort(self.host, 0)]  # the API on the node's own loopback address
        if self.role == "client":
            args += ["--socks-listen", formatHostPort(self.host, 0)]
        else:
            args += ["--listen", f"tcp:0:interface={self.host}"]
        return args + self.extraArgs

    def start(self):
        os.makedirs(self.dataDir, mode=0o700, exist_ok=True)
        env = None if self.env is None else {**os.environ, **self.env}
        self.process = subprocess.Popen(
            self.argv(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
            preexec_fn=dieWithParent,  # a test run killed with -9 takes its nodes with it
        )
        return self

    def waitReady(self, timeout=30.0):
        """
        Block until the node has written its node.json.

        @return: the node.json contents.
        @raise NodeStartError: the process exited or the timeout passed; the
            message carries the end of its output.
        """
        path = os.path.join(self.dataDir, NODE_FILE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise NodeStartError(f"{self.name} exited with {self.process.returncode}: {self.output()[-2000:]}")
            try:
                with open(path) as f:
                    self.info = json.load(f)
                return self.info
            except (FileNotFoundError, json.JSONDecodeError):
                time.sleep(0.05)
        raise NodeStartError(f"{self.name} not ready after {timeout}s: {self.logTail()}")

    def output(self):
        if self.process.poll() is None:
            return ""
        return self.process.stdout.read().decode(errors="replace")

    def logTail(self, chars=2000):
        try:
            with open(self.logPath, errors="replace") as f:
                return f.read()[-chars:]
        except FileNotFoundError:
            return ""

    def stop(self, timeout=15.0):
        """SIGTERM, then SIGKILL after C{timeout}.  @return: the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stdout.close()
        return self.process.returncode
