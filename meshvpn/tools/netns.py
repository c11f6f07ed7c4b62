"""Helpers for tests that need root: network namespaces, veth pairs, nftables.

Outside CI such a test skips when it cannot run (not root, no `ip`); with
CI=true it fails instead, so a CI run can never pass by skipping them.
Everything a test creates is registered for cleanup before it is created, so
it is removed even when the test fails half-way.
"""

import os
import shutil
import subprocess
import uuid

from twisted.trial.unittest import SkipTest

from meshvpn.tools import leftovers


def inCI():
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def requireRoot(testCase, tools=("ip", "nft")):
    """
    Skip (or, in CI, fail) C{testCase} unless we are root with C{tools}.
    """
    problems = []
    if os.geteuid() != 0:
        problems.append("not running as root")
    problems += [f"{t} not installed" for t in tools if shutil.which(t) is None]
    if problems:
        why = "needs root network namespaces: " + ", ".join(problems)
        if inCI():
            testCase.fail(f"{why} (CI=true: root tests must run, not skip)")
        raise SkipTest(why)


def run(*argv, check=True, input=None, timeout=30):
    """Run a command, returning its stdout; raise with its stderr on failure."""
    result = subprocess.run(argv, input=input, capture_output=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.decode(errors='replace')}")
    return result.stdout.decode(errors="replace")


class Netns:
    """
    Network namespaces for one test, named with a unique prefix (at most 15
    characters per interface name, so names stay short) and all deleted on
    cleanup, which also kills every process left inside them.
    """

    def __init__(self, testCase, prefix="mv"):
        self.testCase = testCase
        self.tag = f"{prefix}{uuid.uuid4().hex[:6]}"
        self.names = []
        leftovers.reap(_deleteNamespace)  # what a killed run left

    def add(self, short):
        """Create namespace C{<tag>-<short>} with loopback up; @return: its name."""
        name = f"{self.tag}-{short}"
        self.testCase.addCleanup(self._delete, name)
        leftovers.remember(name)
        run("ip", "netns", "add", name)
        self.names.append(name)
        self.exec(name, "ip", "link", "set", "lo", "up")
        return name

    def exec(self, ns, *argv, **kw):
        return run("ip", "netns", "exec", ns, *argv, **kw)

    def popen(self, ns, argv, **kw):
        """Start a process inside C{ns}; it is killed at cleanup."""
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], preexec_fn=leftovers.dieWithParent, **kw)
        self.testCase.addCleanup(_kill, proc)
        return proc

    def veth(self, nsA, addrA, nsB, addrB):
        """
        Join two namespaces with a veth pair and give each end an address
        (CIDR strings like C{"198.18.0.1/24"}).  @return: the two interface names.
        """
        ifA, ifB = f"v{uuid.uuid4().hex[:7]}a", None
        ifB = ifA[:-1] + "b"
        run("ip", "link", "add", ifA, "netns", nsA, "type", "veth", "peer", "name", ifB, "netns", nsB)
        for ns, ifname, addr in ((nsA, ifA, addrA), (nsB, ifB, addrB)):
            if addr:
                self.exec(ns, "ip", "addr", "add", addr, "dev", ifname)
            self.exec(ns, "ip", "link", "set", ifname, "up")
        return ifA, ifB

    def _delete(self, name):
        _deleteNamespace(name)
        leftovers.forget(name)


def _deleteNamespace(name):
    # Kill what still runs inside, then delete (this also removes its veths).
    pids = run("ip", "netns", "pids", name, check=False).split()
    for pid in pids:
        try:
            os.kill(int(pid), 9)
        except (ProcessLookupError, ValueError):
            pass
    run("ip", "netns", "delete", name, check=False)


def _kill(proc):
    if proc.poll() is None:
        proc.kill()
    proc.wait()
