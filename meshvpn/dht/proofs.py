"""Who proved which key at which address, and which requesters we are asking to prove theirs.

A node is believed at an address only after an answer signed by its key
there (L{meshvpn.dht.rpc}); a proof is good for C{maxAge}, after which the
node is asked again.  Routing-table entries carry their own proof time;
this book remembers proofs of nodes outside the table (lookup hops, region
storers), bounded, oldest forgotten first.

Requesters are never listed for asking.  Each one whose bucket has room is
pinged for a proof (a I{probe}) at most once per C{probeEvery} seconds, with
at most C{maxProbes} probes in flight.
"""

from collections import OrderedDict


class ProofBook:
    def __init__(self, clock, table, maxAge=3600.0, size=4096, maxProbes=32, probeEvery=300.0):
        self.clock = clock
        self.table = table
        self.maxAge = maxAge
        self.size = size
        self.maxProbes = maxProbes
        self.probeEvery = probeEvery
        self._proven = OrderedDict()  # nodeId -> (address, when)
        self._probed = OrderedDict()  # nodeId -> when last probed
        self._probing = set()

    def mark(self, nodeId, addr):
        """C{nodeId} just proved its key at C{addr}."""
        self._proven.pop(nodeId, None)
        self._proven[nodeId] = (addr, self.clock.seconds())
        while len(self._proven) > self.size:
            self._proven.popitem(last=False)

    def isProven(self, nodeId, addr):
        """@return: C{True} if C{nodeId} proved its key at C{addr} within C{maxAge}."""
        now = self.clock.seconds()
        c = self.table.get(nodeId)
        if c is not None and c.address == addr and now - c.provenAt < self.maxAge:
            return True
        seen = self._proven.get(nodeId)
        return seen is not None and seen[0] == addr and now - seen[1] < self.maxAge

    def startProbe(self, nodeId):
        """
        @return: C{True} (and count the probe as started) if C{nodeId} should
            be asked for a proof now: not listed, bucket with room, not asked
            lately, and a probe slot free.  Call L{probeDone} when it ends.
        """
        if nodeId in self.table or nodeId in self._probing or len(self._probing) >= self.maxProbes:
            return False
        now = self.clock.seconds()
        last = self._probed.get(nodeId)
        if last is not None and now - last < self.probeEvery:
            return False
        if not self.table.hasRoomFor(nodeId):
            return False
        self._probed.pop(nodeId, None)
        self._probed[nodeId] = now
        while len(self._probed) > self.size:
            self._probed.popitem(last=False)
        self._probing.add(nodeId)
        return True

    def probeDone(self, nodeId):
        self._probing.discard(nodeId)
