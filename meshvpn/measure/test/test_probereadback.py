"""Read-backs: a target counts what each of its measurers sent it in the slot, signs it, and the parser refuses anything else."""

import hashlib
import random

from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.public import PrivateKey
from nacl.signing import SigningKey
from twisted.internet import task
from twisted.trial import unittest

from meshvpn.dht.records import makeRecord
from meshvpn.dht.test.test_rpc import Net
from meshvpn.identity import NodeIdentity
from meshvpn.measure.collect import ReadBackCollector
from meshvpn.measure.probeecho import GRACE, ProbeEcho
from meshvpn.measure.probeservice import ProbeService
from meshvpn.measure.publish import readBackSalt
from meshvpn.measure.window import SLOTS
from meshvpn.measure.probereadback import MAX_MEASURERS, MAX_SIZE, ReadBackError, Sent, _body, parseReadBack, signReadBack
from meshvpn.measure.reports import prefixOf
from meshvpn.measure.test.parserfuzz import malformedRecordTests
from meshvpn.measure.test.probefakes import linkPair
from meshvpn.measure.test.test_probestream import EPOCH, MEASURER, STRANGER, TARGET, nid, plan
from meshvpn.ratelimit import TokenBucket

_rng = random.Random(142)


def identity():
    return NodeIdentity(SigningKey(_rng.randbytes(32)), PrivateKey(_rng.randbytes(32)))


ME = identity()


def measurer(i):
    return prefixOf(hashlib.sha256(bytes([i])).digest())


class RoundTripTests(unittest.TestCase):
    def test_roundTrip(self):
        sent = [Sent(measurer(i), 1000 * (i + 1), 10 * i, i) for i in range(5)]
        r = signReadBack(ME, 7, 3600, 20_000, sent)
        again = parseReadBack(r.raw)
        self.assertEqual(again, r)
        self.assertEqual(again.target, ME.nodeId)
        self.assertEqual([s.measurer for s in again.sent], sorted(s.measurer for s in sent))
        self.assertEqual(again.of(measurer(3) + bytes(16)), Sent(measurer(3), 4000, 30, 3))
        # the target was the bottleneck in 3 seconds: of a 4 s slot, filled; of a 20 s slot, not
        self.assertTrue(again.of(measurer(3)).filled(4000))
        self.assertFalse(again.of(measurer(3)).filled(20_000))
        self.assertFalse(again.of(measurer(0)).filled(1))
        self.assertIsNone(again.of(measurer(9)))

    def test_anEmptyReadBackIsOne(self):
        """A target nobody sent anything signs that too: its measurers skipped."""
        r = signReadBack(ME, 7, 3600, 20_000, [])
        self.assertEqual(parseReadBack(r.raw).sent, ())

    def test_theMostMeasurersFitOneDHTRecord(self):
        r = signReadBack(ME, 1, 3600, 1, [Sent(measurer(i), 2**64 - 1, 2**64 - 1, 3600) for i in range(MAX_MEASURERS)])
        self.assertEqual(len(r.raw), MAX_SIZE)
        self.assertLessEqual(len(r.raw), 1024)

    def test_beyondTheMostTheBusiestAreKept(self):
        r = signReadBack(ME, 1, 3600, 1, [Sent(measurer(i), i + 1, 0) for i in range(MAX_MEASURERS + 3)])
        self.assertEqual(sorted(s.received for s in r.sent), list(range(4, MAX_MEASURERS + 4)))


