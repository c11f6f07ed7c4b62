"""Hostile DHT nodes for the simulator: real nodes that run the attacks of doc/security.md ("DHT").

A L{Coalition} is one attacker: every hostile node knows every other and
they lie together.  Each member is a real L{meshvpn.dht.rpc.DHTNode} (same
wire format, same proofs of work and signatures, its own routing table and
lookups) whose answers to others are replaced by the attack:

  eclipse  answer every FIND_NODE/FIND_VALUE with only colluders, the
           closest ones to the target; withhold every honest record (values
           and region samples); acknowledge honest STOREs and drop them.
  hijack   as eclipse, but list half of the honest nodes one knows at
           spare addresses of the attacker's (one IP each), where an
           impersonator answers with the honest node's key and proof of work
           (it cannot sign for them: it signs with its owner's key).
  sybil    as eclipse, with several identities on every hostile host (each
           one pays its proof of work and publishes a relay).
  evict    route honestly, but mint free keys: announce decoy relays (never
           live, 24 h expiry) and flood honest nodes with junk records
           (24 h expiry) to crowd honest descriptors out of their stores.

Only the bench uses this module; nothing in a real node imports it.
"""

import bisect
import ipaddress

from meshvpn.dht import wire
from meshvpn.dht.records import makeRecord, parseRecord
from meshvpn.dht.rpc import DHTNode
from meshvpn.tools.dhtsim import simIdentity
from meshvpn.dht.tokens import NO_TOKEN

ATTACKS = ("eclipse", "evict", "hijack", "sybil")
JUNK_TTL = 24 * 3600
MAX_IMPERSONATIONS = 40  # per hostile node
SPARE_BASE = int(ipaddress.IPv4Address("100.96.0.0"))  # the attacker's spare addresses (100.96/11)


class Coalition:
    """One attacker: its members, the keys it minted, its impersonators."""

    def __init__(self, attack, network, rng, k):
        if attack not in ATTACKS:
            raise ValueError(f"attack must be one of {', '.join(ATTACKS)}")
        self.attack = attack
        self.network = network
        self.rng = rng
        self.k = k
        self.members = {}
        self._ints = []
        self._byInt = {}
        self.minted = set()  # publisher ids of free keys (decoys, junk)
        self.junkSent = 0
        self._spareIPs = 0

    def spareAddress(self):
        """
        An address of the attacker's own with no node on it: impersonators
        live there, one per IP, so no lookup rule but the proof of key stops
        them (a lookup takes one node id per host).
        """
        self._spareIPs += 1
        return (str(ipaddress.IPv4Address(SPARE_BASE + self._spareIPs)), 4000)

    def add(self, node):
        node.coalition = self
        self.members[node.nodeId] = node
        i = int.from_bytes(node.nodeId, "big")
        bisect.insort(self._ints, i)
        self._byInt[i] = node

    def remove(self, node):
        self.members.pop(node.nodeId, None)
        i = int.from_bytes(node.nodeId, "big")
        at = bisect.bisect_left(self._ints, i)
        if at < len(self._ints) and self._ints[at] == i:
            del self._ints[at]
            del self._byInt[i]

    def isHostile(self, publisherId):
        return publisherId in self.members or publisherId in self.minted

    def closestMembers(self, target, count):
        """The colluders closest to C{target}: a window of the sorted ids, sorted by distance."""
        t = int.from_bytes(target, "big")
        at = bisect.bisect_left(self._ints, t)
        window = self._ints[max(0, at - 3 * count) : at + 3 * count]
        nearest = sorted(window, key=lambda i: i ^ t)[:count]
        return [self._byInt[i].peer() for i in nearest]


