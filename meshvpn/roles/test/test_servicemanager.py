"""A real relay process as systemd runs it: readiness, journal lines, SIGHUP reload, clean stop.

The test plays systemd's part: it binds the C{$NOTIFY_SOCKET} datagram socket
and hands the process a stderr pipe named by C{$JOURNAL_STREAM}, then reads
what the relay tells it.
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from twisted.trial import unittest

from meshvpn.tools.processes import twistdPath

CONFIG = """
udp = "127.0.0.1:0"
listen = "tcp:0:interface=127.0.0.1"
control-listen = "127.0.0.1:0"
flags = "guard,middle,exit"
log-level = "{level}"
exit-policy = "{policy}"
bandwidth-rate = "{rate}"
dht-republish = {republish}
"""


class RelayUnderServiceManagerTests(unittest.TestCase):
    def setUp(self):
        short = tempfile.mkdtemp(prefix="mvn")  # AF_UNIX paths are short
        self.addCleanup(shutil.rmtree, short)
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(self.notify.close)
        self.notify.bind(os.path.join(short, "notify"))
        self.notify.settimeout(1)
        self.config = os.path.abspath(self.mktemp())
        self.dataDir = os.path.abspath(self.mktemp())

    def writeConfig(self, level="info", policy="accept *:80, reject *:*", rate="1M", republish=3600):
        with open(self.config, "w") as f:
            f.write(CONFIG.format(level=level, policy=policy, rate=rate, republish=republish))

    def start(self):
        self.logFile = open(os.path.abspath(self.mktemp()), "w+")
        self.addCleanup(self.logFile.close)
        st = os.fstat(self.logFile.fileno())
        env = {**os.environ, "NOTIFY_SOCKET": self.notify.getsockname(), "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        self.process = subprocess.Popen(
            [twistdPath(), "--nodaemon", "--pidfile=", "--logger=meshvpn.logoutput.observer", "meshvpn-relay",
             "--config", self.config, "--data-dir", self.dataDir],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.logFile, env=env,
        )
        self.addCleanup(self.kill)

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def messages(self, until, timeout=60):
        """Datagrams received until one contains C{until}."""
        got = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                got.append(self.notify.recv(4096).decode())
            except TimeoutError:
                self.assertIsNone(self.process.poll(), self.journal())
                continue
            if until in got[-1]:
                return got
        self.fail(f"no {until!r} in {got}: {self.journal()}")

    def journal(self):
        self.logFile.flush()
        with open(self.logFile.name) as f:
            return f.read()

    def waitForLine(self, text, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.journal():
                return
            time.sleep(0.1)
        self.fail(f"no {text!r} in the journal: {self.journal()[-3000:]}")

    def test_readyReloadStop(self):
        self.writeConfig()
        self.start()
        ready = self.messages("READY=1")
        self.assertIn("STATUS=relay up: ", ready[-1])
        self.assertTrue(os.path.exists(os.path.join(self.dataDir, "node.json")))  # ready means announced
        journal = self.journal()
        lines = [line for line in journal.splitlines() if line]
        # Journal form: a priority prefix on every line and no timestamp of our own.
        self.assertTrue(all(line[:1] == "<" and line[2:3] == ">" for line in lines), lines[:5])
        self.assertNotRegex(journal, r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")
        self.assertIn("<6>", journal)

        # Live: the exit policy (republished), the rate and the log level.  Not live: the republish interval.
        self.writeConfig(level="warn", policy="accept *:443, reject *:*", rate="2M", republish=1800)
        self.process.send_signal(signal.SIGHUP)
        reload = self.messages("READY=1")
        self.assertIn("RELOADING=1", reload[0])
        self.waitForLine("changed but only applied on restart: dht-republish")
        journal = self.journal()
        self.assertIn("<4>", journal)  # the warning kept its priority
        # The summary line is info, filtered at the new level "warn": so the
        # reload's own report is not in the journal, but its effect is checked
        # from the next reload, at debug.
        self.writeConfig(level="debug", policy="accept *:443, reject *:*", rate="2M", republish=1800)
        self.process.send_signal(signal.SIGHUP)
        self.messages("READY=1")
        self.waitForLine("reload 2: log level debug")

        # A broken file changes nothing and the relay keeps running.
        with open(self.config, "w") as f:
            f.write("exit-policy = 'accept nonsense'\n")
        self.process.send_signal(signal.SIGHUP)
        self.messages("READY=1")
        self.waitForLine("reload refused, running settings kept")
        self.assertIsNone(self.process.poll())

        self.process.send_signal(signal.SIGTERM)
        self.messages("STOPPING=1")
        self.assertEqual(self.process.wait(30), 0)

    def test_reloadAppliesExitPolicy(self):
        self.writeConfig(level="debug")
        self.start()
        self.messages("READY=1")
        self.writeConfig(level="debug", policy="accept *:443, reject *:*")
        self.process.send_signal(signal.SIGHUP)
        self.messages("READY=1")
        self.waitForLine("exit policy now summarised as 'accept 443' (descriptor republished)")
        self.process.send_signal(signal.SIGTERM)
        self.assertEqual(self.process.wait(30), 0)
