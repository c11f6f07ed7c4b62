"""Link liveness (link version 3): a peer that hangs is found in seconds, a slow or quiet one is not.

The attack is a relay that stops answering while its connections stay open
(SIGSTOP, a wedged process): on iosim a pump that is no longer flushed is
exactly that.  Without PING the link lived on for deadAfter (95 s) and every
circuit through it hung that long.
"""

from hypothesis import given, strategies as st
from twisted.internet import task
from twisted.trial import unittest

from meshvpn.errors import LinkSilent
from meshvpn.link import wire
from meshvpn.link.protocol import LinkSettings, State
from meshvpn.link.test.helpers import cell, linkPair

FAST = LinkSettings(keepaliveInterval=30, deadAfter=95, idleTimeout=0, probeAfter=1.0, probeTimeout=4.0)


class LivenessTests(unittest.TestCase):
    def pair(self, clientSettings=FAST, serverSettings=FAST):
        clock = task.Clock()
        client, server, pump, _, _ = linkPair(clock, clientSettings, serverSettings)
        self.assertGreaterEqual(client.version, 3)
        return clock, client, server, pump

    def test_hungPeerIsClosedWithinSeconds(self):
        clock, client, server, pump = self.pair()
        closed = []
        client.whenClosed().addCallback(closed.append)
        client.sendCells([cell(1)])
        # The peer is stopped: nothing is delivered either way from now on.
        for _ in range(4):
            clock.advance(1)
        self.assertIs(client.state, State.OPEN)
        clock.advance(1.0)
        self.assertIs(client.state, State.CLOSED)
        self.assertIsInstance(client.closeReason, LinkSilent)
        self.assertIn("answered no PING", str(client.closeReason))

    def test_livePeerAnswers(self):
        """A peer with nothing to say answers the PING: the link stays, and its round trip is measured."""
        clock, client, server, pump = self.pair()
        for _ in range(30):
            client.sendCells([cell(1)])
            clock.advance(1)
            pump.flush()
        self.assertIs(client.state, State.OPEN)
        self.assertTrue(client.pingRtts)

    def test_noPingWhileAnswered(self):
        """Cells coming back are proof enough: no PING is sent on a link that talks both ways."""
        clock, client, server, pump = self.pair()
        for _ in range(10):
            client.sendCells([cell(1)])
            server.sendCells([cell(2)])
            pump.flush()
            clock.advance(0.5)
        # only the PING each side sends at open, to measure the round trip
        self.assertEqual(client._pings, 1)
        self.assertEqual(server._pings, 1)

    def test_quietIdleLinkNotProbedUntilKeepalive(self):
        clock, client, server, pump = self.pair()
        clock.advance(10)
        self.assertEqual(client._pings, 1)  # the one at open
        self.assertIs(client.state, State.OPEN)

    def test_idleHungPeerFoundAtKeepalive(self):
        """The keepalive of a version 3 link is a PING: a peer that hangs while idle goes within 30 + 4 s."""
        clock, client, server, pump = self.pair()
        clock.advance(30)
        self.assertEqual(client._pings, 2)
        clock.advance(4)
        self.assertIs(client.state, State.CLOSED)
        self.assertIsInstance(client.closeReason, LinkSilent)

    def test_slowPeerStretchesTheTimeout(self):
        """A peer whose PONGs took 2.5 s (a starved machine) gets 3 x 2.5 s, not the 4 s floor; one stall is not a trend."""
        clock, client, server, pump = self.pair()
        client.pingRtts[:] = [0.1, 2.5, 2.5]
        self.assertEqual(client.pingTimeout(), 7.5)
        client.pingRtts[:] = [0.1, 0.1, 9.0]
        self.assertEqual(client.pingTimeout(), FAST.probeTimeout)
        client.pingRtts[:] = [60.0, 60.0]
        self.assertEqual(client.pingTimeout(), FAST.probeTimeoutMax)
        client.pingRtts[:] = [0.1, 2.5, 2.5]
        client.sendCells([cell(1)])
        clock.advance(1)  # PING after 0.3 s (4 x the measured round trip, at least 0.3 s)
        clock.advance(6.5)
        self.assertIs(client.state, State.OPEN)
        self.assertTrue(client.suspected)
        pump.flush()  # the answer comes, late
        clock.advance(10)
        self.assertIs(client.state, State.OPEN)

    def test_ourOwnPauseIsNotThePeersSilence(self):
        """Reading paused by our backpressure: nothing arrives, and that is not the peer's fault."""
        clock, client, server, pump = self.pair()
        client.pauseProducing()
        client.sendCells([cell(1)])
        for _ in range(20):
            clock.advance(1)
        self.assertIs(client.state, State.OPEN)

    def test_suspectedBeforeTheVerdict(self):
        """The attack: a guard cut silently.  The link is suspected within a second (so streams can move), closed later."""
        clock, client, server, pump = self.pair()
        heard = []
        client.onSuspicion = lambda link, suspected: heard.append((clock.seconds(), suspected))
        client.sendCells([cell(1)])
        clock.advance(0.3)  # PING: 4 x the measured round trip (0 here), at least 0.3 s
        self.assertEqual(client._pings, 2)
        clock.advance(0.49)
        self.assertEqual(heard, [])
        clock.advance(0.02)  # the suspicion floor, 0.5 s after the PING
        self.assertEqual(heard, [(0.81, True)])
        self.assertIs(client.state, State.OPEN)
        clock.advance(3.0)
        self.assertIs(client.state, State.OPEN)
        clock.advance(0.5)  # the verdict: 4 s after the PING
        self.assertIs(client.state, State.CLOSED)
        self.assertIsInstance(client.closeReason, LinkSilent)

    def test_suspicionClearsWhenThePeerIsHeard(self):
        """A peer that stalled for a second and answers is no longer suspected, and its link stays."""
        clock, client, server, pump = self.pair()
        heard = []
        client.onSuspicion = lambda link, suspected: heard.append(suspected)
        client.sendCells([cell(1)])
        clock.advance(0.3)  # PING
        clock.advance(0.5)
        self.assertEqual(heard, [True])
        self.assertTrue(client.suspected)
        pump.flush()
        self.assertEqual(heard, [True, False])
        self.assertFalse(client.suspected)
        clock.advance(10)
        self.assertIs(client.state, State.OPEN)

    def test_boundsFollowTheMeasuredRoundTrip(self):
        """A far peer (PONGs in 200 ms) is probed after 4 x SRTT and suspected after RFC 6298's RTO, not the floors."""
        clock, client, server, pump = self.pair()
        client.roundTrips.__init__()
        for _ in range(20):
            client.roundTrips.add(0.2)
        self.assertAlmostEqual(client.probeAfter(), 0.8)
        self.assertGreaterEqual(client.suspectTimeout(), 0.5)
        self.assertLess(client.suspectTimeout(), 0.6)
        client.roundTrips.add(1.0)  # one late answer widens the suspicion bound at once
        self.assertGreater(client.suspectTimeout(), 1.0)
        self.assertLessEqual(client.suspectTimeout(), client.pingTimeout())

    def test_busyLinkMeasuresItsRoundTrip(self):
        """Cells answered all the time send no PING for liveness, but the keepalive's PING still times a PONG."""
        clock, client, server, pump = self.pair()
        before = len(client.pingRtts)
        for _ in range(130):
            client.sendCells([cell(1)])
            server.sendCells([cell(2)])
            pump.flush()
            clock.advance(0.5)
        self.assertGreaterEqual(len(client.pingRtts), before + 2)

    def test_backpressuredPeerIsNotSuspected(self):
        """
        The false positive: the peer is alive but not reading (its next link
        is full), so our PING waits unread for seconds.  It says it lives on
        its own while paused, and the link is neither suspected nor closed.
        """
        clock, client, server, pump = self.pair()
        heard = []
        client.onSuspicion = lambda link, suspected: heard.append(suspected)
        server.pauseProducing()
        for _ in range(100):
            client.sendCells([cell(1)])
            clock.advance(0.1)
            pump.flush()
        self.assertIs(client.state, State.OPEN)
        self.assertEqual(heard, [])
        server.resumeProducing()
        pump.flush()
        self.assertEqual(server.cellsIn, 100)

    def test_pausedPeerThatHangsIsStillFound(self):
        """The same peer stops altogether (SIGSTOP while paused): its heartbeats stop, and it is found."""
        clock, client, server, pump = self.pair()
        server.pauseProducing()
        for _ in range(10):
            client.sendCells([cell(1)])
            clock.advance(0.1)
            pump.flush()
        client.sendCells([cell(1)])
        for _ in range(60):
            clock.advance(0.1)  # nothing delivered: the peer hangs
        self.assertIs(client.state, State.CLOSED)
        self.assertIsInstance(client.closeReason, LinkSilent)

    def test_pingOnAVersion2LinkIsAViolation(self):
        """The attack: a peer that negotiated version 2 sends a version-3 record anyway."""
        clock = task.Clock()
        old = LinkSettings(versions=(1, 2))
        client, server, pump, _, _ = linkPair(clock, FAST, old)
        self.assertEqual(client.version, 2)
        client.sendCells([cell(1)])
        for _ in range(40):
            clock.advance(1)
        self.assertEqual(client._pings, 0)  # never sent to a peer that does not know it
        self.assertIs(client.state, State.OPEN)
        client.transport.write(wire.encodePing(wire.PING, b"x"))
        pump.flush()
        self.assertIs(server.state, State.CLOSED)
        self.assertIn("PING/PONG in state open on a version 2 link", str(server.closeReason))

    def test_oversizedPingRefused(self):
        clock, client, server, pump = self.pair()
        client.transport.write(wire.encodeControl(wire.PING, b"y" * 9))
        pump.flush()
        self.assertIs(server.state, State.CLOSED)
        self.assertIn("PING/PONG body of 9 bytes", str(server.closeReason))

    def test_pongEchoesThePing(self):
        clock, client, server, pump = self.pair()
        got = []
        client._pingArrived = lambda kind, body: got.append((kind, body))
        client.transport.write(wire.encodePing(wire.PING, b"abc"))
        pump.flush()
        self.assertEqual(got, [(wire.PONG, b"abc")])


