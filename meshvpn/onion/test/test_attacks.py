"""Attacks of a hostile relay on the circuits it carries, one test per row of doc/security.md's threat table.

Every test runs a client, guard, middle and exit in memory
(L{meshvpn.onion.test.hostile.HostileNet}); one relay follows a hostile
plan (L{meshvpn.onion.hostile}).  Each asserts what the client does about
it, and that the hostile relay's view (every forward payload once its own
layer is off) never holds the client's target or request.
"""

from hypothesis import given, settings, strategies as st
from twisted.python.failure import Failure
from twisted.trial import unittest

from meshvpn.errors import StreamRefused
from meshvpn.onion.cells import Created2, DestroyReason, Extended2, RelayCommand
from meshvpn.onion.destroy import CircuitDestroyed
from meshvpn.onion.hostile import PlanError, parsePlan
from meshvpn.onion.origin import OriginCircuit
from meshvpn.onion.streammsgs import AnswerType, Connected, End, Resolved
from meshvpn.onion.test.hostile import REQUEST, TARGET_HOST, TARGET_PORT, TRUE_ADDRESS, HostileNet
from meshvpn.streams.edge import attachStreams

FORGED = bytes([6, 6, 6, 6])
SECRET_PACKET = b"\x45" + bytes(11) + bytes([198, 18, 0, 2]) + bytes([100, 96, 0, 1]) + b"SECRET-PACKET-PAYLOAD" * 4


class ViewChecks:
    def assertNothingReadable(self, relay):
        """C{relay} (hostile) never read the target, the request or a packet the client sent."""
        view = relay.view
        self.assertGreater(len(view), 0)  # it did see cells
        for secret in (TARGET_HOST.encode(), REQUEST[:20], b"SECRET-COOKIE", b"SECRET-PACKET"):
            self.assertNotIn(secret, view)

    def assertClosedWith(self, n, circ, reason):
        closed = n.closedReason(circ)
        self.assertIsNotNone(closed, "the circuit is still open")
        self.assertEqual(DestroyReason.name(closed.reason), DestroyReason.name(reason))
        n.pump()
        for relay in (n.guard, n.middle, n.exit):
            self.assertEqual(n.hops(relay), [], f"{relay.name} still carries the circuit")

    def useCircuit(self, n, circ):
        """What a client does with a circuit it believes open: a stream with a request, and a VPN packet."""
        d, app = n.openStream(circ)
        if d.called and not isinstance(d.result, Failure):
            d.result.write(REQUEST)
        else:
            d.addErrback(lambda f: None)
        circ.sendPackets([SECRET_PACKET])
        n.pump()
        return d, app


class Honest(ViewChecks, unittest.TestCase):
    """The harness itself: a plan that never fires leaves a working circuit and a view without secrets."""

    def test_streamAndPacketsThrough(self):
        n = HostileNet(guard="cell:1000=drop")
        circ, d = n.build()
        self.successResultOf(d)
        d, app = n.openStream(circ)
        stream = self.successResultOf(d)
        stream.write(REQUEST)
        circ.sendPackets([SECRET_PACKET])
        n.pump()
        self.assertEqual(b"".join(n.exitReceived), REQUEST)
        self.assertEqual(b"".join(app.data), REQUEST.upper())
        self.assertEqual(n.exitPackets, [SECRET_PACKET])
        self.assertNothingReadable(n.guard)
        self.assertEqual(n.guard.hostility.status()["circuits_attacked"], 0)

    def test_plansParseOrSayWhy(self):
        plan = parsePlan("open=truncated+resolved:1-8:6.6.6.6+swallow;extend=drop;cell:3=delay:2;circuits=2")
        self.assertEqual(plan.circuits, 2)
        self.assertEqual([r.trigger for r in plan.rules], ["open", "extend", "cell"])
        self.assertEqual(plan.rules[0].actions[1].ids, tuple(range(1, 9)))
        for bad in ("", "open", "later=drop", "open=explode", "cell:0=drop", "open=resolved:1:nowhere",
                    "open=end", "open=end:0", "open=delay:x", "circuits=0", "open=truncated:SOMETIMES"):
            self.assertRaises(PlanError, parsePlan, bad)


class PlanParser(unittest.TestCase):
    @given(st.text(alphabet="opencxtdl:=+;-0123456789.trucaesmgybkfwhi", max_size=60))
    @settings(max_examples=400, deadline=None)
    def test_anyTextParsesOrSaysWhy(self, text):
        try:
            parsePlan(text)
        except PlanError:
            pass


