"""A relay tells the circuits through a hung next hop at once: the NEXT_HOP_SUSPECTED message.

A client's own link PING finds a hung guard; a hung middle or exit is seen
only by the relay before it, whose link PING to it goes unanswered
(L{meshvpn.link.liveness}: the link is I{suspected} after TCP's RTO, at
least 0.5 s).  Until now that relay only counted it, and every client with
a circuit through the hung relay found out on its own, by an end-to-end
probe per circuit, seconds later.

So the relay's L{NextHopWatch} hears its link plane's suspicion (an
L{ILinkLivenessObserver}) and sends NEXT_HOP_SUSPECTED toward the origin on
every circuit whose next hop is that peer, in the same reactor turn: one
cell per circuit, and one more (body "heard again") when the peer answers.
Nothing is torn down: a suspicion may be wrong on a loaded machine, and
the link's verdict still closes the link (and destroys the circuits) if
the peer stays silent.  The origin (L{meshvpn.onion.origin}) hands the
message to whoever watches the circuit (the circuit manager), which moves
waiting streams and avoids the relay, within bounds of its own
(L{meshvpn.circuits.manager}).

On a starved machine a live peer's PONG often comes after the RTO (PONGs
of 1-3 s were measured at load 20), and each false alarm would move
hundreds of users' streams.  So the relay tells only once the PING has gone
unanswered for L{SLOW_FACTOR} times the second slowest PONG its link has
seen recently as well (the link's own history: on a quiet machine that is
within the RTO, and nothing waits); heard before that, nobody is told.

Body: one byte, 1 (suspected) or 0 (heard again); anything else is a
protocol violation of the hop that sent it.
"""

from twisted.logger import Logger
from zope.interface import implementer

from meshvpn.interfaces import ILinkLivenessObserver, IStatusSource
from meshvpn.onion.cells import CellError, RelayCommand
from meshvpn.onion.relaycircuit import NextHopEnd

SLOW_FACTOR = 1.5  # times the link's second slowest recent PONG a PING waits before circuits are told
SUSPECTED = b"\x01"
HEARD = b"\x00"

log = Logger()


def encode(suspected):
    return SUSPECTED if suspected else HEARD


def decode(body):
    """@return: C{True} (suspected) or C{False} (heard again). @raise CellError: any other body."""
    if body == SUSPECTED:
        return True
    if body == HEARD:
        return False
    raise CellError(f"NEXT_HOP_SUSPECTED body must be one byte 0 or 1, not {len(body)} bytes")


@implementer(ILinkLivenessObserver, IStatusSource)
class NextHopWatch:
    """
    The relay's side: every circuit whose next hop's link is suspected
    hears so from this hop.  Register with the link manager's
    C{addLivenessObserver}.
    """

    def __init__(self, switch):
        self.switch = switch
        self._pending = {}  # peer node id -> the call that tells its circuits (waiting on a slow link's history)
        self._told = set()  # peers whose circuits were told (so "heard again" goes to them)
        self.counters = {"next_hop_warnings": 0, "next_hop_warned_circuits": 0, "next_hop_cleared": 0,
                         "next_hop_heard_in_time": 0}

    def peerSuspected(self, nodeId, suspected):
        pending = self._pending.pop(nodeId, None)
        if pending is not None and pending.active():
            pending.cancel()
        if not suspected:
            if nodeId in self._told:
                self._told.discard(nodeId)
                self._tell(nodeId, False)
            elif pending is not None:
                self.counters["next_hop_heard_in_time"] += 1  # a slow link, not a hung peer: nobody was told
            return
        wait = self._slowLinkWait(nodeId)
        if wait > 0:
            self._pending[nodeId] = self.switch.clock.callLater(wait, self._stillSuspected, nodeId)
            return
        self._stillSuspected(nodeId)

    def _stillSuspected(self, nodeId):
        self._pending.pop(nodeId, None)
        self._told.add(nodeId)
        self._tell(nodeId, True)

    def _slowLinkWait(self, nodeId):
        """Seconds more to wait before telling: what the link's own slow PONGs say a live peer may take."""
        link = self.switch.linkToPeer(nodeId)
        trips = getattr(link, "roundTrips", None)
        samples = sorted(getattr(trips, "samples", ()) or ())
        suspectAfter = getattr(link, "suspectTimeout", None)
        if len(samples) < 2 or suspectAfter is None:
            return 0.0
        return max(0.0, SLOW_FACTOR * samples[-2] - suspectAfter())

    def _tell(self, nodeId, suspected):
        body = encode(suspected)
        told = 0
        for channel in self.switch.channels():
            if channel.peerId != nodeId or channel.closed:
                continue
            for end in list(channel.circuits.values()):
                if not isinstance(end, NextHopEnd):
                    continue  # circuits coming from that peer: the origin is on its side
                if end.c.sendRelay(RelayCommand.NEXT_HOP_SUSPECTED, 0, body):
                    told += 1
        if suspected:
            self.counters["next_hop_warnings"] += 1
            self.counters["next_hop_warned_circuits"] += told
            if told:
                log.info("next hop {peer} suspected: told {n} circuits", peer=nodeId.hex()[:16], n=told)
        else:
            self.counters["next_hop_cleared"] += 1

    def status(self):
        return dict(self.counters)
