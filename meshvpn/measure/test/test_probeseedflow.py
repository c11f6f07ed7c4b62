"""The probe plan drawn from seed records end to end: relays commit and reveal over a simulated DHT, probe, and a client agrees.

The six throttled relays of L{test_probeflow}, each with a
L{SeedService}: at every epoch's start each stores its secret of the
epoch and its commitment for the next, reads the others' at 10% of the
epoch, and its probe plan (targets to probe, measurers to echo) draws
from the commit-and-reveal seed.  The client reads the same records and
follows the seed the relays say they used.
"""

from meshvpn.measure.epoch import epochOf, lastComplete
from meshvpn.measure.probed import readingsByTarget
from meshvpn.measure.test.test_probeflow import EPOCH, RATES, Flow


class SeededFlow(Flow):
    """L{Flow} with the plans drawn from the seed records; the tests are in the classes below."""

    seeded = True

    def probedEpoch(self):
        """Runs to the end of the first epoch whose plan is drawn from reveals and whose links carried traffic."""
        self.nextEpoch()  # (started after 20% of an epoch: the next one is drawn from the epoch alone)
        self.nextEpoch()
        self.carry()
        self.nextEpoch()
        return lastComplete(self.net.clock.seconds(), EPOCH)


class SeededFlowTests(SeededFlow):
    def test_relaysAndTheClientDrawTheSamePlanFromTheRevealsAndReadEveryRelay(self):
        epoch = self.probedEpoch()
        plans = [p.planOf(epoch) for p in self.probes]
        seeds = {p.seed for p in plans}
        self.assertEqual(len(seeds), 1)
        self.assertEqual(len(seeds.pop()), 32)  # not the epoch alone
        self.assertEqual({tuple(sorted(p.teams.items())) for p in plans}, {tuple(sorted(plans[0].teams.items()))})
        w = self.weights()
        self.assertEqual(w.epoch, epoch)
        self.assertEqual(w._planOf(epoch).teams, plans[0].teams)
        probed = self.assertEveryRelayReadAtItsRate(w)
        for s in self.seeds:
            st = s.status()
            self.assertEqual((st["bad_reveals"], st["changed_commitments"], st["rejected"]), (0, 0, 0))
            # only the records of the epoch they started in, read after 20% of it (they count for nothing)
            self.assertLessEqual(st["late_reveals"], 2 * len(self.ids))  # (read, and read again)
        print(f"\nseed of epoch {epoch}: {plans[0].seed.hex()[:16]}..., every relay read at "
              + ", ".join(f"{g / r:.2f}" for g, r in zip(probed, RATES)) + " x its rate")



class SplitRevealTests(SeededFlow):
    """Twelve relays (teams of 5 among 11: a seed changes them), for the attack on agreement."""

    rates = [10_000 * (k + 1) for k in range(12)]

    def test_aRevealHalfTheRelaysMissed(self):
        """
        The attack: a relay's reveal reaches half the relays in time and not
        the others (published as they read, or to some storers only).  The
        halves draw unrelated plans.  Measured, not hoped: what the echo
        slack refuses, what the client keeps.
        """
        self.nextEpoch()  # (started after 20% of an epoch: the next one is drawn from the epoch alone)
        self.nextEpoch()
        self.carry()
        liar = self.ids[0]
        epoch = epochOf(self.net.clock.seconds(), EPOCH)
        # past the relays' read at 10%, before the slot (20% at the earliest)
        self.net.pump(epoch * EPOCH + 0.15 * EPOCH - self.net.clock.seconds())
        half = len(self.ids) // 2
        for s in self.seeds[half:]:
            s.book.reveals[epoch].pop(liar)
        self.nextEpoch()
        plans = [p.planOf(epoch) for p in self.probes]
        self.assertEqual(len({p.seed for p in plans[:half]}), 1)
        self.assertEqual(len({p.seed for p in plans[half:]}), 1)
        self.assertNotEqual(plans[0].seed, plans[half].seed)
        w = self.weights()
        client = w._planOf(epoch)
        agreeing = [k for k, p in enumerate(plans) if p.seed == client.seed]
        refused = sum(p.echo.counters["unassigned"] for p in self.probes)
        kept = readingsKept(w, epoch)
        probed = [w.probedCapacity(i) for i in self.ids]
        lines = ["-" if p is None else f"{p / r:.2f}" for p, r in zip(probed, self.rates)]
        print(f"\nsplit {half}/{len(self.ids) - half} on one reveal: the client's seed is that of relays {agreeing}; "
              f"{refused} probe records refused as unassigned; {kept} readings kept of "
              f"{sum(len(r.readings) for r in w.probeReports[epoch])}; probed / rate: {', '.join(lines)}")
        self.assertIn(len(agreeing), (0, half, len(self.ids) - half))

    def test_withoutTheSplitTwelveRelaysAgree(self):
        epoch = self.probedEpoch()
        plans = [p.planOf(epoch) for p in self.probes]
        self.assertEqual(len({p.seed for p in plans}), 1)
        w = self.weights()
        self.assertEqual(w._planOf(epoch).teams, plans[0].teams)
        kept = readingsKept(w, epoch)
        probed = [w.probedCapacity(i) for i in self.ids]
        published = sum(len(r.readings) for r in w.probeReports[epoch])
        print(f"\nno split: {kept} readings kept of {published}; probed / rate: "
              + ", ".join("-" if p is None else f"{p / r:.2f}" for p, r in zip(probed, self.rates)))
        self.assertEqual(kept, 5 * len(self.ids))


def readingsKept(w, epoch):
    return sum(map(len, readingsByTarget({epoch: w.probeReports[epoch]}, w._planOf).values()))
