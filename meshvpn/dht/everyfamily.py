"""One L{IDHT} over a dual-stack node's two DHTs, for records every client must find.

IPv4 and IPv6 are separate DHTs (one per address family, as in BEP 32;
L{meshvpn.dht.service.DHTService}).  A record put only into the first
family's DHT cannot be found by a client that has only the other family --
an IPv6-only client, say, could see no payment keys, no payout statements
and no bandwidth reports.  So records that every client needs (payments,
measurement) go through this view: a put stores into every family's DHT
the node runs, a get asks each and keeps what the DHTs themselves keep (the
highest sequence number; per publisher for a shared key).  A node with one
family gets exactly its one DHT's behaviour.

Relay descriptors do not use it: L{meshvpn.dht.service.RelayPublisher}
files each family's own descriptor addresses in that family's directory.
"""

from twisted.internet import defer
from zope.interface import implementer

from meshvpn.errors import DHTError
from meshvpn.interfaces import IDHT


@implementer(IDHT)
class EveryFamilyDHT:
    """
    @param dhts: C{callable() -> [IDHT]}, the node's DHTs, its first family
        first (asked on every call: they exist only once the service started).
    """

    def __init__(self, dhts):
        self._dhts = dhts

    @property
    def clock(self):
        return self._dhts()[0].clock

    def bootstrap(self, addresses):
        return self._dhts()[0].bootstrap(addresses)

    def findNode(self, nodeId):
        return self._dhts()[0].findNode(nodeId)

    def put(self, value, **kw):
        """
        Store C{value} in every family's DHT.  @return: a Deferred firing
        with how many nodes stored it in all; it fails (L{DHTError}) only
        if no DHT stored it: one family that works is enough for its clients.
        """
        dhts = self._dhts()
        if len(dhts) == 1:
            return dhts[0].put(value, **kw)

        def counted(results):
            stored = sum(n for ok, n in results if ok)
            if not stored:
                reasons = "; ".join(r.getErrorMessage() for ok, r in results if not ok) or "no node stored it"
                raise DHTError(f"not stored in any family's DHT: {reasons}")
            return stored

        return defer.DeferredList([defer.maybeDeferred(d.put, value, **kw) for d in dhts],
                                  consumeErrors=True).addCallback(counted)

    def get(self, key):
        """The verified record of highest sequence number in any family's DHT, or C{None}."""
        dhts = self._dhts()
        if len(dhts) == 1:
            return dhts[0].get(key)

        def best(results):
            found = [r for ok, r in results if ok and r is not None]
            if not found and not any(ok for ok, _ in results):
                return results[0][1]  # every lookup failed: the first family's failure
            return max(found, key=lambda r: r.seq, default=None)

        return defer.DeferredList([defer.maybeDeferred(d.get, key) for d in dhts],
                                  consumeErrors=True).addCallback(best)

    def getAll(self, key, want):
        """Up to C{want} publishers' records under a shared key, from every family's DHT (the newest of each)."""
        dhts = self._dhts()
        if len(dhts) == 1:
            return dhts[0].getAll(key, want)

        def merged(results):
            if not any(ok for ok, _ in results):
                return results[0][1]
            newest = {}
            for ok, records in results:
                for r in records if ok else ():
                    held = newest.get(r.publisherId)
                    if held is None or r.seq > held.seq:
                        newest[r.publisherId] = r
            return list(newest.values())[:want]

        return defer.DeferredList([defer.maybeDeferred(d.getAll, key, want) for d in dhts],
                                  consumeErrors=True).addCallback(merged)
