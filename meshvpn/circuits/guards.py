"""Entry guards: the few relays a client enters the network through, chosen so a hostile network gains little.

If every circuit entered through a fresh random relay, an attacker running a
fraction of relays would sooner or later be the first hop of some circuit
of every user.  A client therefore keeps a small persistent set and uses
the same entry for months; the shape is Tor's guard specification, scaled
to a small network:

- the I{sample}: at most L{MAX_SAMPLE_SIZE} guard relays drawn uniformly
  from the directory (announced bandwidth buys nothing), kept in
  C{guards.json} for L{GUARD_LIFETIME_S} (a guard the client has used, for
  at least L{CONFIRMED_LIFETIME_S} after first use).  A guard missing from
  the directory stays in the sample, and counts against its size, until it
  has been missing for L{REMOVE_UNLISTED_AFTER_S}: an attacker who hides
  guards from the client's view of the directory cannot make it sample
  afresh.  The sample grows only while fewer than L{MIN_USABLE_SAMPLE} of
  its guards are listed and not known to be down;
- the I{primary} guards: the first L{N_PRIMARY} listed guards, guards the
  client has used first (in the order it first used them), then the rest in
  sample order.  A circuit takes the first primary guard not known to be
  down; other sampled guards are tried only while every primary is down;
- the I{exposure bound}: a guard the client has never connected to is tried
  only if fewer than L{NEW_GUARDS_PER_WINDOW} guards were first tried in
  the last L{NEW_GUARD_WINDOW_S}.  However its guards fail, a client
  connects to at most that many new guards a day and at most
  L{MAX_SAMPLE_SIZE} over the sample's life;
- a guard that failed is retried on Tor's schedule (primary guards every 10
  minutes at first, others every hour, both slowing down the longer they
  fail); a primary guard's first retries come sooner still, after 30
  seconds, doubling up to that schedule, so a client is back within a
  minute or two of a network outage.  Whether a guard is up is not saved: after a restart, the primary
  guards are simply tried again, which exposes nothing new.

The state is written with L{writeSecretFile} (atomic, 0600); a missing or
damaged file only costs a fresh sample.
"""

import enum
import json
import random

import attrs
from twisted.logger import Logger

from meshvpn.secretfile import writeSecretFile
from meshvpn.circuits.pathselect import weighted

DAY = 86400.0
MAX_SAMPLE_SIZE = 20
MIN_USABLE_SAMPLE = 10
N_PRIMARY = 3
GUARD_LIFETIME_S = 120 * DAY
CONFIRMED_LIFETIME_S = 60 * DAY
REMOVE_UNLISTED_AFTER_S = 20 * DAY
NEW_GUARD_WINDOW_S = DAY
NEW_GUARDS_PER_WINDOW = 5
MAX_FILE_BYTES = 64 * 1024

# (failing for less than, retry every), Tor's schedule: a primary guard is
# what the client wants back, so it is retried sooner.
PRIMARY_RETRY = ((6 * 3600, 600), (96 * 3600, 5400), (168 * 3600, 4 * 3600), (None, 9 * 3600))
OTHER_RETRY = ((6 * 3600, 3600), (96 * 3600, 4 * 3600), (168 * 3600, 18 * 3600), (None, 36 * 3600))
# A primary guard's first retries come sooner, doubling from this up to the
# schedule above (Arti's primary base delay): after a network outage every
# primary is down, and retrying them exposes nothing new, so the client
# should not sit ten minutes without circuits once the network is back.
PRIMARY_FIRST_RETRY_S = 30


class Reach(enum.Enum):
    """What the client knows of a guard's reachability (not saved)."""

    MAYBE = "maybe"  # not tried since start, or its retry time came
    UP = "up"
    DOWN = "down"


# (state, event) -> state; any pair not listed is a bug.
_REACH = {
    (Reach.MAYBE, "succeeded"): Reach.UP,
    (Reach.UP, "succeeded"): Reach.UP,
    (Reach.DOWN, "succeeded"): Reach.UP,
    (Reach.MAYBE, "failed"): Reach.DOWN,
    (Reach.UP, "failed"): Reach.DOWN,
    (Reach.DOWN, "failed"): Reach.DOWN,
    (Reach.DOWN, "retry"): Reach.MAYBE,
}


@attrs.define
class SampledGuard:
    nodeId: bytes
    added: float  # when sampled, set back by up to a tenth of the lifetime (the file does not date the sample)
    confirmedIdx: object = None  # the order in which guards were first used, or None
    confirmed: object = None  # when first used (set back like added), or None
    unlistedSince: object = None  # first seen missing from the directory, or None
    firstTried: object = None  # when the client first connected to it, or None
    reach: Reach = Reach.MAYBE
    failingSince: object = None
    failures: int = 0  # failed attempts since it last worked
    retryAt: float = 0.0

    def event(self, name):
        self.reach = _REACH[(self.reach, name)]

    def saved(self):
        return {
            "node_id": self.nodeId.hex(), "added": self.added, "confirmed": self.confirmed,
            "confirmed_idx": self.confirmedIdx, "unlisted_since": self.unlistedSince, "first_tried": self.firstTried,
        }


