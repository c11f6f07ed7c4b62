"""Resident memory and CPU of the network's processes, read from /proc, for the load and chaos benches."""

import os
import time

_TICK = os.sysconf("SC_CLK_TCK")


def rssMB(pid):
    """@return: VmRSS of C{pid} in MB, or C{None} if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def cpuSeconds(pid):
    """@return: user + system CPU seconds C{pid} has used, or C{None}."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK


def slope(points):
    """Least-squares slope of C{[(t, y)]} (per unit of t), or C{None} with fewer than 3 points."""
    if len(points) < 3:
        return None
    n = len(points)
    mt = sum(t for t, _ in points) / n
    my = sum(y for _, y in points) / n
    den = sum((t - mt) ** 2 for t, _ in points)
    return sum((t - mt) * (y - my) for t, y in points) / den if den else None


class Sampler:
    """RSS of named processes over time, and their CPU use between L{start} and L{stop}."""

    def __init__(self, pids):
        self.pids = dict(pids)  # name -> pid
        self.samples = {name: [] for name in self.pids}  # name -> [(t, rss MB)]
        self._cpu0 = {}
        self._cpuLast = {}  # name -> CPU seconds at the last sample (a process may be gone by the end)
        self._t0 = None
        self.cpu = {}

    def start(self):
        self._t0 = time.monotonic()
        self._cpu0 = {name: cpuSeconds(pid) for name, pid in self.pids.items()}
        self.sample()

    def sample(self):
        t = time.monotonic() - self._t0
        for name, pid in self.pids.items():
            rss = rssMB(pid)
            if rss is not None:
                self.samples[name].append((t, rss))
            used = cpuSeconds(pid)
            if used is not None:
                self._cpuLast[name] = (t, used)

    def sampleCPU(self, name):
        """Note C{name}'s CPU use now (for a process that ends before L{stop})."""
        used = cpuSeconds(self.pids[name])
        if used is not None:
            self._cpuLast[name] = (time.monotonic() - self._t0, used)

    def stop(self):
        wall = time.monotonic() - self._t0
        for name, pid in self.pids.items():
            used, before, span = cpuSeconds(pid), self._cpu0.get(name), wall
            if used is None and name in self._cpuLast:
                span, used = self._cpuLast[name]
            self.cpu[name] = None if used is None or before is None or not span else round(100 * (used - before) / span, 1)
        return wall

    def maxRSS(self, name):
        return max((rss for _, rss in self.samples[name]), default=None)

    def slopeMBPerMin(self, name, after=0.0):
        s = slope([(t / 60, rss) for t, rss in self.samples[name] if t >= after])
        return None if s is None else round(s, 3)
