"""The launch protocol against a fake transport that speaks it well or badly: clear errors, bounded, cleaned up."""

import os
import sys

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from meshvpn.link.pt.args import TransportLine
from meshvpn.link.pt.launch import Launch, LaunchState, ptEnvironment
from meshvpn.link.pt.messages import PTProtocolError
from meshvpn.link.pt.supervisor import TransportSupervisor

FAKE = os.path.join(os.path.dirname(__file__), "fakept.py")


def fakeLine(mode, names=("obfs4",)):
    return TransportLine(tuple(names), sys.executable, (FAKE, mode))


class LaunchTests(unittest.TestCase):
    timeout = 30

    def launch(self, mode, timeout=10.0, names=("obfs4",)):
        state = os.path.abspath(self.mktemp())
        os.makedirs(state)
        launch = Launch(reactor, fakeLine(mode, names), ptEnvironment(names, state), server=False, timeout=timeout)
        self.addCleanup(launch.stop)
        return launch

    @defer.inlineCallbacks
    def failsWith(self, mode, *fragments, timeout=10.0):
        launch = self.launch(mode, timeout)
        e = yield self.assertFailure(launch.start(), PTProtocolError)
        for fragment in fragments:
            self.assertIn(fragment, str(e))
        self.assertIn(sys.executable, str(e))  # which program
        yield launch.exited  # and it is gone
        self.assertIs(launch.state, LaunchState.EXITED)
        return str(e)

    @defer.inlineCallbacks
    def test_good(self):
        launch = self.launch("good", names=("obfs4", "meek"))
        methods = yield launch.start()
        self.assertEqual(sorted(methods), ["meek", "obfs4"])
        self.assertEqual((methods["obfs4"].host, methods["obfs4"].port), ("127.0.0.1", 9))
        started = reactor.seconds()
        yield launch.stop()
        # it exited because its stdin closed, well before the SIGTERM grace
        self.assertLess(reactor.seconds() - started, 2.5)
        self.assertIs(launch.state, LaunchState.EXITED)

    def test_versionError(self):
        return self.failsWith("version-error", "supports no pt-spec version we speak")

    def test_otherVersion(self):
        return self.failsWith("version-2", "chose version '2'")

    def test_envError(self):
        return self.failsWith("env-error", "rejected its environment", "TOR_PT_ORPORT")

    def test_methodBeforeVersion(self):
        return self.failsWith("method-before-version", "ClientMethod line before VERSION")

    def test_badAddress(self):
        return self.failsWith("bad-address", "bad address", "literal IP")

    def test_socks4Refused(self):
        return self.failsWith("socks4", "only socks5")

    def test_unaskedTransport(self):
        return self.failsWith("unasked", "'meek', which we did not ask for")

    def test_methodErrorForAll(self):
        return self.failsWith("method-error", "started none of the transports", "no key material")

    def test_wrongDone(self):
        return self.failsWith("wrong-done", "wrong DONE line", "CMETHODS DONE")

    def test_notUtf8(self):
        return self.failsWith("garbage", "not UTF-8")

    def test_longLineIsBounded(self):
        return self.failsWith("long-line", "longer than 4096")

    def test_timeout(self):
        return self.failsWith("hang", "within 1s", timeout=1.0)

    def test_exitEarlyQuotesStderr(self):
        return self.failsWith("exit-early", "exited with code 2 before CMETHODS DONE", "cannot open state file")

    @defer.inlineCallbacks
    def test_notExecutable(self):
        state = os.path.abspath(self.mktemp())
        os.makedirs(state)
        launch = Launch(reactor, TransportLine(("obfs4",), "/nonexistent/obfs4proxy"), ptEnvironment(["obfs4"], state),
                        server=False)
        e = yield self.assertFailure(launch.start(), PTProtocolError)
        self.assertIn("/nonexistent/obfs4proxy", str(e))

    @defer.inlineCallbacks
    def test_stubbornProcessIsKilled(self):
        launch = self.launch("ignores-stdin")
        yield launch.start()
        yield launch.stop()  # stdin close ignored, SIGTERM ignored: SIGKILL
        self.assertIs(launch.state, LaunchState.EXITED)


class SupervisorTests(unittest.TestCase):
    timeout = 30

    def supervisor(self, mode, **kwargs):
        state = os.path.abspath(self.mktemp())
        line = fakeLine(mode)
        sup = TransportSupervisor(reactor, line, state, lambda: ptEnvironment(line.names, state), server=False, **kwargs)
        self.addCleanup(sup.stopService)
        return sup

    @defer.inlineCallbacks
    def test_restartsWithBackoff(self):
        sup = self.supervisor("good-then-crash", backoff=(0.2, 0.4))
        sup.startService()
        self.assertEqual(os.stat(sup.stateDir).st_mode & 0o777, 0o700)
        yield sup.whenReady()
        while sup.launches < 4:
            yield task.deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(sup.failures, 3)  # never stable: the delay stays at its cap
        methods = yield sup.whenReady()
        self.assertIn("obfs4", methods)

    @defer.inlineCallbacks
    def test_waitersGetTheLaunchError(self):
        sup = self.supervisor("env-error", backoff=(5.0, 5.0))
        sup.startService()
        e = yield self.assertFailure(sup.whenReady(), PTProtocolError)
        self.assertIn("rejected its environment", str(e))
        self.assertIn("rejected its environment", sup.status()["last_error"])

    @defer.inlineCallbacks
    def test_stopsWithNoRestart(self):
        sup = self.supervisor("good", backoff=(0.1, 0.1))
        sup.startService()
        yield sup.whenReady()
        pid = sup.current.pid
        yield sup.stopService()
        yield task.deferLater(reactor, 0.3, lambda: None)
        self.assertEqual(sup.launches, 1)
        self.assertRaises(ProcessLookupError, os.kill, pid, 0)
        yield self.assertFailure(sup.whenReady(), PTProtocolError)