class PingRecordTests(unittest.TestCase):
    @given(st.binary(max_size=40))
    def test_checkPing(self, body):
        if len(body) <= wire.PING_MAX_BODY:
            self.assertEqual(wire.checkPing(body), body)
        else:
            self.assertRaises(wire.LinkProtocolError, wire.checkPing, body)


class AnonymousPeerTests(unittest.TestCase):
    """
    The soak's one event: a starved client process (4-7 s without a turn)
    had its guard links closed as silent by the relays, and every stream of
    the users behind it failed at once.  A relay now waits
    C{CLIENT_VERDICT_S} on a silent client, as it would on one that reads slowly.
    """

    def pair(self):
        clock = task.Clock()
        client, server, pump, _, _ = linkPair(clock, LinkSettings(keepaliveInterval=30, deadAfter=95, idleTimeout=0,
                                                                  probeAfter=1.0, probeTimeout=4.0,
                                                                  authenticate=False), FAST)
        self.assertIsNone(server.peerId)  # the relay's side of a client's link
        return clock, client, server, pump

    def test_aStalledClientKeepsItsLink(self):
        from meshvpn.link.liveness import CLIENT_VERDICT_S

        clock, client, server, pump = self.pair()
        server.sendCells([cell(1)])  # the client stops reading from now on
        for _ in range(int(CLIENT_VERDICT_S) - 2):
            clock.advance(1)
        self.assertIs(server.state, State.OPEN)  # a 7 s stall (the soak's) and far more: kept
        for _ in range(4):
            clock.advance(1)
        self.assertIs(server.state, State.CLOSED)  # a client gone for good is still let go
        self.assertIsInstance(server.closeReason, LinkSilent)

    def test_theClientStillFindsAHungGuardInSeconds(self):
        clock, client, server, pump = self.pair()
        client.sendCells([cell(1)])
        for _ in range(5):
            clock.advance(1)
        self.assertIs(client.state, State.CLOSED)


