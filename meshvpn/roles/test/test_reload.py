"""SIGHUP reload in process: what is live changes, the rest waits for a restart, a bad file changes nothing."""

import os

from twisted.internet.task import Clock
from twisted.trial import unittest

from meshvpn import logoutput
from meshvpn.exit.settings import buildExit
from meshvpn.onion.readlimit import LinkReadLimiter
from meshvpn.ratelimit import TokenBucket
from meshvpn.roles import relay
from meshvpn.roles.relaylive import exitPolicyApplier, rateApplier
from meshvpn.roles.reload import ReloadOnSIGHUP, logLevelApplier


class _Publisher:
    """What the exit-policy applier uses of a RelayPublisher (its descriptor is checked in the process test)."""

    def __init__(self):
        self.exitPolicy = None
        self.published = 0

    def publishNow(self):
        self.published += 1


class ReloadTests(unittest.TestCase):
    def setUp(self):
        self.addCleanup(logoutput.setLevel, logoutput.currentLevel())
        self.config = os.path.abspath(self.mktemp())
        self.write('exit-policy = "accept *:80, reject *:*"\nbandwidth-rate = "1M"\n')
        self.options = relay.Options()
        self.options.parseOptions(["--config", self.config, "--data-dir", self.mktemp(), "--flags", "guard,exit"])
        self.clock = Clock()
        self.exit = buildExit(self.clock, self.options.settings, upstream=object())
        self.publisher = _Publisher()
        self.notes = []
        self.readLimiter = LinkReadLimiter(self.clock, 1 << 20)
        appliers = [logLevelApplier(), rateApplier(self.exit.limiter, self.readLimiter),
                    exitPolicyApplier(self.exit, self.publisher, [], None)]
        self.reloader = ReloadOnSIGHUP(self.clock, self.options, appliers, environ={},
                                       notify=lambda environ, **fields: self.notes.append(fields))

    def write(self, text):
        with open(self.config, "w") as f:
            f.write(text)

    def test_livePolicyRatesAndLevel(self):
        self.assertTrue(self.exit.policy.allows("198.18.0.1", 80))
        self.write('exit-policy = "accept *:443, reject *:*"\nbandwidth-rate = "2M"\nlog-level = "warn"\n')
        done = self.reloader.reload()
        self.assertEqual(len(done), 3, done)
        self.assertFalse(self.exit.policy.allows("198.18.0.1", 80))
        self.assertTrue(self.exit.policy.allows("198.18.0.1", 443))
        self.assertEqual(self.publisher.exitPolicy, "accept 443")
        self.assertEqual(self.publisher.published, 1)
        self.assertEqual(self.exit.limiter.nodeBucket.rate, 2 * 1024 * 1024)
        self.assertEqual(self.readLimiter.bucket.rate, 2 * 1024 * 1024)
        self.assertEqual(logoutput.currentLevel(), "warn")
        self.assertEqual(self.options.settings["bandwidth_rate"], 2 * 1024 * 1024)
        self.assertEqual([list(n) for n in self.notes], [["RELOADING", "STATUS"], ["READY", "STATUS"]])

    def test_restartOnlyKeysStayAsTheyWere(self):
        self.write('exit-policy = "accept *:80, reject *:*"\nbandwidth-rate = "1M"\nudp = "127.0.0.1:1"\n')
        self.assertEqual(self.reloader.reload(), [])
        self.assertEqual(self.options.settings["udp"], ("0.0.0.0", 9000))

    def test_badFileChangesNothing(self):
        self.write('exit-policy = "accept nonsense"\n')
        self.assertEqual(self.reloader.reload(), [])
        self.assertTrue(self.exit.policy.allows("198.18.0.1", 80))
        self.assertEqual(self.notes[-1]["READY"], 1)

    def test_limitsFromNothingNeedARestart(self):
        applier = rateApplier(None, None)
        self.assertRaises(ValueError, applier.apply, {**self.options.settings, "bandwidth_rate": 1000})


class ReconfigureTests(unittest.TestCase):
    def test_raisingALimitGrantsNoBurst(self):
        clock = Clock()
        bucket = TokenBucket(clock, 100, 100)
        bucket.consume(100)
        bucket.reconfigure(1000, 1000)
        self.assertEqual(bucket.available(), 0)
        clock.advance(0.5)
        self.assertEqual(bucket.available(), 500)

    def test_unlimitedAndBack(self):
        clock = Clock()
        bucket = TokenBucket(clock, 100, 100)
        bucket.reconfigure(None)
        self.assertEqual(bucket.consume(10**9), 0.0)
        bucket.reconfigure(50, 50)
        self.assertEqual(bucket.available(), 50)
        self.assertRaises(ValueError, bucket.reconfigure, 0)
