"""Region samples: the records of a class nearest a random point, whoever returned them.

How a client draws relays without a directory (L{meshvpn.dht.directory}):
pick a point, find the nodes closest to it over disjoint lookup paths, ask
the C{sampleStorers} closest for their records of the class nearest the
point (SAMPLE: one record per key, nearest first), verify every record, and
keep those under the C{keep} keys nearest the point.  Which keys are kept
depends only on where they lie, never on who answered: a hostile storer can
withhold (an honest one among those asked still returns the nearest records
it holds, and it holds every record that near) or add records of its
friends from farther away (they are not the nearest), but cannot bias the
draw; and a random point cannot be prepared for.
"""

import hashlib

from twisted.internet import defer

from meshvpn.dht import wire
from meshvpn.dht.records import RecordError, parseRecord, sampleClass, verifyRecord

# what any honest storer's answer holds: descriptor records are about 400 bytes, three to a datagram
SAMPLE_KEEP = 3


class SampleResult:
    """What a region sample found: verified C{records}, the C{radius} they lie within, the C{storers} asked."""

    def __init__(self, records, radius, storers, messages):
        self.records = records
        self.radius = radius
        self.storers = storers
        self.messages = messages


@defer.inlineCallbacks
def sampleRegion(node, cls, target, keep=SAMPLE_KEEP):
    """
    @param node: the L{meshvpn.dht.rpc.DHTNode} asking.
    @return: a Deferred firing with a L{SampleResult}.
    """
    result = yield node.lookup(target)
    storers = result.contacts[: node.config.sampleStorers]
    ds = [node.request(p.address, wire.SAMPLE, (target, cls), expectedId=p.nodeId) for p in storers]
    answers = yield defer.DeferredList(ds, consumeErrors=True)
    t = int.from_bytes(target, "big")
    now = node.clock.seconds()
    found, checked = {}, set()
    for ok, msg in answers:
        if not ok:
            continue
        for raw in msg.payload[0]:
            digest = hashlib.blake2b(raw, digest_size=16).digest()
            if digest in checked:
                continue
            checked.add(digest)
            try:
                record = parseRecord(raw)
                if sampleClass(record.salt) != cls:
                    raise RecordError("not a record of the class asked for", wire.BAD_RECORD)
                verifyRecord(record, now)
            except RecordError:
                node.counters["bad_records_read"] += 1
                continue
            old = found.get((record.key, record.publisherId))
            if old is None or record.seq > old.seq:
                found[(record.key, record.publisherId)] = record
    keys = sorted({key for key, _ in found}, key=lambda k: int.from_bytes(k, "big") ^ t)
    node.counters["sample_not_nearest"] += max(0, len(keys) - keep)
    nearest = set(keys[:keep])
    kept = [r for (key, _), r in found.items() if key in nearest]
    radius = int.from_bytes(keys[min(keep, len(keys)) - 1], "big") ^ t if keys else 0
    return SampleResult(kept, radius, storers, result.requests + result.responses + 2 * len(storers))
