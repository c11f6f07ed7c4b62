"""A test run killed with -9 leaves no node processes, and its namespaces go at the next run."""

import os
import subprocess
import sys
import time

from twisted.trial import unittest

from meshvpn.tools import leftovers
from meshvpn.tools.netns import Netns, requireRoot, run

# A parent that starts a long-lived child the way NodeProcess does, prints its pid, then waits.
_PARENT = """
import subprocess, sys, time
from meshvpn.tools.leftovers import dieWithParent
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], preexec_fn=dieWithParent)
print(child.pid, flush=True)
time.sleep(600)
"""


def _gone(pid, within=10.0):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(")")[-1].split()[0] == "Z":
                    return True  # a zombie: dead, waiting for init to reap it
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


class DieWithParentTests(unittest.TestCase):
    def test_childDiesWhenItsParentIsKilled(self):
        parent = subprocess.Popen([sys.executable, "-c", _PARENT], stdout=subprocess.PIPE)
        self.addCleanup(lambda: parent.poll() is None and parent.kill())
        child = int(parent.stdout.readline())
        self.addCleanup(lambda: _gone(child, 0) or os.kill(child, 9))
        self.assertFalse(_gone(child, 0.2))
        parent.kill()
        parent.wait()
        parent.stdout.close()
        self.assertTrue(_gone(child), "the child outlived its killed parent")


class RecordTests(unittest.TestCase):
    def setUp(self):
        self.patch(leftovers, "RECORDS", self.mktemp())

    def test_onlyOrphansReaped(self):
        leftovers.remember("mine")
        # one made by a process that has exited since
        dead = subprocess.Popen([sys.executable, "-c", "from meshvpn.tools import leftovers; leftovers.remember('theirs')"],
                                env={**os.environ, "MESHVPN_NETNS_RECORDS": leftovers.RECORDS})
        self.assertEqual(dead.wait(), 0)
        with open(os.path.join(leftovers.RECORDS, "garbled"), "w") as f:
            f.write("{not json")
        deleted = []
        self.assertEqual(sorted(leftovers.reap(deleted.append)), ["garbled", "theirs"])
        self.assertEqual(sorted(deleted), ["garbled", "theirs"])
        self.assertEqual(os.listdir(leftovers.RECORDS), ["mine"])
        leftovers.forget("mine")
        self.assertEqual(os.listdir(leftovers.RECORDS), [])


class NamespaceReapTests(unittest.TestCase):
    def test_killedRunsNamespaceDeletedByTheNext(self):
        requireRoot(self)
        script = ("import sys; from twisted.trial import unittest\n"
                  "from meshvpn.tools.netns import Netns\n"
                  "class T(unittest.TestCase):\n"
                  "    def runTest(self): pass\n"
                  "ns = Netns(T()).add('left')\n"
                  "print(ns, flush=True)\n"
                  "import time; time.sleep(600)\n")
        run_ = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
        self.addCleanup(lambda: run_.poll() is None and run_.kill())
        name = run_.stdout.readline().decode().strip()
        self.addCleanup(run, "ip", "netns", "delete", name, check=False)
        self.assertIn(name, run("ip", "netns", "list"))
        Netns(self)  # the run is alive: its namespace stays
        self.assertIn(name, run("ip", "netns", "list"))
        run_.kill()
        run_.wait()
        run_.stdout.close()
        Netns(self)  # the next run
        self.assertNotIn(name, run("ip", "netns", "list"))