class HostileNode(DHTNode):
    """A real DHT node whose answers to others serve its coalition's attack."""

    coalition = None

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.impersonations = {}  # honest nodeId -> Impersonator
        self.junk = []

    def peer(self):
        return wire.Peer(self.nodeId, self.address, self.publicKey, self.work)

    @property
    def lying(self):
        return self.coalition.attack != "evict"

    def lie(self, target):
        k = self.config.k
        if self.coalition.attack == "hijack":
            honest = [
                c for c in self.table.closest(target, k) if c.key is not None and c.nodeId not in self.coalition.members
            ][: k // 2]
            fakes = [self.impersonate(c) for c in honest]
            peers = fakes + self.coalition.closestMembers(target, k - len(fakes))
            t = int.from_bytes(target, "big")
            return sorted(peers, key=lambda p: int.from_bytes(p.nodeId, "big") ^ t)
        return self.coalition.closestMembers(target, k)

    def impersonate(self, contact):
        """An address of ours where an impersonator answers as C{contact}."""
        imp = self.impersonations.get(contact.nodeId)
        if imp is None:
            if len(self.impersonations) >= MAX_IMPERSONATIONS:
                old = self.impersonations.pop(next(iter(self.impersonations)))
                self.coalition.network.unbind(old.address)
            imp = Impersonator(self, contact, self.coalition.spareAddress())
            self.impersonations[contact.nodeId] = imp
        return wire.Peer(contact.nodeId, imp.address, contact.key, contact.work)

    # ---- the answers others get

    def answerFindNode(self, target, senderId):
        if not self.lying:
            return super().answerFindNode(target, senderId)
        return self.lie(target)

    def answerFindValue(self, key, senderId):
        if not self.lying:
            return super().answerFindValue(key, senderId)
        records = [r.raw for r in self.store.get(key, self.clock.seconds()) if self.coalition.isHostile(r.publisherId)]
        return records, self.lie(key)

    def answerSample(self, target, cls):
        if not self.lying:
            return super().answerSample(target, cls)
        records = self.store.sample(cls, target, self.clock.seconds(), limit=64)
        return [r.raw for r in records if self.coalition.isHostile(r.publisherId)][:16], []

    def answerStore(self, raw, addr):
        if not self.lying:
            return super().answerStore(raw, addr)
        try:
            record = parseRecord(raw)
        except ValueError:
            return wire.BAD_RECORD
        if self.coalition.isHostile(record.publisherId):
            return super().answerStore(raw, addr)
        return wire.STORED  # "stored", and dropped

    # ---- evict: free keys

    def mintJunk(self, keys, perKey, now):
        """Sign C{keys} x C{perKey} junk records with free keys (24 h expiry)."""
        for _ in range(keys):
            ident = simIdentity(self.rng)
            self.coalition.minted.add(ident.nodeId)
            for _ in range(perKey):
                salt = self.rng.randbytes(16)
                self.junk.append(makeRecord(ident, salt, self.rng.randbytes(64), 1, now + JUNK_TTL))

    def flood(self, burst):
        """Send C{burst} junk records to one honest node of our table."""
        honest = [c for c in self.table.contacts() if c.nodeId not in self.coalition.members]
        if not honest or not self.junk:
            return
        target = self.rng.choice(honest)
        for _ in range(burst):
            record = self.junk[self.coalition.junkSent % len(self.junk)]
            self.coalition.junkSent += 1
            self.storeAt(target.address, target.nodeId, record).addErrback(lambda f: None)


class Impersonator:
    """Answers at an attacker's address as an honest node: its key and work, not its signature."""

    def __init__(self, owner, contact, address):
        self.owner = owner
        self.contact = contact
        self.address = address
        self.answered = 0
        owner.coalition.network.bind(address, self)
        self.send = owner.coalition.network.sender(address)

    def datagramReceived(self, data, addr):
        try:
            msg = wire.decode(data)
        except wire.WireError:
            return
        if msg.kind not in wire.REQUESTS:
            return
        owner = self.owner
        if msg.kind == wire.PING:
            payload = addr
        elif msg.kind == wire.FIND_NODE:
            payload = owner.lie(msg.payload)
        elif msg.kind in (wire.FIND_VALUE, wire.SAMPLE):
            payload = ([], owner.lie(msg.payload if msg.kind == wire.FIND_VALUE else msg.payload[0]))
        else:
            payload = wire.STORED
        sign = None
        if msg.flags & wire.FLAG_PROVE:
            # the best it can do: sign with its own key
            sign = lambda data: owner.identity.sign(wire.proofInput(msg.senderKey, data))  # noqa: E731
        self.answered += 1
        self.send(
            wire.encode(wire.REQUESTS[msg.kind], msg.txid, self.contact.key, payload, work=self.contact.work,
                        token=NO_TOKEN, room=msg.size, sign=sign),
            addr,
        )