class Truncated(ViewChecks, unittest.TestCase):
    """TRUNCATED the client did not ask for."""

    def test_onOpenCircuitClosesIt(self):
        """
        The guard sends TRUNCATED on a built circuit (and keeps whatever
        comes next): the client closes the circuit instead of going on with
        a one-hop circuit whose cells only the guard's layer protects.
        """
        n = HostileNet(guard="open=truncated+swallow")
        circ, d = n.build()
        self.successResultOf(d)
        self.useCircuit(n, circ)  # its BEGIN sets the guard off
        self.useCircuit(n, circ)  # what a client would send next on that circuit
        self.assertClosedWith(n, circ, DestroyReason.PROTOCOL)
        self.assertEqual(len(circ.crypto.hops), 3)
        self.assertNothingReadable(n.guard)
        self.assertEqual(n.guard.hostility.status()["actions"]["truncated"], 1)

    def test_refusedExtendBlamesNoInnocentHop(self):
        """
        The guard answers the EXTEND2 to the middle with TRUNCATED ("cannot
        reach it"): the build fails and the circuit closes, and the failure
        names no hop, so the circuit manager does not exclude the middle on
        the guard's word.
        """
        n = HostileNet(guard="extend=truncated")
        circ, d = n.build()
        f = self.failureResultOf(d, CircuitDestroyed)
        self.assertIsNone(f.value.hop)
        self.assertClosedWith(n, circ, DestroyReason.CONNECTFAILED)
        self.assertEqual(n.middle.switch.counters["circuits_created"], 0)

    def test_unrequestedDuringBuildBlamesTheSender(self):
        """
        While the middle extends to the exit, the guard sends a TRUNCATED
        nobody asked it for: a protocol violation of the guard's, so the
        build fails naming the guard (hop 0), not the exit.
        """
        n = HostileNet(guard="cell:2=truncated")
        circ, d = n.build()
        f = self.failureResultOf(d, CircuitDestroyed)
        self.assertEqual(f.value.hop, 0)
        self.assertEqual(f.value.reason, DestroyReason.PROTOCOL)
        self.assertClosedWith(n, circ, DestroyReason.PROTOCOL)

    def test_stalledExtendBlamesNoInnocentHop(self):
        """The guard swallows the EXTEND2 to the middle: the build times out naming no hop."""
        n = HostileNet(guard="extend=drop", timeout=5)
        circ, d = n.build()
        self.assertNoResult(d)
        n.clock.advance(5)
        n.pump()
        f = self.failureResultOf(d, CircuitDestroyed)
        self.assertEqual(f.value.reason, DestroyReason.TIMEOUT)
        self.assertIsNone(f.value.hop)

    def test_destroyDuringExtendBlamesNoInnocentHop(self):
        """The guard keeps the EXTEND2 and DESTROYs the circuit "because the middle failed": no hop is named."""
        n = HostileNet(guard="extend=drop")
        circ, d = n.build()
        [guardHop] = n.hops(n.guard)
        guardHop.destroy(DestroyReason.CONNECTFAILED)
        n.pump()
        f = self.failureResultOf(d, CircuitDestroyed)
        self.assertEqual(f.value.reason, DestroyReason.CONNECTFAILED)
        self.assertIsNone(f.value.hop)

    def test_forgedExtendedBlamesNoInnocentHop(self):
        """The guard answers the EXTEND2 with an EXTENDED2 of its own making: the handshake fails, no hop is named."""
        n = HostileNet(guard="extend=drop")
        circ, d = n.build()
        [guardHop] = n.hops(n.guard)
        guardHop.sendRelay(RelayCommand.EXTENDED2, 0, Extended2(Created2(bytes(64))).encode())
        n.pump()
        f = self.failureResultOf(d, CircuitDestroyed)
        self.assertEqual(f.value.reason, DestroyReason.PROTOCOL)
        self.assertIsNone(f.value.hop)
        self.assertClosedWith(n, circ, DestroyReason.PROTOCOL)

    def test_answerToOurTruncateFromTheWrongHop(self):
        """We ask the middle to truncate; the guard answers in its place (and keeps the TRUNCATE): closed."""
        n = HostileNet(guard="cell:4=truncated:REQUESTED+drop")
        circ, d = n.build()
        self.successResultOf(d)
        t = circ.truncate(2)
        n.pump()
        self.failureResultOf(t, CircuitDestroyed)
        self.assertClosedWith(n, circ, DestroyReason.PROTOCOL)

    def test_requestedTruncateStillWorks(self):
        """Our own TRUNCATE is answered and leaves the circuit open (the one TRUNCATED we accept)."""
        n = HostileNet()
        circ, d = n.build()
        self.successResultOf(d)
        t = circ.truncate(2)
        n.pump()
        self.assertEqual(self.successResultOf(t), DestroyReason.REQUESTED)
        self.assertFalse(circ.closed)
        self.assertEqual(len(circ.crypto.hops), 2)