class TurnClock(task.Clock):
    """A reactor's timer pass: only the calls due when it starts run; a call added meanwhile waits for the next."""

    def advance(self, amount):
        self.rightNow += amount
        self._sortCalls()
        due = [c for c in self.calls if c.getTime() <= self.seconds()]
        for call in due:
            if call in self.calls:
                self.calls.remove(call)
                call.called = 1
                call.func(*call.args, **call.kw)


class OwnStallTests(unittest.TestCase):
    """
    A starved process (ours, not the peer) wakes after seconds: the reactor
    runs its due timers before it reads, so the PING's verdict came before the
    PONG waiting in the socket was read, and a live guard was closed as silent
    (a client at load 17: its guard links closed, its guards counted down).
    """

    def test_aStalledNodeReadsBeforeItJudges(self):
        clock = TurnClock()
        client, server, pump, _, _ = linkPair(clock, FAST, FAST)
        client.sendCells([cell(1)])
        pump.flush()
        clock.advance(1.0)  # the PING after unanswered cells goes out...
        self.assertIsNotNone(client._pingAt)
        clock.advance(6.0)  # ...and this process stalls past the verdict before reading anything
        self.assertIs(client.state, State.OPEN)  # not judged yet: a turn to read first
        pump.flush(advanceClock=False)  # the peer (another process) read the PING...
        for call in [c for c in clock.calls if c.func.__name__ == "_scheduledFlush"]:
            clock.calls.remove(call)  # ...and wrote its PONG (its own turn, not ours)
            call.func(*call.args, **call.kw)
        pump.flush(advanceClock=False)  # our read: the PONG waited in the socket
        clock.advance(0)
        self.assertIs(client.state, State.OPEN)
        self.assertFalse(client.suspected)

    def test_aHungPeerIsStillClosedOneTurnLater(self):
        clock = TurnClock()
        client, server, pump, _, _ = linkPair(clock, FAST, FAST)
        client.sendCells([cell(1)])
        clock.advance(1.0)
        clock.advance(6.0)
        clock.advance(0)  # the turn to read brought nothing
        self.assertIs(client.state, State.CLOSED)
        self.assertIsInstance(client.closeReason, LinkSilent)


class PausedReadingTests(unittest.TestCase):
    """
    The 1000-user soak's one event: a link whose reading was paused held
    what kept arriving; on resume, if the first held chunk's cells paused it
    again, the rest was dropped, the byte stream was cut mid-record
    ("unknown record type 0xf1"), and the link and every circuit on it went.
    """

    def test_heldDataSurvivesAPauseDuringTheResume(self):
        from meshvpn.link import wire

        clock, client, server, pump = LivenessTests.pair(self)
        got = []

        def receiver(cells):
            got.extend(cells)
            if len(got) == 1:
                server.pauseProducing()  # the first cell's circuit fills an output queue

        server.setCellReceiver(receiver)
        server.pauseProducing()
        stream = b"".join(wire.encodeCells([cell(i)]) for i in range(1, 7))
        for k in range(0, len(stream), 700):  # chunks that cut records, as TCP does
            server.dataReceived(stream[k:k + 700])
        server.resumeProducing()
        self.assertEqual(got, [cell(1)])  # paused again after the first: the rest waits
        server.resumeProducing()
        self.assertEqual(got, [cell(i) for i in range(1, 7)])  # all of it, in order
        self.assertIs(server.state, State.OPEN)
