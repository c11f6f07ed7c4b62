"""What one circuit, one peer and the whole exit may hold at once: sockets and DNS lookups.

An exit's scarce resources are file descriptors (one per outgoing TCP
connection) and its DNS budget (L{meshvpn.exit.dns.MAX_PENDING} lookups in
flight).  Without caps below the global ones, one client takes them all:
1024 streams on each of 1024 circuits exhaust the descriptors, and 256
lookups of slow names hold every DNS slot.  So each is counted three times,
as Tor's DoS subsystem counts connections: per circuit, per peer (the
address of the link the circuit came in on), and for the node, whose
socket budget is a share of the process's descriptor limit that leaves the
rest for links, listeners and logs.  A request over any cap is refused at
once (END RESOURCELIMIT, or a transient RESOLVED error); nothing waits.

Counts live in dicts whose entries go when they reach zero, so nothing is
left behind by circuits that are gone, whatever their ids were.
"""

import resource

import attrs
from zope.interface import implementer

from meshvpn.errors import StreamRefused
from meshvpn.interfaces import IStatusSource
from meshvpn.onion.endreasons import EndReason
from meshvpn.onion.switch import peerKey

SOCKET, LOOKUP = 0, 1
_KINDS = ("sockets", "lookups")


@attrs.frozen
class ExitLimits:
    socketsPerCircuit: int = 128    # TCP connections (connecting or open) of one circuit
    socketsPerPeer: int = 4096      # of every circuit that came over links from one address
    lookupsPerCircuit: int = 16     # DNS lookups in flight (RESOLVE, or BEGIN to a name)
    lookupsPerPeer: int = 64        # a quarter of the exit's DNS budget
    fdReserve: int = 256            # descriptors never given to exit sockets
    fdShare: float = 0.5            # of the rest, what exit sockets may take (links need the others)


def socketBudget(limits, fdLimit=None):
    """@return: how many exit sockets the node may hold, from the process's soft RLIMIT_NOFILE."""
    if fdLimit is None:
        fdLimit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if fdLimit == resource.RLIM_INFINITY:
            fdLimit = 1 << 20
    return max(16, int((fdLimit - limits.fdReserve) * limits.fdShare))


def circuitPeer(circuit):
    """The peer a relay circuit came from (its previous hop's link address), or C{None}."""
    prev = getattr(circuit, "prev", None)
    link = getattr(prev, "link", None)
    return None if link is None else peerKey(link)


class Slot:
    """One socket or lookup held; L{release} gives it back (once, however often it is called)."""

    __slots__ = ("_budget", "_kind", "_circuit", "_peer")

    def __init__(self, budget, kind, circuit, peer):
        self._budget, self._kind, self._circuit, self._peer = budget, kind, circuit, peer

    def release(self):
        budget = self._budget
        if budget is not None:
            self._budget = None
            budget._release(self._kind, self._circuit, self._peer)
            self._circuit = self._peer = None


@implementer(IStatusSource)
class ExitBudget:
    """
    @param limits: the L{ExitLimits}.
    @param maxSockets: the node-wide socket budget (default: L{socketBudget}).
    @param maxLookups: the node-wide lookup budget (the resolver's own cap).
    """

    def __init__(self, limits=None, maxSockets=None, maxLookups=256):
        self.limits = limits or ExitLimits()
        self.maxTotal = (maxSockets if maxSockets is not None else socketBudget(self.limits), maxLookups)
        self._perCircuit = ({}, {})
        self._perPeer = ({}, {})
        self._total = [0, 0]
        self.refused = {"circuit": 0, "peer": 0, "node": 0}

    def acquire(self, kind, circuit):
        """
        Hold one C{kind} (L{SOCKET} or L{LOOKUP}) for C{circuit}.

        @return: a L{Slot}.
        @raise StreamRefused: RESOURCELIMIT, some cap is reached.
        """
        limits = self.limits
        perCircuit, perPeer = self._perCircuit[kind], self._perPeer[kind]
        peer = circuitPeer(circuit)
        capCircuit = limits.socketsPerCircuit if kind == SOCKET else limits.lookupsPerCircuit
        capPeer = limits.socketsPerPeer if kind == SOCKET else limits.lookupsPerPeer
        if perCircuit.get(circuit, 0) >= capCircuit:
            scope = "circuit"
        elif peer is not None and perPeer.get(peer, 0) >= capPeer:
            scope = "peer"
        elif self._total[kind] >= self.maxTotal[kind]:
            scope = "node"
        else:
            perCircuit[circuit] = perCircuit.get(circuit, 0) + 1
            if peer is not None:
                perPeer[peer] = perPeer.get(peer, 0) + 1
            self._total[kind] += 1
            return Slot(self, kind, circuit, peer)
        self.refused[scope] += 1
        raise StreamRefused(EndReason.RESOURCELIMIT, f"too many {_KINDS[kind]} for this {scope}")

    def _release(self, kind, circuit, peer):
        self._total[kind] -= 1
        for table, key in ((self._perCircuit[kind], circuit), (self._perPeer[kind], peer)):
            if key is None:
                continue
            left = table.get(key, 0) - 1
            if left > 0:
                table[key] = left
            else:
                table.pop(key, None)

    def held(self, kind, circuit=None):
        """@return: what C{circuit} (or the node) holds of C{kind}."""
        return self._total[kind] if circuit is None else self._perCircuit[kind].get(circuit, 0)

    def tracked(self):
        """@return: how many circuits and peers have an entry (zero when nothing is held)."""
        return sum(len(t) for t in self._perCircuit), sum(len(t) for t in self._perPeer)

    def status(self):
        return {"sockets": self._total[SOCKET], "max_sockets": self.maxTotal[SOCKET],
                "lookups": self._total[LOOKUP], "max_lookups": self.maxTotal[LOOKUP], "refused": dict(self.refused)}