class ForgedStreamCells(ViewChecks, unittest.TestCase):
    """Stream control cells from a hop the stream is not attached to."""

    def _hop(self, n, relay):
        [hop] = n.hops(relay)
        return hop

    def test_forgedResolvedForTheVpnDns(self):
        """
        The guard answers the client's RESOLVE itself with 6.6.6.6 (the stream
        ids of the first streams, 1-8, as the client used to allocate them):
        the client never takes the answer and closes the circuit.
        """
        n = HostileNet(guard="open=resolved:1-8:6.6.6.6")
        circ, d = n.build()
        self.successResultOf(d)
        answer = n.mux.resolve(TARGET_HOST)
        n.pump()
        if answer.called and not isinstance(answer.result, Failure):
            self.assertNotIn(FORGED, [a[1] for a in answer.result], "the client took the guard's answer")
        self.failureResultOf(answer, StreamRefused)
        self.assertClosedWith(n, circ, DestroyReason.PROTOCOL)

    def test_forgedResolvedWithTheRightStreamId(self):
        """Even knowing the stream id, a guard's RESOLVED is refused: only the exit's counts."""
        n = HostileNet()
        circ, d = n.build()
        self.successResultOf(d)
        answer = n.mux.resolve(TARGET_HOST)
        [sid] = n.mux._resolving
        body = Resolved([(AnswerType.IPV4, FORGED, 300)]).encode()
        self._hop(n, n.guard).sendRelay(RelayCommand.RESOLVED, sid, body)
        n.pump()
        self.failureResultOf(answer, StreamRefused)
        self.assertClosedWith(n, circ, DestroyReason.PROTOCOL)

    def test_honestResolve(self):
        n = HostileNet()
        circ, d = n.build()
        self.successResultOf(d)
        answer = n.mux.resolve(TARGET_HOST)
        n.pump()
        self.assertEqual([a[1] for a in self.successResultOf(answer)], [TRUE_ADDRESS])

    def _forgeOnOpenStream(self, relay, command, body):
        n = HostileNet()
        circ, d = n.build()
        self.successResultOf(d)
        d, app = n.openStream(circ)
        stream = self.successResultOf(d)
        hostileRelay = {"guard": n.guard, "middle": n.middle}[relay]
        self._hop(n, hostileRelay).sendRelay(command, stream.streamId, body)
        n.pump()
        self.assertClosedWith(n, circ, DestroyReason.PROTOCOL)
        self.assertEqual(circ.closeReason.hop, {"guard": 0, "middle": 1}[relay])  # provably its violation
        return n, stream

    def test_forgedEnd(self):
        """A guard that ends the client's stream as if the exit had."""
        for relay in ("guard", "middle"):
            n, stream = self._forgeOnOpenStream(relay, RelayCommand.END, End(6).encode())
            self.assertNotEqual(stream.state.value, "open")

    def test_forgedConnected(self):
        """CONNECTED for a stream still connecting, from the guard (the exit has not answered)."""
        for relay in ("guard", "middle"):
            n = HostileNet(exit="open=swallow")  # the exit never answers the BEGIN
            circ, d = n.build()
            self.successResultOf(d)
            opening, app = n.openStream(circ)
            [sid] = n.mux.streams
            hostile = {"guard": n.guard, "middle": n.middle}[relay]
            self._hop(n, hostile).sendRelay(RelayCommand.CONNECTED, sid, Connected("6.6.6.6", 60).encode())
            n.pump()
            self.failureResultOf(opening, StreamRefused)
            self.assertClosedWith(n, circ, DestroyReason.PROTOCOL)

    def test_forgedStreamSendme(self):
        """A stream SENDME from the guard, to make the client send faster than the exit takes."""
        for relay in ("guard", "middle"):
            self._forgeOnOpenStream(relay, RelayCommand.SENDME, b"")

    def test_dataAndPacketsFromTheWrongHop(self):
        """DATA and PACKET were always checked: only the last hop may send them."""
        for relay in ("guard", "middle"):
            n, stream = self._forgeOnOpenStream(relay, RelayCommand.DATA, b"HTTP/1.0 200 OK\r\n\r\nforged")
        n = HostileNet(guard="open=packet")
        circ, d = n.build()
        self.successResultOf(d)
        got = []
        circ.setPacketReceiver(got.extend)
        circ.sendPackets([SECRET_PACKET])
        n.pump()
        self.assertEqual(got, [])
        self.assertClosedWith(n, circ, DestroyReason.PROTOCOL)