def _time(value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("not a time")
    return float(value)


def _loaded(entry):
    nodeId = bytes.fromhex(entry["node_id"])
    if len(nodeId) != 32:
        raise ValueError("node id is not 32 bytes")
    idx = entry.get("confirmed_idx")
    if idx is not None and (isinstance(idx, bool) or not isinstance(idx, int)):
        raise TypeError("confirmed_idx is not an integer")
    return SampledGuard(
        nodeId=nodeId, added=_time(entry["added"]), confirmedIdx=idx, confirmed=_time(entry.get("confirmed")),
        unlistedSince=_time(entry.get("unlisted_since")), firstTried=_time(entry.get("first_tried")),
    )


def _retryDelay(schedule, failingFor):
    for limit, every in schedule:
        if limit is None or failingFor < limit:
            return every
    raise AssertionError("schedules end with None")


class GuardSet:
    """
    The client's guards, kept in C{path} (C{None}: in memory only, for
    simulations).

    L{choose} gives the guard for the next circuit; the circuit manager
    reports what happened with L{succeeded} and L{markDown}.
    """

    log = Logger()

    def __init__(self, path, clock, rng=None):
        self.path = path
        self.clock = clock
        self.rng = rng or random.SystemRandom()
        self.sample = []  # SampledGuard, in sample order
        self.refusal = None  # why the last choose() found no guard
        self._primary = set()  # node ids of the primary guards, as of the last choose()
        self._saved = None
        self._load()

    # -- persistence

    def _load(self):
        if self.path is None:
            return
        try:
            with open(self.path, "rb") as f:
                raw = f.read(MAX_FILE_BYTES + 1)
            if len(raw) > MAX_FILE_BYTES:
                raise ValueError("guard file too large")
            sample = []
            for entry in json.loads(raw)["guards"]:
                guard = _loaded(entry)
                if all(g.nodeId != guard.nodeId for g in sample):
                    sample.append(guard)
        except FileNotFoundError:
            return
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            self.log.warn("guard file {path} is damaged ({why}); sampling guards afresh", path=self.path, why=e)
            return
        self.sample = sample[:MAX_SAMPLE_SIZE]
        self._saved = self._serialised()

    def _serialised(self):
        return json.dumps({"version": 2, "guards": [g.saved() for g in self.sample]}).encode()

    def _save(self):
        data = self._serialised()
        if data != self._saved and self.path is not None:
            writeSecretFile(self.path, data)
        self._saved = data

    # -- choosing

    def choose(self, relays, exclude=()):
        """
        @param relays: the known L{RelayInfo}s (the whole directory: a guard
            missing from it counts as unlisted).
        @param exclude: node ids not to use for this circuit.
        @return: the guard to use, or C{None} (then L{refusal} says why).
        """
        now = self.clock.seconds()
        listed = {r.nodeId: r for r in relays if "guard" in r.roles and r.placeable}
        self._refresh(listed, now)
        newAllowed = self._newGuardsAllowed(now)
        for guard in self._candidates(listed):
            if guard.reach is Reach.DOWN or guard.nodeId in exclude:
                continue
            if guard.firstTried is None:
                if not newAllowed:
                    continue
                guard.firstTried = now
            self._save()
            self.refusal = None
            return listed[guard.nodeId]
        self._save()
        self.refusal = self._whyNone(listed, now, newAllowed)
        return None

    def _candidates(self, listed):
        """Primary guards first, then the other confirmed ones, then the rest of the sample."""
        usable = [g for g in self.sample if g.nodeId in listed]
        confirmed = sorted((g for g in usable if g.confirmedIdx is not None), key=lambda g: g.confirmedIdx)
        return confirmed + [g for g in usable if g.confirmedIdx is None]

    def _refresh(self, listed, now):
        for guard in self.sample:
            if guard.nodeId in listed:
                guard.unlistedSince = None
            elif guard.unlistedSince is None:
                guard.unlistedSince = now
        self.sample = [g for g in self.sample if not self._expired(g, now)]
        while len(self.sample) < MAX_SAMPLE_SIZE and self._usableCount(listed) < MIN_USABLE_SAMPLE:
            sampled = {g.nodeId for g in self.sample}
            fresh = sorted(nodeId for nodeId in listed if nodeId not in sampled)
            if not fresh:
                break
            # by measured weight, among those that earned the guard flag if any did
            infos = [listed[n] for n in fresh]
            pick = weighted([r for r in infos if "guard" in r.measuredFlags] or infos, self.rng).nodeId
            self.sample.append(SampledGuard(nodeId=pick, added=now - self.rng.uniform(0, GUARD_LIFETIME_S / 10)))
        self._primary = {g.nodeId for g in self._candidates(listed)[:N_PRIMARY]}
        for guard in self.sample:
            if guard.reach is Reach.DOWN and guard.nodeId in self._primary:
                # A guard that became primary while down comes back on the primary schedule.
                guard.retryAt = min(guard.retryAt, self._retryAt(guard, now, primary=True))
            if guard.reach is Reach.DOWN and guard.retryAt <= now:
                guard.event("retry")

    def _usableCount(self, listed):
        return sum(1 for g in self.sample if g.nodeId in listed and g.reach is not Reach.DOWN)

    def _expired(self, guard, now):
        if guard.unlistedSince is not None and now - guard.unlistedSince >= REMOVE_UNLISTED_AFTER_S:
            return True
        if now - guard.added < GUARD_LIFETIME_S:
            return False
        return guard.confirmed is None or now - guard.confirmed >= CONFIRMED_LIFETIME_S

    def _newGuardsAllowed(self, now):
        recent = sum(1 for g in self.sample if g.firstTried is not None and now - g.firstTried < NEW_GUARD_WINDOW_S)
        return recent < NEW_GUARDS_PER_WINDOW

    def _whyNone(self, listed, now, newAllowed):
        usable = [g for g in self.sample if g.nodeId in listed]
        if not usable:
            return f"none of the {len(self.sample)} sampled guards is in the directory"
        down = [g for g in usable if g.reach is Reach.DOWN]
        retry = min((g.retryAt for g in down), default=now)
        why = f"{len(down)} of {len(usable)} listed sampled guards are down (next retry in {retry - now:.0f}s)"
        if not newAllowed:
            hours = NEW_GUARD_WINDOW_S / 3600
            why += f"; {NEW_GUARDS_PER_WINDOW} new guards were already tried in the last {hours:.0f}h"
        return why

    # -- outcomes

    def _find(self, nodeId):
        for guard in self.sample:
            if guard.nodeId == nodeId:
                return guard
        return None

    def succeeded(self, nodeId):
        """A circuit was built through C{nodeId}: it is up, and confirmed if it was not yet."""
        guard = self._find(nodeId)
        if guard is None:
            return
        guard.event("succeeded")
        guard.failingSince = None
        guard.failures = 0
        if guard.confirmedIdx is None:
            now = self.clock.seconds()
            used = [g.confirmedIdx for g in self.sample if g.confirmedIdx is not None]
            guard.confirmedIdx = 1 + max(used, default=-1)
            guard.confirmed = now - self.rng.uniform(0, GUARD_LIFETIME_S / 10)
            self._save()

    def markDown(self, nodeId):
        """C{nodeId} could not be reached: skip it until its retry time."""
        guard = self._find(nodeId)
        if guard is None:
            return
        now = self.clock.seconds()
        if guard.reach is Reach.DOWN and guard.retryAt > now:
            # The same outage, heard again (every circuit on a dead guard's
            # link reports it at once): one failure, not one per circuit,
            # or the retry schedule would jump to hours.
            return
        guard.event("failed")
        if guard.failingSince is None:
            guard.failingSince = now
        guard.failures += 1
        guard.retryAt = self._retryAt(guard, now, primary=nodeId in self._primary)

    def _retryAt(self, guard, now, primary):
        failingFor = now - (guard.failingSince if guard.failingSince is not None else now)
        delay = _retryDelay(PRIMARY_RETRY if primary else OTHER_RETRY, failingFor)
        if primary:
            delay = min(delay, PRIMARY_FIRST_RETRY_S * 2 ** min(max(guard.failures, 1) - 1, 16))
        return now + delay

    # -- looking

    def guardIds(self):
        return [g.nodeId for g in self.sample]

    def isPrimary(self, nodeId):
        """C{nodeId} is one of the primary guards (as of the last L{choose})."""
        return nodeId in self._primary

    def confirmed(self, nodeId):
        """C{nodeId} is a guard the client has built a circuit through (it has its place in the order)."""
        guard = self._find(nodeId)
        return guard is not None and guard.confirmedIdx is not None

    def exposure(self):
        """Guards the client has connected to, among those in the sample."""
        return [g.nodeId for g in self.sample if g.firstTried is not None]

    def status(self):
        """Counts only: which guards a client uses is for its guard file, not its status."""
        now = self.clock.seconds()
        return {
            "sampled": len(self.sample),
            "down": sum(1 for g in self.sample if g.reach is Reach.DOWN),
            "tried": sum(1 for g in self.sample if g.firstTried is not None),
            "tried_last_day": sum(1 for g in self.sample if g.firstTried is not None and now - g.firstTried < DAY),
        }
