"""Tests for CircuitStreamOpener: circuits per isolation key, retry when a circuit dies, RESOLVED answers."""

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from meshvpn.streams import attachtimeout as AT
from meshvpn.streams.opener import MAX_ATTEMPTS, CircuitStreamOpener
from meshvpn.errors import NoPath, StreamRefused
from meshvpn.interfaces import IStreamOpener
from meshvpn.onion.endreasons import EndReason
from meshvpn.onion.streammsgs import AnswerType


class FakeMux:
    """The circuit's stream layer: RESOLVED answers for resolve()."""

    def __init__(self):
        self.asked = []

    def resolve(self, name):
        self.asked.append(name)
        if name.endswith(".in-addr.arpa"):
            return defer.succeed([(AnswerType.HOSTNAME, b"host.example", 60)])
        if name == "nx.example":
            return defer.succeed([(AnswerType.ERROR_NONTRANSIENT, b"", 0)])
        return defer.succeed([(AnswerType.IPV4, bytes([198, 18, 0, 1]), 60), (AnswerType.IPV6, bytes(15) + b"\x01", 60)])


HANG = object()


class FakeCircuit:
    def __init__(self, outcomes):
        self.outcomes = outcomes
        self.opened = []
        self.cancelled = []
        self.streamHandler = FakeMux()

    def openStream(self, host, port, isolation=None):
        self.opened.append((host, port, isolation))
        outcome = self.outcomes.pop(0)
        if outcome is HANG:
            # a circuit through a hung relay: no answer, ever; cancelling ends the stream
            d = defer.Deferred(lambda _: self.cancelled.append((host, port)))
            return d
        if isinstance(outcome, Exception):
            return defer.fail(outcome)
        return defer.succeed(outcome)


def Opener(manager, **kw):
    """The opener without multipath: these tests look at the stream it hands out."""
    kw.setdefault("reactor", Clock())
    return CircuitStreamOpener(manager, multipath=None, **kw)


class FakeManager:
    def __init__(self, circuits):
        self.circuits = circuits
        self.asked = []
        self.retired = []
        self.unanswered = []

    def streamTimedOut(self, circuit):
        self.retired.append(circuit)
        return True

    def circuitUnanswered(self, circuit):
        self.unanswered.append(circuit)
        return self.streamTimedOut(circuit)

    def getCircuit(self, target=None, isolation=None):
        self.asked.append((target, isolation))
        if not self.circuits:
            return defer.fail(NoPath())
        return defer.succeed(self.circuits.pop(0))


class CircuitStreamOpenerTests(unittest.TestCase):
    def test_interface(self):
        self.assertTrue(verifyObject(IStreamOpener, Opener(FakeManager([]))))

    def test_targetAndIsolationReachManager(self):
        m = FakeManager([FakeCircuit(["stream"])])
        self.assertEqual(self.successResultOf(Opener(m).openStream("example.com", 443, "k")), "stream")
        self.assertEqual(m.asked, [(("example.com", 443), "k")])

    def test_deadCircuitRetriedOnce(self):
        m = FakeManager([FakeCircuit([StreamRefused(EndReason.DESTROY)]), FakeCircuit(["stream"])])
        self.assertEqual(self.successResultOf(Opener(m).openStream("example.com", 443, "k")), "stream")

    def test_retriesBounded(self):
        m = FakeManager([FakeCircuit([StreamRefused(EndReason.DESTROY)]) for _ in range(MAX_ATTEMPTS + 1)])
        f = self.failureResultOf(Opener(m).openStream("example.com", 443, "k"), StreamRefused)
        self.assertEqual(f.value.reason, EndReason.DESTROY)
        self.assertEqual(len(m.asked), MAX_ATTEMPTS)

    def test_policyRefusalNotRetried(self):
        m = FakeManager([FakeCircuit([StreamRefused(EndReason.EXITPOLICY)]), FakeCircuit(["stream"])])
        f = self.failureResultOf(Opener(m).openStream("example.com", 25, "k"), StreamRefused)
        self.assertEqual(f.value.reason, EndReason.EXITPOLICY)

    def test_noPath(self):
        self.failureResultOf(Opener(FakeManager([])).openStream("example.com", 443, "k"), NoPath)

    def test_resolve(self):
        m = FakeManager([FakeCircuit([]), FakeCircuit([]), FakeCircuit([])])
        o = Opener(m)
        self.assertEqual(self.successResultOf(o.resolve("example.com", "k")), ["198.18.0.1", "::1"])
        self.assertEqual(self.successResultOf(o.resolvePTR("198.18.0.1", "k")), ["host.example"])
        self.assertEqual(m.asked[0], (None, "k"))
        f = self.failureResultOf(o.resolve("nx.example", "k"), StreamRefused)
        self.assertEqual(f.value.reason, EndReason.RESOLVEFAILED)


