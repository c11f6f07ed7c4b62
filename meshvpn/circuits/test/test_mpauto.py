"""The automatic multipath rule (circuits/mpauto.py) on both sides: a slow path links and keeps a
second leg, a busy client never links one, a leg that does not pay (or stops paying) is given back;
and the reactor thread's busy share it reads (circuits/mpload.py), on task.Clock."""

from twisted.internet import task
from twisted.trial import unittest

from meshvpn.circuits.mpauto import (BULK_TICKS, MAX_LINKS, SETTLE_TICKS, TRIAL_TICKS, UNLINK_BUSY_TICKS,
                                     Action, MultipathRule, Phase, RuleViolation)
from meshvpn.circuits.mpload import MIN_SPAN_S, ThreadBusy, schedstatBusySeconds, threadBusySeconds

MB = 1_000_000
IDLE, BUSY, SATURATED = 0.1, 0.7, 0.95


def run(rule, ticks):
    """Tick C{rule} with (rate, share) pairs; the actions it answered."""
    return [rule.tick(rate, share) for rate, share in ticks]


def linkedAt(rate):
    """A rule that linked its second leg after the single path moved C{rate}."""
    rule = MultipathRule()
    assert run(rule, [(rate, IDLE)] * BULK_TICKS)[-1] is Action.LINK
    rule.linked()
    return rule


def trial(rule, rate):
    """The settle and trial seconds at C{rate}: the last action."""
    return run(rule, [(rate, IDLE)] * (SETTLE_TICKS + TRIAL_TICKS))[-1]


class PathIsSlow(unittest.TestCase):
    """The client waits for cells: a second leg is worth trying, and kept while it pays."""

    def test_bulkStreamWithIdleClientLinks(self):
        rule = MultipathRule()
        actions = run(rule, [(2 * MB, IDLE)] * BULK_TICKS)
        self.assertEqual(actions, [Action.NONE] * (BULK_TICKS - 1) + [Action.LINK])
        self.assertEqual((rule.phase, rule.singleRate), (Phase.LINKING, 2 * MB))

    def test_bulkMustLastBulkTicksInARow(self):
        rule = MultipathRule()
        pattern = [(2 * MB, IDLE), (10_000, IDLE)] * 5  # bursts of one second: an interactive stream
        self.assertNotIn(Action.LINK, run(rule, pattern))
        self.assertEqual(rule.phase, Phase.SINGLE)

    def test_secondLegThatPaysIsKept(self):
        rule = linkedAt(2 * MB)
        self.assertEqual(trial(rule, 4 * MB), Action.NONE)
        self.assertEqual(rule.phase, Phase.MULTIPATH)
        self.assertAlmostEqual(rule.gain, 2.0)
        # It keeps paying: nothing changes for as long as that lasts, busy or not short of saturated.
        self.assertEqual(set(run(rule, [(4 * MB, BUSY)] * 20)), {Action.NONE})
        self.assertEqual(rule.phase, Phase.MULTIPATH)

    def test_theRampIsNotJudged(self):
        """The first second after linking may be slow (the leg's window grows): only the trial's seconds count."""
        rule = linkedAt(2 * MB)
        run(rule, [(0, IDLE)] * SETTLE_TICKS)
        run(rule, [(4 * MB, IDLE)] * TRIAL_TICKS)
        self.assertEqual(rule.phase, Phase.MULTIPATH)


class ClientIsBusy(unittest.TestCase):
    """The client is the bottleneck (CPU-bound, or starved of CPU): a second leg only adds work."""

    def test_busyClientNeverLinks(self):
        rule = MultipathRule()
        actions = run(rule, [(20 * MB, BUSY)] * 30)
        self.assertNotIn(Action.LINK, actions)
        self.assertEqual(actions.count(Action.STAY), 1)  # said once, for the log
        self.assertEqual(rule.phase, Phase.SINGLE)

    def test_unknownShareNeverLinks(self):
        """Before the thread was sampled twice the share is unknown: no link on a guess."""
        self.assertNotIn(Action.LINK, run(MultipathRule(), [(20 * MB, None)] * 10))

    def test_busySecondsBreakTheStreak(self):
        rule = MultipathRule()
        pattern = [(20 * MB, IDLE), (20 * MB, BUSY)] * 10
        self.assertNotIn(Action.LINK, run(rule, pattern))

    def test_saturatedClientGivesTheLegBack(self):
        rule = linkedAt(2 * MB)
        trial(rule, 4 * MB)
        actions = run(rule, [(4 * MB, SATURATED)] * UNLINK_BUSY_TICKS)
        self.assertEqual(actions[-1], Action.UNLINK)
        self.assertEqual(rule.phase, Phase.SINGLE)  # it may link again once the client has room

    def test_oneSaturatedSecondIsNotEnough(self):
        rule = linkedAt(2 * MB)
        trial(rule, 4 * MB)
        pattern = [(4 * MB, SATURATED)] * (UNLINK_BUSY_TICKS - 1) + [(4 * MB, IDLE)]
        self.assertEqual(set(run(rule, pattern * 5)), {Action.NONE})
        self.assertEqual(rule.phase, Phase.MULTIPATH)