class Replays(ViewChecks, unittest.TestCase):
    """A cell the relay passed on once, sent again."""

    def test_forwardReplay(self):
        n = HostileNet(guard="open=replay")
        circ, d = n.build()
        self.successResultOf(d)
        self.useCircuit(n, circ)
        self.assertClosedWith(n, circ, DestroyReason.PROTOCOL)
        self.assertNothingReadable(n.guard)

    def test_backwardReplay(self):
        n = HostileNet(guard="cell:5=replay-back")  # after the CONNECTED went back, at the next forward cell
        circ, d = n.build()
        self.successResultOf(d)
        d, app = n.openStream(circ)
        self.successResultOf(d).write(REQUEST)
        n.pump()
        self.assertClosedWith(n, circ, DestroyReason.PROTOCOL)


class Malformed(ViewChecks, unittest.TestCase):
    """Cells no honest relay sends: garbage, the wrong size, more than a cell.  Only that circuit dies."""

    def _twoCircuits(self, plan):
        n = HostileNet(guard=plan)
        victim, d = n.build()
        self.successResultOf(d)
        # A second circuit on the same guard link, built after the attack budget is spent.
        other = OriginCircuit(n.client.switch, n.guardLink, [r.hopSpec() for r in (n.guard, n.middle, n.exit)])
        attachStreams(other)
        built = other.build()
        n.pump()
        return n, victim, other, built

    def _attack(self, action):
        n, victim, other, built = self._twoCircuits(f"open={action};circuits=1")
        self.successResultOf(built)
        self.useCircuit(n, victim)
        self.assertIsNotNone(n.closedReason(victim))
        self.assertFalse(other.closed, "a bad cell on one circuit closed another")
        d, app = n.openStream(other)
        self.successResultOf(d).write(b"still works")
        n.pump()
        self.assertEqual(b"".join(app.data), b"STILL WORKS")
        self.assertNothingReadable(n.guard)

    def test_garbageRelayCell(self):
        self._attack("garbage")

    def test_shortCell(self):
        self._attack("short")

    def test_oversizedCell(self):
        self._attack("oversized")


class DropAndDelay(ViewChecks, unittest.TestCase):
    def test_delayedCellsArriveIntact(self):
        """A guard that holds cells for 5 s only slows the stream down."""
        n = HostileNet(guard="open=delay:5")
        circ, d = n.build()
        self.successResultOf(d)
        opening, app = n.openStream(circ)
        self.assertNoResult(opening)
        n.clock.advance(5)
        n.pump()
        self.successResultOf(opening).write(REQUEST)
        n.pump()
        self.assertEqual(b"".join(app.data), REQUEST.upper())
        self.assertNothingReadable(n.guard)

    def test_droppedCellKillsTheCircuit(self):
        """A dropped cell puts the next hop's keystream out of step: the circuit dies, nothing leaks."""
        n = HostileNet(guard="open=drop")
        circ, d = n.build()
        self.successResultOf(d)
        self.useCircuit(n, circ)
        self.useCircuit(n, circ)
        self.assertClosedWith(n, circ, DestroyReason.PROTOCOL)
        self.assertNothingReadable(n.guard)


class OnlyTestsMakeARelayHostile(unittest.TestCase):
    """A relay process follows a hostile plan only when its environment says so the way tests do."""

    def test_environmentGate(self):
        from meshvpn.onion.hostile import fromEnvironment

        plan = "open=truncated"
        self.assertIsNone(fromEnvironment("127.0.0.1", {}))
        self.assertRaises(PlanError, fromEnvironment, "127.0.0.1", {"MESHVPN_TEST_HOSTILE": plan})
        self.assertRaises(PlanError, fromEnvironment, "203.0.113.7",
                          {"MESHVPN_TEST_HOSTILE": plan, "MESHVPN_TESTING": "1"})
        self.assertRaises(PlanError, fromEnvironment, "0.0.0.0", {"MESHVPN_TEST_HOSTILE": plan, "MESHVPN_TESTING": "1"})
        self.assertRaises(PlanError, fromEnvironment, "127.0.0.1",
                          {"MESHVPN_TEST_HOSTILE": "open=explode", "MESHVPN_TESTING": "1"})
        for host in ("127.11.0.1", "198.18.2.2", "::1"):
            self.assertEqual(fromEnvironment(host, {"MESHVPN_TEST_HOSTILE": plan, "MESHVPN_TESTING": "1"}),
                             parsePlan(plan))

    def test_noSettingMakesARelayHostile(self):
        from meshvpn.roles.relay import Options

        names = " ".join(s.name for s in Options.schema)
        self.assertNotIn("hostile", names)