class BulkWrapping(unittest.TestCase):
    def test_streamsAreBulkStreamsByDefault(self):
        from meshvpn.streams.bulkstream import BulkStream

        m = FakeManager([FakeCircuit(["stream"])])
        got = self.successResultOf(CircuitStreamOpener(m).openStream("example.com", 443, "k"))
        self.assertIsInstance(got, BulkStream)
        self.assertEqual(got.inner, "stream")
        self.assertEqual(got.detector.threshold, 1 << 20)


class AttachTimeoutTests(unittest.TestCase):
    """The fault: a circuit through a hung relay takes the stream and never answers (it waited 120 s for SOCKS)."""

    def test_unansweredStreamMovesToAnotherCircuit(self):
        clock = Clock()
        hung, good = FakeCircuit([HANG]), FakeCircuit(["stream"])
        m = FakeManager([hung, good])
        d = Opener(m, reactor=clock).openStream("example.com", 443, "k")
        clock.advance(AT.FLOOR_S - 0.1)  # nothing measured yet: Tor's 10 s
        self.assertNoResult(d)
        clock.advance(0.1)
        self.assertEqual(self.successResultOf(d), "stream")
        self.assertEqual(hung.cancelled, [("example.com", 443)])  # END went to the exit
        self.assertEqual(m.retired, [hung])  # and the slow circuit takes no new streams

    def test_neverAHang(self):
        """Every circuit hangs: after MAX_ATTEMPTS the app gets a clear error, TTL expired in SOCKS terms."""
        from meshvpn.client.socks import replyForFailure
        from meshvpn.client.socksparse import Reply

        clock = Clock()
        m = FakeManager([FakeCircuit([HANG]) for _ in range(MAX_ATTEMPTS)])
        d = Opener(m, reactor=clock).openStream("example.com", 443, "k")
        clock.advance(AT.FLOOR_S)
        clock.advance(AT.FLOOR_S * AT.LATER)
        self.assertNoResult(d)
        clock.advance(AT.FLOOR_S * AT.LATER)
        f = self.failureResultOf(d, StreamRefused)
        self.assertEqual(f.value.reason, EndReason.TIMEOUT)
        self.assertEqual(replyForFailure(f), Reply.TTL_EXPIRED)
        self.assertEqual(len(m.retired), MAX_ATTEMPTS)

    def test_limitFromMeasuredAttaches(self):
        t = AT.AttachTimeout()
        self.assertEqual(t.limit(1), AT.FLOOR_S)
        for _ in range(AT.MIN_SAMPLES):
            t.attached(0.05)
        self.assertEqual(t.limit(1), AT.FLOOR_S)
        self.assertEqual(t.limit(2), AT.FLOOR_S * AT.LATER)
        for _ in range(AT.SAMPLES):
            t.attached(3.0)  # a starved machine: 4 x 3 s
        self.assertEqual(t.limit(1), 12.0)
        for _ in range(AT.SAMPLES):
            t.attached(30.0)
        self.assertEqual(t.limit(1), AT.CAP_S)

    def test_measuredLimitUsed(self):
        clock = Clock()
        circuits = [FakeCircuit(["s"]) for _ in range(AT.MIN_SAMPLES)] + [FakeCircuit([HANG]), FakeCircuit(["late"])]
        m = FakeManager(circuits)
        o = Opener(m, reactor=clock)
        for _ in range(AT.MIN_SAMPLES):
            self.successResultOf(o.openStream("example.com", 443, "k"))
        d = o.openStream("example.com", 443, "k")
        clock.advance(AT.FLOOR_S)
        self.assertEqual(self.successResultOf(d), "late")

    def test_unansweredLookupMoves(self):
        clock = Clock()

        class HungMux(FakeMux):
            def resolve(self, name):
                return defer.Deferred()

        hung = FakeCircuit([])
        hung.streamHandler = HungMux()
        m = FakeManager([hung, FakeCircuit([])])
        d = Opener(m, reactor=clock).resolve("example.com", "k")
        clock.advance(AT.FLOOR_S)
        self.assertEqual(self.successResultOf(d), ["198.18.0.1", "::1"])


class SuspectingManager(FakeManager):
    """A manager whose circuits' guards can be suspected (its whenSuspect, as the real one's)."""

    def __init__(self, circuits):
        super().__init__(circuits)
        self.waiting = {}
        self.moved = 0

    def whenSuspect(self, circuit):
        d = defer.Deferred(lambda d: self.waiting[circuit].remove(d))
        self.waiting.setdefault(circuit, []).append(d)
        return d

    def suspect(self, circuit):
        for d in list(self.waiting.get(circuit, [])):
            self.waiting[circuit].remove(d)
            d.callback(None)

    def streamMoved(self):
        self.moved += 1


