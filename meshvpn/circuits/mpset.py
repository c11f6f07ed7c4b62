"""One multipath set at either end: the link handshake of its legs and the routing of their cells.

A set carries one stream over up to L{MAX_LEGS} circuits that end at the
same exit (doc/protocol.md, "Multipath").  The origin links a leg by
sending MP_LINK with the set's nonce and waits for MP_LINKED, then answers
MP_LINKED_ACK; the exit adds a leg to its set on MP_LINK and starts sending
on it at MP_LINKED_ACK.  Both ends then run the same machinery: a
L{MultipathSender} for what they send and a L{ReorderBuffer} for what they
receive.

Anything a leg does against the rules (an unknown or misplaced command, a
body that does not parse, a sequence number out of range, a reorder flood)
closes the whole set and every leg: a set with one hostile leg cannot be
trusted to deliver in order.
"""

import enum

from twisted.logger import Logger

from meshvpn.circuits.mpreorder import MultipathViolation, ReorderBuffer
from meshvpn.circuits.mpsend import MultipathSender
from meshvpn.onion.cells import MIN_RELAY_DATA_LEN, CellError, RelayCommand
from meshvpn.onion.multipathmsgs import MpAck, MpLink, MpSwitch

log = Logger()

MAX_LEGS = 2
LINK_TIMEOUT = 30.0  # seconds a leg may take from MP_LINK to the end of its handshake

_SEQUENCED = frozenset((RelayCommand.MP_DATA, RelayCommand.MP_FIN))


class LegState(enum.Enum):
    LINKING = "linking"  # origin: MP_LINK sent; exit: MP_LINKED sent
    LINKED = "linked"


