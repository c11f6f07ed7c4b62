"""Optimistic data: DATA right after BEGIN, held by the exit until it connects, and bounded there."""

from twisted.internet import defer, task
from twisted.trial import unittest

from meshvpn.errors import StreamRefused
from meshvpn.onion.cells import RelayCommand as R
from meshvpn.onion.endreasons import EndReason
from meshvpn.onion.flow import EARLY_DATA_LIMIT
from meshvpn.onion.streammsgs import End
from meshvpn.streams.circuitstream import StreamState
from meshvpn.streams.optimistic import OptimisticData
from meshvpn.streams.test.test_mux import MAX_DATA, Collect, FarEnd, Pipe


class Recorder:
    """A stream that records what it is written (an attempt of the opener)."""

    def __init__(self):
        self.written = []

    def write(self, data):
        self.written.append(bytes(data))


class OptimisticDataTests(unittest.TestCase):
    def test_attachSendsEverythingHeldThenWhatFollows(self):
        early = OptimisticData()
        early.write(b"GET / ")
        first = Recorder()
        early.attach(first)
        early.write(b"HTTP/1.0\r\n")
        self.assertEqual(b"".join(first.written), b"GET / HTTP/1.0\r\n")
        self.assertEqual(early.unsent(), [])
        self.assertEqual(early.size, 0)

    def test_eachAttemptGetsItAllAgain(self):
        """A circuit that died before CONNECTED took the bytes with it: the next attempt sends them again."""
        early = OptimisticData()
        early.write(b"abc")
        first, second = Recorder(), Recorder()
        early.attach(first)
        early.write(b"def")
        early.attach(second)
        self.assertEqual(b"".join(second.written), b"abcdef")
        self.assertEqual(early.unsent(), [])

    def test_attemptWithoutOptimisticDataLeavesItAllForConnected(self):
        early = OptimisticData()
        early.attach(Recorder())
        early.write(b"abc")
        early.attach(None)  # the next circuit did not negotiate optimistic data
        early.write(b"def")
        self.assertEqual(b"".join(early.unsent()), b"abcdef")

    def test_onlyTheLimitGoesOptimistically(self):
        early = OptimisticData(limit=5)
        early.write(b"abc")
        sent = Recorder()
        early.attach(sent)
        early.write(b"defgh")
        self.assertEqual(b"".join(sent.written), b"abcde")
        self.assertEqual(b"".join(early.unsent()), b"fgh")


