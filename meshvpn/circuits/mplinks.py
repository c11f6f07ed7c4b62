"""The exit's multipath sets, found by nonce, with bounds on what clients can make it hold.

MP_LINK names a set by a 32-byte nonce; the first leg creates it, a second
joins it.  Everything here is bounded: at most L{MAX_SETS} sets, at most
L{meshvpn.circuits.mpset.MAX_LEGS} legs in one, at most L{MAX_LINKING} legs
between MP_LINK and MP_LINKED_ACK at once (legs that never finish
linking are closed after L{meshvpn.circuits.mpset.LINK_TIMEOUT}), and each
set's reorder buffer is capped by L{meshvpn.circuits.mpreorder}.  A refused
MP_LINK raises L{MultipathRefused}: the caller closes that circuit only.
"""

from meshvpn.circuits.mpreorder import MultipathViolation
from meshvpn.circuits.mpset import LegState, MAX_LEGS
from meshvpn.errors import MeshVPNError
from meshvpn.onion.multipathmsgs import MpLink

MAX_SETS = 32  # sets at one exit: each may hold ~2.1 MB out of order and ~2 MB unacknowledged
MAX_LINKING = 16  # legs that sent MP_LINK and have not finished the handshake


class MultipathRefused(MeshVPNError):
    """
    MP_LINK refused.  C{answer}: an honest client can meet it (a bound was
    reached, the stream ended meanwhile): answer MP_REFUSED and keep the
    circuit; otherwise (malformed, misplaced) close that circuit.
    """

    def __init__(self, why, answer=False):
        super().__init__(why)
        self.answer = answer


class LinkRegistry:
    """
    @param makeSet: C{callable(nonce, leg, streamId)} returning a new
        exit-side L{meshvpn.circuits.mpset.MultipathSet} that takes over
        stream C{streamId} of C{leg}'s circuit; it may raise
        L{MultipathRefused} (no such stream).
    """

    def __init__(self, makeSet, maxSets=MAX_SETS, maxLinking=MAX_LINKING):
        self._makeSet = makeSet
        self.maxSets = maxSets
        self.maxLinking = maxLinking
        self.sets = {}  # nonce -> MultipathSet
        self._setOf = {}  # leg -> MultipathSet
        self.refused = 0

    def linking(self):
        """Legs of every set that have not finished their handshake."""
        return sum(1 for s in self.sets.values() for state in s.legs.values() if state is LegState.LINKING)

    def setOf(self, leg):
        return self._setOf.get(leg)

    def linkReceived(self, leg, streamId, body):
        """
        MP_LINK on C{leg}: create or join the set it names.

        @raise MultipathRefused: the link is malformed or over a bound.
        """
        try:
            link = MpLink.decode(body)
        except Exception as e:
            self._refuse(f"bad MP_LINK: {e}")
        if leg in self._setOf:
            self._refuse("this circuit is already a leg of a set")
        if self.linking() >= self.maxLinking:
            self._refuse(f"{self.maxLinking} legs are already linking", answer=True)
        mpset = self.sets.get(link.nonce)
        if mpset is None or mpset.closed:
            if streamId == 0:
                self._refuse("the first leg's MP_LINK must name the stream the set takes over")
            if len(self.sets) >= self.maxSets:
                self._refuse(f"{self.maxSets} multipath sets already", answer=True)
            try:
                mpset = self._makeSet(link.nonce, leg, streamId)
            except MultipathRefused:
                self.refused += 1
                raise
            self.sets[link.nonce] = mpset
        elif streamId != 0:
            self._refuse("only the first leg names a stream")
        elif len(mpset.legs) >= MAX_LEGS:
            self._refuse(f"the set already has {MAX_LEGS} legs", answer=True)
        try:
            mpset.acceptLeg(leg, link)
        except MultipathViolation as e:
            self.sets.pop(link.nonce, None) if not mpset.legs else None
            self._refuse(str(e))
        self._setOf[leg] = mpset
        return mpset

    def legClosed(self, leg):
        """C{leg}'s circuit closed: it leaves its set; an empty or closed set is forgotten."""
        mpset = self._setOf.pop(leg, None)
        if mpset is None:
            return
        mpset.legClosed(leg)
        self.forgetClosed()

    def forgetClosed(self):
        for nonce, mpset in list(self.sets.items()):
            if mpset.closed:
                del self.sets[nonce]
                for leg in [g for g, s in self._setOf.items() if s is mpset]:
                    del self._setOf[leg]

    def _refuse(self, why, answer=False):
        self.refused += 1
        raise MultipathRefused(why, answer)
