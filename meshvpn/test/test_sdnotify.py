"""sd_notify: the datagrams systemd would read, sent to a socket the test binds."""

import os
import shutil
import socket
import tempfile

from twisted.trial import unittest

from meshvpn import sdnotify


class NotifyTests(unittest.TestCase):
    def bind(self, abstract=False):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        if abstract:
            name = f"meshvpn-test-{os.getpid()}-{id(self)}"
            sock.bind(b"\0" + name.encode())
            env = {"NOTIFY_SOCKET": "@" + name}
        else:
            # A short path: AF_UNIX names are limited to 108 bytes.
            path = os.path.join(tempfile.mkdtemp(prefix="mvn"), "n")
            self.addCleanup(shutil.rmtree, os.path.dirname(path))
            sock.bind(path)
            env = {"NOTIFY_SOCKET": path}
        sock.settimeout(5)
        return sock, env

    def test_pathSocket(self):
        sock, env = self.bind()
        self.assertTrue(sdnotify.notify(env, READY=1, STATUS="relay up"))
        self.assertEqual(sock.recv(4096), b"READY=1\nSTATUS=relay up")

    def test_abstractSocket(self):
        sock, env = self.bind(abstract=True)
        self.assertTrue(sdnotify.notify(env, STOPPING=1))
        self.assertEqual(sock.recv(4096), b"STOPPING=1")

    def test_newlineCannotInjectAnAssignment(self):
        sock, env = self.bind()
        sdnotify.notify(env, STATUS="up\nREADY=1")
        self.assertEqual(sock.recv(4096), b"STATUS=up READY=1")

    def test_notUnderSystemd(self):
        self.assertFalse(sdnotify.notify({}, READY=1))
        self.assertFalse(sdnotify.notify({"NOTIFY_SOCKET": "relative"}, READY=1))

    def test_managerGoneIsNotAnError(self):
        path = os.path.join(tempfile.mkdtemp(prefix="mvn"), "gone")
        self.addCleanup(shutil.rmtree, os.path.dirname(path))
        self.assertFalse(sdnotify.notify({"NOTIFY_SOCKET": path}, READY=1))

    def test_watchdogInterval(self):
        self.assertIsNone(sdnotify.watchdogInterval({}))
        self.assertEqual(sdnotify.watchdogInterval({"WATCHDOG_USEC": "60000000"}), 30.0)
        self.assertIsNone(sdnotify.watchdogInterval({"WATCHDOG_USEC": "x"}))
        self.assertIsNone(sdnotify.watchdogInterval({"WATCHDOG_USEC": "0"}))
        # Meant for another process (a parent that exec'd us without clearing it).
        self.assertIsNone(sdnotify.watchdogInterval({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}))
        mine = {"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}
        self.assertEqual(sdnotify.watchdogInterval(mine), 0.5)