class MultipathSet:
    """
    @param clock: an C{IReactorTime} (leg handshake timeouts).
    @param nonce: the set's 32-byte nonce.
    @param origin: C{True} at the end that builds the legs.
    @param receiver: gets C{dataReceived(bytes)} in order and C{finished()}
        after the peer's last byte.
    @param onClose: C{callable(why)}: the set closed (C{why} is C{None}
        when both directions finished cleanly).
    """

    def __init__(self, clock, nonce, origin, receiver, onClose=None, window=None):
        self.clock = clock
        self.nonce = nonce
        self.origin = origin
        self.receiver = receiver
        self._onClose = onClose
        self._onLinked = None  # callable(leg): a leg finished its handshake
        self.onRefused = None  # callable(leg): the exit answered MP_REFUSED to a leg (origin)
        # Legs may differ in relay crypto: bodies that fit any hop's cell (488 bytes, CGO's).
        size = MIN_RELAY_DATA_LEN
        self.sender = MultipathSender(maxData=size) if window is None else MultipathSender(window=window, maxData=size)
        self.reorder = ReorderBuffer(self._deliver, self._acknowledge)
        self.legs = {}  # leg -> LegState
        self._timers = {}
        self.finReceived = False
        self.closed = False
        self.closeReason = None

    # -- legs --------------------------------------------------------------

    def addLeg(self, leg, streamId=0):
        """Origin: link C{leg} (C{streamId}: the stream this set takes over, on the first leg)."""
        self._admit(leg)
        leg.sendRelay(RelayCommand.MP_LINK, streamId, self._linkBody())

    def acceptLeg(self, leg, link):
        """Exit: C{leg} sent MP_LINK (C{link}, already decoded and matched to this set)."""
        self._admit(leg)
        self._peerDelivered(link.lastSeqRecv)
        self.reorder.addLeg(leg)
        leg.sendRelay(RelayCommand.MP_LINKED, 0, self._linkBody())

    def _admit(self, leg):
        if self.closed:
            raise MultipathViolation("the set is closed")
        if leg in self.legs:
            raise MultipathViolation("that circuit is already a leg of the set")
        if len(self.legs) >= MAX_LEGS:
            raise MultipathViolation(f"a set has at most {MAX_LEGS} legs")
        self.legs[leg] = LegState.LINKING
        self._timers[leg] = self.clock.callLater(LINK_TIMEOUT, self._linkTimedOut, leg)

    def _linkBody(self):
        return MpLink(self.nonce, self.sender.nextSeq - 1, self.reorder.delivered).encode()

    def _linked(self, leg):
        self.legs[leg] = LegState.LINKED
        timer = self._timers.pop(leg, None)
        if timer is not None and timer.active():
            timer.cancel()
        self.sender.addLeg(leg)
        if self._onLinked is not None:
            self._onLinked(leg)

    def _linkTimedOut(self, leg):
        self._timers.pop(leg, None)
        log.info("multipath leg did not finish linking in {timeout} s", timeout=LINK_TIMEOUT)
        leg.close()
        self.legClosed(leg)

    def legClosed(self, leg):
        """C{leg}'s circuit is gone: the stream goes on over the others."""
        if self.legs.pop(leg, None) is None:
            return
        timer = self._timers.pop(leg, None)
        if timer is not None and timer.active():
            timer.cancel()
        self.reorder.removeLeg(leg)
        self.sender.legClosed(leg)
        if not self.legs:
            self._close("every leg is gone" if not (self.finReceived and self.sender.done) else None)
        else:
            self.reorder.flushAck()  # the sender learns what arrived, and resends less

    @property
    def linkedLegs(self):
        return [leg for leg, state in self.legs.items() if state is LegState.LINKED]

    # -- the stream --------------------------------------------------------

    def write(self, data):
        self.sender.write(data)

    def finish(self):
        self.sender.finish()

    # -- cells from the legs -----------------------------------------------

    def relayReceived(self, leg, command, body):
        """
        A multipath relay message on C{leg}.  A violation closes the set
        and every leg (and is re-raised for the caller's accounting).
        """
        try:
            self._dispatch(leg, command, body)
        except (MultipathViolation, CellError) as e:
            self.abort(str(e))
            raise MultipathViolation(str(e)) from e

    def _dispatch(self, leg, command, body):
        if self.closed:
            return
        state = self.legs.get(leg)
        if state is None:
            raise MultipathViolation("cell on a circuit that is not a leg of this set")
        if command in _SEQUENCED:
            self.reorder.received(leg, command, body)
        elif command == RelayCommand.MP_SWITCH:
            self.reorder.switch(leg, MpSwitch.decode(body).seq)
        elif command == RelayCommand.MP_ACK:
            self.sender.acknowledged(MpAck.decode(body).delivered)
            self._maybeDone()
        elif command == RelayCommand.MP_LINKED and self.origin and state is LegState.LINKING:
            link = MpLink.decode(body)
            if link.nonce != self.nonce:
                raise MultipathViolation("MP_LINKED names another set")
            self._peerDelivered(link.lastSeqRecv)
            self.reorder.addLeg(leg)
            leg.sendRelay(RelayCommand.MP_LINKED_ACK, 0, b"")
            self._linked(leg)
        elif command == RelayCommand.MP_REFUSED and self.origin and state is LegState.LINKING:
            if body:
                raise MultipathViolation("MP_REFUSED has a body")
            # The exit will not take this leg (a bound, or the stream ended): the
            # circuit stays as it was; without linked legs the set is given up.
            self.legs.pop(leg, None)
            timer = self._timers.pop(leg, None)
            if timer is not None and timer.active():
                timer.cancel()
            if self.onRefused is not None:
                self.onRefused(leg)
            if not self.linkedLegs:
                self._close("the exit refused the link")
        elif command == RelayCommand.MP_LINKED_ACK and not self.origin and state is LegState.LINKING:
            if body:
                raise MultipathViolation("MP_LINKED_ACK has a body")
            self._linked(leg)
        else:
            raise MultipathViolation(f"{RelayCommand.NAMES.get(command, command)} out of place on a multipath leg")

    def _peerDelivered(self, delivered):
        if delivered > self.sender.acked:
            self.sender.acknowledged(delivered)

    def _deliver(self, command, body):
        if self.finReceived:
            raise MultipathViolation("sequenced cell after MP_FIN")
        if command == RelayCommand.MP_FIN:
            self.finReceived = True
            self.reorder.flushAck()
            self.receiver.finished()
            self._maybeDone()
        else:
            self.receiver.dataReceived(body)

    def _acknowledge(self, delivered):
        legs = self.linkedLegs
        if not legs:
            return
        leg = min(legs, key=lambda g: g.rtt() or 0.0)
        leg.sendRelay(RelayCommand.MP_ACK, 0, MpAck(delivered).encode())

    def _maybeDone(self):
        if self.finReceived and self.sender.done:
            self._close(None)

    # -- the end -----------------------------------------------------------

    def abort(self, why):
        """Close the set and every leg (a violation, or the stream was reset)."""
        if self.closed:
            return
        log.info("multipath set closed: {why}", why=why)
        for leg in list(self.legs):
            leg.close()
        self._close(why)

    def _close(self, why):
        if self.closed:
            return
        self.closed = True
        self.closeReason = why
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
        if self._onClose is not None:
            self._onClose(why)