class RefusalTests(unittest.TestCase):
    def refused(self, sent, epoch=1, length=3600, millis=1000, why=""):
        e = self.assertRaises(ReadBackError, signReadBack, ME, epoch, length, millis, sent)
        self.assertIn(why, str(e))

    def test_whatItCannotSign(self):
        self.refused([Sent(prefixOf(ME.nodeId), 1, 0)], why="itself")
        self.refused([Sent(measurer(1), 0, 0)], why="silent")
        self.refused([Sent(measurer(1), 5, 6, 1)], why="not echoed")
        self.refused([Sent(measurer(1), 5, 5, 0)], why="seconds")
        self.refused([Sent(measurer(1), 5, 0, 1)], why="seconds")
        self.refused([Sent(measurer(1), 5, 5, 3601)], why="seconds")
        self.refused([Sent(measurer(1), 2**64, 0)], why="received")
        self.refused([Sent(b"short", 1, 0)], why="prefix")
        self.refused([], millis=0, why="slot")
        self.refused([], millis=3601 * 1000, why="slot")
        self.refused([], length=0, why="epoch length")

    def test_unsortedOrDuplicatedOnTheWire(self):
        a, b = sorted([measurer(1), measurer(2)])
        for entries in [(Sent(b, 1, 0), Sent(a, 1, 0)), (Sent(a, 1, 0), Sent(a, 2, 0))]:
            body = _body(ME.identityPublicKey, 1, 3600, 1000, entries)
            raw = body + ME.sign(b"meshvpn-probe-readback-v1\x00" + body)
            self.assertIn("sorted", str(self.assertRaises(ReadBackError, parseReadBack, raw)))

    def test_forgedOrAnotherKind(self):
        raw = signReadBack(ME, 1, 3600, 1000, [Sent(measurer(1), 5, 5, 1)]).raw
        self.assertIn("signature", str(self.assertRaises(ReadBackError, parseReadBack, raw[:-1] + bytes([raw[-1] ^ 1]))))
        self.assertIn("magic", str(self.assertRaises(ReadBackError, parseReadBack, b"MVQ1" + raw[4:])))
        self.assertIn("length", str(self.assertRaises(ReadBackError, parseReadBack, raw + b"\0")))
        self.assertIn("short", str(self.assertRaises(ReadBackError, parseReadBack, raw[:40])))
        # another key's signature over the same body
        other = identity()
        body = raw[:-64]
        self.assertIn("signature", str(self.assertRaises(
            ReadBackError, parseReadBack, body + other.sign(b"meshvpn-probe-readback-v1\x00" + body))))


def signedReadBack(data):
    n = data.draw(st.integers(0, 10))
    return signReadBack(ME, 5, 600, 20_000, [Sent(measurer(i), i + 1, i, i) for i in range(n)]).raw


class FuzzTests(malformedRecordTests(parseReadBack, ReadBackError, 1100, signedReadBack), unittest.TestCase):
    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(st.integers(0, 40), st.integers(1, 2**64 - 1), st.integers(0, 2**64 - 1),
                              st.integers(1, 60)), max_size=40, unique_by=lambda t: t[0]))
    def test_whateverItCountedItCanSign(self, entries):
        sent = [Sent(measurer(i), r, min(b, r), n if min(b, r) else 0) for i, r, b, n in entries]
        r = signReadBack(ME, 3, 60, 5000, sent)
        self.assertEqual(parseReadBack(r.raw), r)
        self.assertLessEqual(len(r.sent), MAX_MEASURERS)


class CountingTests(unittest.TestCase):
    """What the target counts while it echoes (ProbeEcho)."""

    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(30)  # epoch 0, the slot just opened
        self.plans = {0: plan(team=(MEASURER, STRANGER))}
        self.echo = ProbeEcho(self.clock, TARGET, self.plans.get, EPOCH)

    def link(self, peer):
        class Drop:
            def probeReceived(self, link, seq, data, echo):
                pass

        return linkPair(self.clock, TARGET, peer, None, Drop())[0]

    def send(self, link, n, size=1000):
        return [self.echo.probeReceived(link, i, bytes(size)) for i in range(n)]

    def test_countsEachMeasurersBytesExactly(self):
        self.send(self.link(MEASURER), 3, 700)
        self.send(self.link(STRANGER), 1, 1)
        self.assertEqual(self.echo.readBackOf(0), sorted([Sent(prefixOf(MEASURER), 2100, 0, 0),
                                                         Sent(prefixOf(STRANGER), 1, 0, 0)], key=lambda s: s.measurer))
        self.assertEqual(self.echo.readBackOf(1), [])

    def test_whatTheTargetCouldNotTakeIsMarkedItsOwn(self):
        """A measurer that sends more than the target's share shows all the target could read of it."""
        self.echo.bucket = TokenBucket(self.clock, 10_000, 10_000)  # a share of 5000 each
        self.assertEqual(self.send(self.link(MEASURER), 8), [True] * 5 + [False] * 3)
        blocked = self.link(STRANGER)
        blocked.blocked = True
        self.send(blocked, 2)
        got = {s.measurer: s for s in self.echo.readBackOf(0)}
        self.assertEqual(got[prefixOf(MEASURER)], Sent(prefixOf(MEASURER), 8000, 3000, 1))
        self.assertEqual(got[prefixOf(STRANGER)], Sent(prefixOf(STRANGER), 2000, 2000, 1))

    def test_oneBurstIsNotTheDuty(self):
        """The attack: a skipper sends one window at the slot's start, more than the target takes, then nothing."""
        self.echo.bucket = TokenBucket(self.clock, 10_000, 10_000)
        self.send(self.link(MEASURER), 64)
        honest = self.link(STRANGER)
        for _ in range(10):  # an honest measurer keeps sending more than its share, every second of the slot
            self.send(honest, 8)
            self.clock.advance(1)
        got = {s.measurer: s for s in self.echo.readBackOf(0)}
        self.assertEqual(got[prefixOf(MEASURER)].boundSeconds, 1)
        self.assertFalse(got[prefixOf(MEASURER)].filled(10_000))
        self.assertEqual(got[prefixOf(STRANGER)].boundSeconds, 10)
        self.assertTrue(got[prefixOf(STRANGER)].filled(10_000))

    def test_onlyTheMeasurersItEchoesAndOnlyInTheSlot(self):
        """Records from outside the team, or outside the slot, are no measurer's duty: not counted."""
        self.send(self.link(nid("nobody")), 5)
        self.clock.advance(10 + GRACE + 1)
        self.send(self.link(MEASURER), 5)
        self.assertEqual(self.echo.readBackOf(0), [])

    def test_boundedMemory(self):
        """However many identities the echo lets through, an epoch's read-back holds at most MAX_MEASURERS."""
        team = tuple(nid(f"m{i}") for i in range(3 * MAX_MEASURERS))
        self.plans[0] = plan(team=team)
        for m in team:
            self.send(self.link(m), 1)
        self.assertEqual(len(self.echo.readBackOf(0)), MAX_MEASURERS)
        self.clock.advance(4 * EPOCH)
        self.plans[4] = plan(epoch=4, team=team)
        self.send(self.link(team[0]), 1)
        self.assertEqual(sorted(self.echo._back), [4])


