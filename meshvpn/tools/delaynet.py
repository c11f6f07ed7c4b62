"""Real one-way delay on every TCP hop of a loopback network (root): the setup
behind `meshvpn bench throughput --delay-ms D`.

Everything happens in a network namespace of its own (its own loopback, so
nothing here touches the host's or another test's traffic): the caller
enters it (L{meshvpn.tools.netnsenter.netnsEntered}) and starts the network
there, and every child process inherits it.  Per hop:

- *hop addresses* (the relays' and the web server's): every TCP packet to
  or from one of them waits D ms in netfilter queue C{HOP_QUEUE}, so each
  TCP hop of a circuit (client -> guard -> middle -> exit -> web server)
  has a round trip of 2·D, and the whole path 8·D, as in the issue's
  measurements.  The SOCKS leg (application -> client, same machine) is
  not delayed.
- the *pipe address*: a second web server whose packets wait 4·D in queue
  C{PIPE_QUEUE}: plain TCP over a path with the circuit's end-to-end round
  trip (8·D), through the same delay line, what the user would get without
  MeshVPN on the same path.

The delay is L{meshvpn.tools.delayqueue}'s (the kernel's TCP sees it; one
process per queue); the rules are iptables' NFQUEUE target (this kernel's
nftables has no ``queue`` expression, its xtables one does).
"""

import os
import subprocess
import sys
import time

from meshvpn.errors import MeshVPNError
from meshvpn.tools.netns import run

HOP_QUEUE = 11
PIPE_QUEUE = 12
PIPE_HOST = "127.4.0.1"


class DelayedHops:
    """
    The delay lines and rules of one namespace; L{stop} prints their counters.

    @param cleanups: something with C{addCleanup} (a TestCase or a
        L{meshvpn.tools.nattestbed.Cleanups}); the namespace's deletion
        removes rules and processes anyway.
    """

    def __init__(self, cleanups, delayMs, hopHosts, pipeHost=PIPE_HOST, pipeHops=4):
        self.delayMs = delayMs
        self.lines = []
        run("ip", "link", "set", "lo", "up")
        for queue, delay, hosts in ((HOP_QUEUE, delayMs, hopHosts), (PIPE_QUEUE, delayMs * pipeHops, [pipeHost])):
            line = subprocess.Popen(
                [sys.executable, "-m", "meshvpn.tools.delayqueue", "--queue", str(queue), "--delay-ms", str(delay)],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )
            cleanups.addCleanup(_stop, line)
            self.lines.append(line)
            ready = line.stdout.readline().strip()
            if ready != "ready":
                raise MeshVPNError(f"delay line for queue {queue} did not start: {ready} {line.stdout.read()[-1000:]}")
            # Only after the queue is bound: a rule without a listener drops packets.
            for host in hosts:
                for where in ("-d", "-s"):
                    run("iptables", "-w", "-A", "INPUT", "-p", "tcp", where, host, "-j", "NFQUEUE", "--queue-num", str(queue))

    def check(self):
        """@raise MeshVPNError: a delay line died (its packets are being dropped)."""
        for line in self.lines:
            if line.poll() is not None:
                raise MeshVPNError(f"a delay line exited: {line.stdout.read()[-1000:]}")

    def stop(self):
        """@return: what the delay lines counted (packets, most held at once)."""
        out = {}
        for queue, line in zip((HOP_QUEUE, PIPE_QUEUE), self.lines):
            for word, value in _stop(line):
                out[f"delay_q{queue}_{word}"] = value
        return out


def _stop(line):
    if line.poll() is None:
        line.terminate()
        try:
            line.wait(10)
        except subprocess.TimeoutExpired:
            line.kill()
            line.wait()
    try:
        words = (line.stdout.read() or "").split()
    except ValueError:  # already read and closed
        return []
    line.stdout.close()
    return [(words[i], int(words[i + 1])) for i in range(len(words) - 1) if words[i] in ("packets", "max_held")]


def requireDelayTools():
    problems = []
    if os.geteuid() != 0:
        problems.append("root")
    for tool in ("ip", "iptables"):
        if not _which(tool):
            problems.append(tool)
    if problems:
        raise MeshVPNError("--delay-ms needs " + ", ".join(problems) + " (network namespace, iptables NFQUEUE)")


def _which(tool):
    import shutil

    return shutil.which(tool) is not None


def connectTime(host, port, count=5):
    """Median TCP handshake time to C{(host, port)} in ms: one round trip of the path."""
    import socket
    import statistics

    times = []
    for _ in range(count):
        t0 = time.monotonic()
        with socket.create_connection((host, port), timeout=30):
            times.append(time.monotonic() - t0)
    return round(statistics.median(times) * 1000, 2)