class SuspicionTests(unittest.TestCase):
    """The fault: the guard is cut silently while a stream waits for CONNECTED.  It moves when the guard is suspected."""

    def test_waitingStreamMovesAtOnce(self):
        clock = Clock()
        cut, good = FakeCircuit([HANG]), FakeCircuit(["stream"])
        m = SuspectingManager([cut, good])
        opener = Opener(m, reactor=clock)
        d = opener.openStream("example.com", 443, "k")
        clock.advance(0.8)
        self.assertNoResult(d)
        m.suspect(cut)  # the guard's link answered no PING in time
        self.assertEqual(self.successResultOf(d), "stream")
        self.assertEqual(cut.cancelled, [("example.com", 443)])  # END went to the exit
        self.assertEqual(m.retired, [])  # a suspicion retires nothing: it may be wrong
        self.assertEqual((opener.moved, m.moved), (1, 1))

    def test_answeredStreamForgetsTheSuspicion(self):
        m = SuspectingManager([FakeCircuit(["stream"])])
        d = Opener(m).openStream("example.com", 443, "k")
        self.assertEqual(self.successResultOf(d), "stream")
        self.assertEqual(sum(len(w) for w in m.waiting.values()), 0)  # nothing left waiting: bounded

    def test_lastAttemptStaysPut(self):
        """Moves are attempts: suspected on every circuit, the last one waits for its answer or the verdict."""
        clock = Clock()
        circuits = [FakeCircuit([HANG]) for _ in range(MAX_ATTEMPTS - 1)] + [FakeCircuit([HANG])]
        m = SuspectingManager(list(circuits))
        d = Opener(m, reactor=clock).openStream("example.com", 443, "k")
        for c in circuits:
            m.suspect(c)
        self.assertNoResult(d)
        self.assertEqual(m.waiting.get(circuits[-1], []), [])
        clock.advance(AT.FLOOR_S * AT.LATER)
        self.assertEqual(self.failureResultOf(d, StreamRefused).value.reason, EndReason.TIMEOUT)


class HungMiddleTests(unittest.TestCase):
    """
    The fault: a middle or exit hangs.  The guard answers its PINGs, so no
    link is suspected; the stream's circuit is probed end to end instead.
    """

    def hungCircuit(self, outcomes):
        class DeadEnd(FakeMux):
            def resolve(self, name):
                self.asked.append(name)
                return defer.Deferred(lambda _: None)  # nothing comes back through the hung hop

        c = FakeCircuit(outcomes)
        c.streamHandler = DeadEnd()
        return c

    def test_unansweredProbeMovesTheStream(self):
        from meshvpn.streams import circuitprobe as P

        clock = Clock()
        hung, good = self.hungCircuit([HANG]), FakeCircuit(["stream"])
        m = FakeManager([hung, good])
        opener = Opener(m, reactor=clock)
        d = opener.openStream("example.com", 443, "k")
        clock.advance(P.WAIT_FLOOR_S)
        self.assertEqual(hung.streamHandler.asked, [P.PROBE_NAME])  # the probe: no connect, no DNS at the exit
        clock.advance(P.ANSWER_FLOOR_S - 0.01)
        self.assertNoResult(d)
        clock.advance(0.01)
        self.assertEqual(self.successResultOf(d), "stream")  # about 2 s, not the attach timeout's 10
        self.assertEqual(hung.cancelled, [("example.com", 443)])
        self.assertEqual(m.retired, [hung])  # takes no new streams
        self.assertEqual(m.unanswered, [hung])  # and the manager avoids its middle and exit
        self.assertEqual((opener.moved, opener.probe.unanswered), (1, 1))

    def test_slowExitAnsweringTheProbeKeepsTheStream(self):
        """The false positive: the exit's connect is slow (a far site) but every hop forwards: the stream waits."""
        clock = Clock()
        slow = FakeCircuit([HANG])
        m = FakeManager([slow, FakeCircuit(["other"])])
        opener = Opener(m, reactor=clock)
        d = opener.openStream("example.com", 443, "k")
        clock.advance(5)
        self.assertNoResult(d)
        self.assertEqual(slow.cancelled, [])
        self.assertEqual(m.retired, [])
        self.assertEqual(slow.streamHandler.asked, ["127.0.0.1"])  # one probe, answered

    def test_waitingStreamsShareOneProbe(self):
        from meshvpn.streams import circuitprobe as P

        clock = Clock()
        hung = self.hungCircuit([HANG, HANG, HANG])
        m = FakeManager([hung, hung, hung, FakeCircuit(["a"]), FakeCircuit(["b"]), FakeCircuit(["c"])])
        opener = Opener(m, reactor=clock)
        ds = [opener.openStream("example.com", 443, "k") for _ in range(3)]
        clock.advance(P.WAIT_FLOOR_S)
        self.assertEqual(hung.streamHandler.asked, [P.PROBE_NAME])
        clock.advance(P.ANSWER_FLOOR_S)
        self.assertEqual(sorted(self.successResultOf(d) for d in ds), ["a", "b", "c"])