class PublishedTests(unittest.TestCase):
    """The record in the DHT: only its target's, only of its epoch, only for a slot the relay saw."""

    def setUp(self):
        self.net = Net(self, n=8)
        self.relays = self.net.nodes[:2]
        self.client = self.net.add(clientMode=True)
        self.collector = ReadBackCollector(lambda: self.client)

    def epoch(self):
        return int(self.net.clock.seconds() // EPOCH) - 1

    def put(self, node, salt, raw, epoch):
        self.net.run(node.put(makeRecord(node.identity, salt, raw, epoch, self.net.clock.seconds() + 3600)))

    def test_aTargetsReadBackIsFoundUnderItsKeyAndEpoch(self):
        node, epoch = self.relays[0], self.epoch()
        back = signReadBack(node.identity, epoch, EPOCH, 5000, [Sent(prefixOf(MEASURER), 10, 0, 0)])
        self.put(node, readBackSalt(epoch), back.raw, epoch)
        self.assertEqual(self.net.run(self.collector.fetch(node.identity.nodeId, epoch), 30), back)
        self.assertIsNone(self.net.run(self.collector.fetch(node.identity.nodeId, epoch + SLOTS), 30))
        self.assertEqual(self.collector.rejected, 0)

    def test_anotherRelaysReadBackUnderMyKeyIsRefused(self):
        """The attack: a relay copies another target's signed read-back into its own record."""
        liar, honest = self.relays
        epoch = self.epoch()
        stolen = signReadBack(honest.identity, epoch, EPOCH, 5000, [])
        self.put(liar, readBackSalt(epoch), stolen.raw, epoch)
        self.assertIsNone(self.net.run(self.collector.fetch(liar.identity.nodeId, epoch), 30))
        self.put(liar, readBackSalt(epoch + 1), b"not a read-back", epoch + 1)
        self.assertIsNone(self.net.run(self.collector.fetch(liar.identity.nodeId, epoch + 1), 30))
        self.assertEqual(self.collector.rejected, 2)

    def test_onlyForASlotTheRelaySaw(self):
        """A relay that started after the slot saw none of its measurers: it signs no read-back of nobody."""
        class Links:
            def setProbeHandler(self, handler):
                pass

        clock = task.Clock()
        clock.advance(10 * EPOCH + 1)
        service = ProbeService(clock, ME, Links(), dict, EPOCH, 5.0)
        self.assertIsNone(service.readBackOf(10))
        self.successResultOf(service.probeEpoch(10))
        self.assertEqual(service.readBackOf(10), (5000, []))
