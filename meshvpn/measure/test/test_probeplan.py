"""The probe plan: the same inputs give the same plan on every node, teams within bounds and never self, /16 or family."""

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from meshvpn.measure.probeplan import TEAM_SIZE, Candidate, candidatesFrom, keyOf, makePlan, subnetOf


def nid(i):
    return hashlib.sha256(b"relay" + i.to_bytes(4, "big")).digest()


candidateLists = st.lists(
    st.builds(
        lambda i, vote, net, fam: Candidate(nid(i), vote, f"198.{18 + net}.0.0/16" if net < 2 else "",
                                            frozenset(nid(f) for f in fam)),
        st.integers(0, 60), st.sampled_from([0.0, 1.0, 2.5, 1000.0]), st.integers(0, 4),
        st.lists(st.integers(0, 60), max_size=2)),
    max_size=25)


class PlanTests(unittest.TestCase):
    @settings(max_examples=150, deadline=None)
    @given(candidateLists, st.integers(0, 2**32 - 1), st.binary(max_size=8), st.randoms(use_true_random=False))
    def test_sameInputsSamePlanInAnyOrder(self, cands, epoch, seed, rnd):
        a = makePlan(epoch, 3600, 20, cands, seed)
        shuffled = list(cands)
        # only the first of duplicated ids counts: shuffle distinct ones
        seen, distinct = set(), []
        for c in cands:
            if c.nodeId not in seen:
                seen.add(c.nodeId)
                distinct.append(c)
        rnd.shuffle(distinct)
        self.assertEqual(makePlan(epoch, 3600, 20, distinct, seed), a)
        self.assertEqual(makePlan(epoch, 3600, 20, list(shuffled), seed), a)

    @settings(max_examples=150, deadline=None)
    @given(candidateLists, st.integers(0, 2**32 - 1), st.integers(5, 7200), st.floats(1, 10_000))
    def test_bounds(self, cands, epoch, length, slot):
        plan = makePlan(epoch, length, slot, cands)
        byId = {}
        for c in cands:
            byId.setdefault(c.nodeId, c)
        self.assertEqual(set(plan.teams), set(byId))
        for target, team in plan.teams.items():
            self.assertLessEqual(len(team), TEAM_SIZE)
            self.assertEqual(len(set(team)), len(team))
            t = byId[target]
            for m in team:
                c = byId[m]
                self.assertNotEqual(m, target)
                self.assertGreater(c.vote, 0)
                if c.subnet:
                    self.assertNotEqual(c.subnet, t.subnet)
                self.assertNotIn(m, t.family)
                self.assertNotIn(target, c.family)
            eligible = [c for c in byId.values() if c.nodeId != target and c.vote > 0 and not
                        (c.subnet and c.subnet == t.subnet) and c.nodeId not in t.family and target not in c.family]
            self.assertEqual(len(team), min(TEAM_SIZE, len(eligible)))
        self.assertGreaterEqual(plan.slotStart, 0.2 * length - 1e-9)
        self.assertLessEqual(plan.slotStart + plan.slotLength, 0.85 * length + 1e-9)

    def test_teamsChangeEveryEpochAndFollowVotes(self):
        cands = [Candidate(nid(i), 1.0) for i in range(40)] + [Candidate(nid(100), 40.0)]
        plans = [makePlan(e, 3600, 20, cands) for e in range(30)]
        self.assertNotEqual(plans[0].teams, plans[1].teams)
        self.assertNotEqual(plans[0].slotStart, plans[1].slotStart)
        # a relay with half the votes sits in most teams; a one-vote relay in about 5/80 of them
        heavy = sum(p.assigned(nid(100), t) for p in plans for t in p.teams) / sum(len(p.teams) for p in plans)
        light = sum(p.assigned(nid(3), t) for p in plans for t in p.teams) / sum(len(p.teams) for p in plans)
        self.assertGreater(heavy, 0.6)
        self.assertLess(light, 0.25)

    def test_aRelayMissingFromOneViewChangesOnlyTeamsItWouldEnter(self):
        cands = [Candidate(nid(i), 1.0) for i in range(30)]
        full = makePlan(9, 3600, 20, cands)
        less = makePlan(9, 3600, 20, cands[1:])
        for target, team in less.teams.items():
            if nid(0) not in full.teams[target]:
                self.assertEqual(team, full.teams[target])
        self.assertEqual(full.targetsOf(nid(5)), sorted(t for t, team in full.teams.items() if nid(5) in team))

    def test_subnets(self):
        self.assertEqual(subnetOf("198.18.3.4"), "198.18.0.0/16")
        self.assertEqual(subnetOf("[2001:db8::1]"), "2001:db8::/32")
        self.assertEqual(subnetOf("127.0.0.5"), "")
        self.assertEqual(subnetOf("nonsense"), "")

    def test_fromDescriptors(self):
        class D:
            def __init__(self, i, addr, family=()):
                self.nodeId, self.addresses, self.family = nid(i), (("tls", addr), ("udp", "9.9.9.9:1")), family

        got = candidatesFrom([D(1, "198.18.0.1:9001", (nid(2),)), D(2, "[2001:db8::1]:9001")], {nid(1): 3.0})
        self.assertEqual(got[0], Candidate(nid(1), 3.0, "198.18.0.0/16", frozenset({nid(2)})))
        self.assertEqual(got[1], Candidate(nid(2), 0.0, "2001:db8::/32", frozenset()))
        plan = makePlan(1, 3600, 20, got)
        self.assertEqual(plan.teams, {nid(1): (), nid(2): ()})


class EchoBoundTests(unittest.TestCase):
    def test_aTargetEchoesItsTeamAndTheNextTwoKnownOrNot(self):
        cands = [Candidate(nid(i), 1.0) for i in range(30)]
        target = nid(0)
        full = makePlan(4, 3600, 20, cands)
        keyed = sorted((keyOf(b"", 4, target, c.nodeId, 1.0), c.nodeId) for c in cands[1:])
        order = [n for _, n in keyed]
        self.assertEqual(full.teams[target], tuple(order[:TEAM_SIZE]))
        for rank, m in enumerate(order):
            self.assertEqual(full.echoes(m, target), rank < TEAM_SIZE + 2, rank)
        self.assertFalse(full.echoes(target, target))
        # a target whose directory lacks the 6th measurer still echoes it
        less = makePlan(4, 3600, 20, [c for c in cands if c.nodeId != order[5]])
        self.assertTrue(less.echoes(order[5], target))
        self.assertFalse(less.echoes(order[9], target))
        # a stranger's key is what it is: about 7 in 30 land within the bound, the rest are refused
        strangers = [hashlib.sha256(b"stranger%d" % i).digest() for i in range(200)]
        self.assertLess(sum(full.echoes(s, target) for s in strangers), 80)