class LegDoesNotPay(unittest.TestCase):
    def test_trialWithoutGainGivesTheLegBackForGood(self):
        rule = linkedAt(2 * MB)
        self.assertEqual(trial(rule, 2.1 * MB), Action.UNLINK)
        self.assertEqual(rule.phase, Phase.DONE)
        self.assertLess(rule.gain, 1.15)
        self.assertEqual(set(run(rule, [(2 * MB, IDLE)] * 20)), {Action.NONE})

    def test_setSlowerThanTheSinglePathGivesItBack(self):
        """The second leg holds the first back (or the path changed): the last seconds below the single path."""
        rule = linkedAt(2 * MB)
        trial(rule, 4 * MB)
        actions = run(rule, [(1.5 * MB, IDLE)] * TRIAL_TICKS)
        self.assertEqual(actions[-1], Action.UNLINK)
        self.assertEqual(rule.phase, Phase.SINGLE)

    def test_atMostMaxLinksPerStream(self):
        """Flapping between busy and idle links at most MAX_LINKS times, then the stream stays single."""
        rule = MultipathRule()
        links = 0
        for _ in range(10):
            actions = run(rule, [(2 * MB, IDLE)] * BULK_TICKS)
            if Action.LINK not in actions:
                break
            links += 1
            rule.linked()
            trial(rule, 4 * MB)
            run(rule, [(4 * MB, SATURATED)] * UNLINK_BUSY_TICKS)
        self.assertEqual(links, MAX_LINKS)
        self.assertEqual(rule.phase, Phase.DONE)


class Events(unittest.TestCase):
    def test_noSecondLegFits(self):
        rule = MultipathRule()
        run(rule, [(2 * MB, IDLE)] * BULK_TICKS)
        rule.failed("no second guard unrelated to the first leg's path")
        self.assertEqual(rule.phase, Phase.DONE)
        self.assertIn("no second guard", rule.why)

    def test_lostLegMayBeLinkedAgain(self):
        rule = linkedAt(2 * MB)
        trial(rule, 4 * MB)
        rule.legLost()
        self.assertEqual(rule.phase, Phase.SINGLE)
        self.assertEqual(run(rule, [(2 * MB, IDLE)] * BULK_TICKS)[-1], Action.LINK)

    def test_eventsOutOfPlaceAreBugs(self):
        rule = MultipathRule()
        self.assertRaises(RuleViolation, rule.linked)
        self.assertRaises(RuleViolation, rule.failed, "why")

    def test_linkingIgnoresTicks(self):
        rule = MultipathRule()
        run(rule, [(2 * MB, IDLE)] * BULK_TICKS)
        self.assertEqual(set(run(rule, [(9 * MB, IDLE)] * 10)), {Action.NONE})
        self.assertEqual(rule.phase, Phase.LINKING)


class ThreadBusyTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.busy = 0.0
        self.meter = ThreadBusy(self.clock, lambda: self.busy)

    def spend(self, wall, busy):
        self.clock.advance(wall)
        self.busy += busy

    def test_shareOfWallTime(self):
        self.assertIsNone(self.meter.share())  # first sight: unknown
        self.spend(1.0, 0.25)
        self.assertAlmostEqual(self.meter.share(), 0.25)
        self.spend(1.0, 0.9)
        self.assertAlmostEqual(self.meter.share(), 0.9)

    def test_manyAskersReadItOnce(self):
        """Within MIN_SPAN_S the last share stands: a hundred streams ticking read the thread once a span."""
        self.meter.share()
        self.spend(1.0, 0.5)
        self.assertAlmostEqual(self.meter.share(), 0.5)
        self.spend(MIN_SPAN_S / 2, MIN_SPAN_S / 2)  # fully busy, but too short a span to judge
        self.assertAlmostEqual(self.meter.share(), 0.5)
        self.spend(MIN_SPAN_S, 0.0)
        self.assertAlmostEqual(self.meter.share(), (MIN_SPAN_S / 2) / (1.5 * MIN_SPAN_S))

    def test_boundedToZeroAndOne(self):
        self.meter.share()
        self.spend(1.0, 3.0)  # run + run-queue wait of several threads' worth cannot exceed the wall
        self.assertEqual(self.meter.share(), 1.0)
        self.spend(1.0, -1.0)
        self.assertEqual(self.meter.share(), 0.0)

    def test_realReading(self):
        """This thread's own figure: a number of seconds that grows as it works."""
        before = threadBusySeconds()
        sum(i * i for i in range(200_000))
        self.assertGreater(threadBusySeconds(), before)

    def test_missingSchedstat(self):
        self.assertIsNone(schedstatBusySeconds(self.mktemp()))
