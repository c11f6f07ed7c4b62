"""A relay whose descriptor cannot be published says so loudly and keeps trying (issue 12, item 7).

Before, a descriptor that could not be built (a summary over the old
256-character limit) or stored (a DHT record too large) stopped the
publishing loop for good: the exit ran but never appeared in the
directory, with one line in its log.
"""

from twisted.internet import defer, task
from twisted.logger import LogLevel, Logger
from twisted.trial import unittest

from meshvpn.dht.records import RecordError
from meshvpn.dht.service import RelayPublisher
from meshvpn.errors import DHTError
from meshvpn.identity import NodeIdentity


class FakeNode:
    def __init__(self, clock):
        self.reactor = clock
        self.identity = NodeIdentity.generate()

    def addresses(self):
        return {"udp": "198.18.0.1:9000", "stream": "198.18.0.1:9001"}


class FakeDirectory:
    def __init__(self, failures):
        self.failures = list(failures)
        self.attempts = 0
        self.published = []

    def publish(self, descriptor):
        self.attempts += 1
        if self.failures:
            return defer.fail(self.failures.pop(0))
        self.published.append(descriptor)
        return defer.succeed(None)


class FakeDHT:
    def __init__(self, clock, directory):
        self.node = FakeNode(clock)
        self.directory = directory
        self.joined = defer.Deferred()
        self.overlays = []  # the first family's DHT is the only one


class PublishRetryTests(unittest.TestCase):
    def start(self, failures=(), exitPolicy="accept 80,443"):
        self.clock = task.Clock()
        self.clock.advance(1_800_000_000)
        self.directory = FakeDirectory(failures)
        self.events = []
        publisher = RelayPublisher(FakeDHT(self.clock, self.directory), frozenset({"exit"}), 3600, exitPolicy=exitPolicy)
        publisher.log = Logger(observer=self.events.append)
        publisher.startService()
        self.addCleanup(publisher.stopService)
        publisher.dhtService.joined.callback(10)
        return publisher

    def errors(self):
        return [e for e in self.events if e["log_level"] >= LogLevel.error]

    def test_storeFailureRetried(self):
        """Old code: a RecordError ended the publishing loop; the relay never appeared."""
        publisher = self.start([RecordError("value longer than 1024 bytes"), DHTError("no node stored our descriptor")])
        self.assertEqual(self.directory.published, [])
        self.assertEqual(len(self.errors()), 1)
        self.clock.advance(5)  # the first retry comes soon: the network may simply not have formed yet
        self.assertEqual(len(self.errors()), 2)
        self.assertEqual(self.errors()[1]["delay"], 10.0)
        self.clock.advance(10)
        self.assertEqual(len(self.directory.published), 1)
        self.assertIs(publisher.published, self.directory.published[0])
        # published again as the routing table fills (10, 30, 90 s), then at the normal interval
        self.clock.advance(600)
        self.assertEqual(self.directory.attempts, 3 + 3)
        self.clock.advance(3600)
        self.assertEqual(self.directory.attempts, 3 + 3 + 1)

    def test_retriesBackOffToAMinute(self):
        failures = [DHTError("no node stored our descriptor")] * 7
        self.start(failures)
        delays = []
        for _ in range(7):
            delays.append(self.errors()[-1]["delay"])
            self.clock.advance(delays[-1])
        self.assertEqual(delays, [5.0, 10.0, 20.0, 40.0, 60.0, 60.0, 60.0])
        self.assertEqual(len(self.directory.published), 1)

    def test_settlingRepublishes(self):
        """
        A relay's first stores go to the few nodes it knew on joining; the
        closest nodes to its keys may join later.  It publishes again as
        its table fills, not an hour later.
        """
        self.start()
        self.assertEqual(self.directory.attempts, 1)
        times = []
        for t in range(1, 100):
            self.clock.advance(1)
            if self.directory.attempts > len(times) + 1:
                times.append(t)
        self.assertEqual(times, [10, 30, 90])

    def test_unbuildableDescriptorLoud(self):
        """Old code: a summary the descriptor refused raised inside the loop once, and publishing stopped."""
        self.start(exitPolicy="x" * 300)
        self.clock.advance(0)
        errors = self.errors()
        self.assertEqual(len(errors), 1)
        self.assertIn("NOT published", errors[0]["log_format"])
        self.assertIn("exit policy summary", errors[0]["why"])
        self.clock.advance(60)
        self.assertEqual(len(self.errors()), 2)
        self.assertEqual(self.directory.attempts, 0)