class OptimisticPipe(Pipe):
    """A circuit whose two ends negotiated optimistic data."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.origin._early = self.exit._early = lambda: True


class OptimisticStreamTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.connecting = []
        self.pipe = OptimisticPipe(accept=self.accept, clock=self.clock)

    def accept(self, host, port):
        d = defer.Deferred()
        self.connecting.append(d)
        return d

    def drain(self):
        for _ in range(20):
            self.clock.advance(0)

    def test_dataFollowsBeginBeforeConnected(self):
        early = OptimisticData()
        early.write(b"GET / HTTP/1.0\r\n\r\n")
        app = Collect()
        opening = self.pipe.origin.openStream("198.18.0.7", 80, app, early=early)
        self.drain()
        commands = [c for to, c, _, _ in self.pipe.log if to == "exit"]
        self.assertEqual(commands, [R.BEGIN, R.DATA])
        self.assertNoResult(opening)
        # The exit holds the request until its connection is made, then it goes first.
        (exitStream,) = self.pipe.exit.streams.values()
        self.assertIs(exitStream.state, StreamState.CONNECTING)
        far = FarEnd()
        self.connecting[0].callback(far)
        self.drain()
        stream = self.successResultOf(opening)
        self.assertEqual(early.unsent(), [])
        stream.write(b"more")
        self.drain()
        self.assertEqual(b"".join(far.data), b"GET / HTTP/1.0\r\n\r\nmore")
        self.assertEqual(self.pipe.exit.violations, 0)
        self.assertEqual(self.pipe.exit.heldBytes, 0)

    def test_refusedConnectDropsWhatWasHeld(self):
        early = OptimisticData()
        early.write(b"x" * 1000)
        opening = self.pipe.origin.openStream("198.18.0.7", 25, Collect(), early=early)
        self.drain()
        self.assertEqual(self.pipe.exit.heldBytes, 1000)
        self.connecting[0].errback(StreamRefused(EndReason.CONNECTREFUSED))
        self.drain()
        self.assertEqual(self.failureResultOf(opening, StreamRefused).value.reason, EndReason.CONNECTREFUSED)
        self.assertEqual(self.pipe.exit.heldBytes, 0)
        self.assertEqual(self.pipe.exit.streams, {})

    def test_moreThanTheLimitWhileConnectingIsRefused(self):
        """
        The attack: a client that streams data at an exit that is still
        connecting, to make it hold without bound.  Past the limit the
        stream ends (TORPROTOCOL) and what it held is dropped; the circuit
        and its other streams carry on.
        """
        flooding = self.pipe.origin.openStream("198.18.0.7", 80, Collect())
        self.drain()
        (sid,) = self.pipe.exit.streams
        other = self.pipe.origin.openStream("198.18.0.8", 80, Collect())
        self.drain()
        chunk = b"y" * MAX_DATA
        for _ in range(EARLY_DATA_LIMIT // MAX_DATA + 1):  # the last one crosses the limit
            self.pipe.exit.relayReceived(R.DATA, sid, chunk)
        self.assertNotIn(sid, self.pipe.exit.streams)
        self.assertEqual(self.pipe.exit.violations, 1)
        self.assertEqual(self.pipe.exit.heldBytes, 0)
        self.assertIn(("origin", R.END, sid, End(EndReason.TORPROTOCOL).encode()), self.pipe.log)
        # The connection that completes late is closed, not spliced to a forgotten stream.
        far = FarEnd()
        self.connecting[0].callback(far)
        self.assertEqual(far.closed, [EndReason.DONE])
        # The other stream on the circuit is untouched.
        self.connecting[1].callback(FarEnd())
        self.drain()
        self.successResultOf(other)
        self.assertEqual(self.failureResultOf(flooding, StreamRefused).value.reason, EndReason.TORPROTOCOL)

    def test_withoutNegotiationDataBeforeConnectedIsAViolation(self):
        pipe = Pipe(accept=self.accept, clock=self.clock)
        early = OptimisticData()
        early.write(b"GET /")
        pipe.origin.openStream("198.18.0.7", 80, Collect(), early=early)
        self.drain()
        self.assertEqual([c for to, c, _, _ in pipe.log if to == "exit"], [R.BEGIN])
        (sid,) = pipe.exit.streams
        pipe.exit.relayReceived(R.DATA, sid, b"GET /")
        self.assertEqual(pipe.exit.violations, 1)
        self.assertEqual(early.unsent(), [b"GET /"])

    def test_theOriginNeverTakesDataBeforeConnected(self):
        """Optimistic data flows one way: the exit's DATA before CONNECTED is still a violation at the origin."""
        opening = self.pipe.origin.openStream("198.18.0.7", 80, Collect())
        self.drain()
        (sid,) = self.pipe.origin.streams
        self.pipe.origin.relayReceived(R.DATA, sid, b"HTTP/1.0 200 OK")
        self.assertEqual(self.pipe.origin.violations, 1)
        self.failureResultOf(opening, StreamRefused)

    def test_originEndWhileConnectingDropsWhatWasHeld(self):
        early = OptimisticData()
        early.write(b"z" * 3000)
        opening = self.pipe.origin.openStream("198.18.0.7", 80, Collect(), early=early)
        self.drain()
        self.assertEqual(self.pipe.exit.heldBytes, 3000)
        opening.cancel()  # the application gave up: END(MISC) to the exit
        self.drain()
        self.assertEqual(self.pipe.exit.heldBytes, 0)
        self.assertEqual(self.pipe.exit.streams, {})
        self.failureResultOf(opening, defer.CancelledError)
