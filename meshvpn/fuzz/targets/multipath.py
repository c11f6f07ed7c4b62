"""Fuzz target: the multipath messages MP_LINK ... MP_REFUSED (133-140) as both ends of a set handle them.

At the exit, every circuit may become a leg: MP_LINK goes through the
exit's real dispatcher (streams/multipathexit.py) and its registry of sets
(circuits/mplinks.py), everything else to the set the leg belongs to
(circuits/mpset.py, its reorder buffer mpreorder.py and sender mpsend.py).
At the origin, a set links two legs itself and reads the exit's answers.
An input is a conversation: which end, then messages on four circuits
(command, stream id, body chosen by the fuzzer), with writes of stream data
and time passing between them.

Declared error: L{MultipathViolation} (the caller closes that circuit).
Invariants: the bounds hold (sets, legs, bytes held out of order), the
stream's bytes come out in order and never more than were sent in
sequence, and a closed set holds no timer.
"""

from twisted.internet.task import Clock

from meshvpn.circuits.mplinks import MAX_SETS
from meshvpn.circuits.mpreorder import MultipathViolation
from meshvpn.circuits.mpset import MAX_LEGS, MultipathSet
from meshvpn.fuzz.target import FuzzTarget
from meshvpn.onion.cells import RELAY_DATA_LEN, RelayCommand
from meshvpn.onion.multipathmsgs import MpAck, MpLink, MpSwitch
from meshvpn.streams.multipathexit import MultipathExit

_COMMANDS = sorted(RelayCommand.MULTIPATH)
_NONCE = bytes(range(32))


class _Leg:
    """A circuit seen as a leg: what it sent, whether it was closed, a fixed round-trip time."""

    def __init__(self, name):
        self.name = name
        self.sent = []
        self.closed = False
        self.mpset = None

    def sendRelay(self, command, streamId, body):
        if len(body) > RELAY_DATA_LEN:
            raise AssertionError(f"{RelayCommand.NAMES[command]} body of {len(body)} bytes")
        self.sent.append((command, streamId, body))

    def close(self):
        self.closed = True

    def room(self):
        return 0 if self.closed else 50

    def rtt(self):
        return 0.05 * (1 + int(self.name[-1]))


class _Receiver:
    """The stream behind a set: must see nothing after its end, and its end once."""

    def __init__(self):
        self.data = bytearray()
        self.ended = 0

    def dataReceived(self, data):
        if self.ended:
            raise AssertionError("data after the end of the stream")
        self.data += data

    def finished(self):
        self.ended += 1
        if self.ended > 1:
            raise AssertionError("the stream ended twice")


class _Exit(MultipathExit):
    """The exit's dispatcher with sets whose stream ends in a receiver (no TCP target behind it)."""

    def __init__(self, clock):
        super().__init__()
        self.clock = clock
        self.receivers = []

    def _makeSet(self, nonce, leg, streamId):
        receiver = _Receiver()
        mpset = MultipathSet(self.clock, nonce, False, receiver)
        self.receivers.append(receiver)
        return mpset


def _checkSet(mpset):
    if len(mpset.legs) > MAX_LEGS:
        raise AssertionError(f"a set with {len(mpset.legs)} legs")
    reorder = mpset.reorder
    if reorder.heldBytes > reorder.maxBuffer or any(seq <= reorder.delivered for seq in reorder.held):
        raise AssertionError(f"reorder buffer holds {reorder.heldBytes} bytes, delivered {reorder.delivered}")
    if mpset.closed and any(t.active() for t in mpset._timers.values()):
        raise AssertionError("a closed set keeps a timer")


def _messages(data, pos):
    while pos + 3 <= len(data):
        op, command, n = data[pos], _COMMANDS[data[pos + 1] % len(_COMMANDS)], data[pos + 2] * 2
        body = data[pos + 3 : pos + 3 + n]
        pos += 3 + n
        yield op, command, body


def _atExit(data):
    clock = Clock()
    mp = _Exit(clock)
    legs = [_Leg(f"leg{i}") for i in range(4)]
    for op, command, body in _messages(data, 1):
        leg = legs[op & 3]
        try:
            if not leg.closed:
                mp._message(leg, command, (op >> 2) & 1, body)
        except MultipathViolation:
            leg.close()
            mp.registry.legClosed(leg)
        if op & 8:
            for mpset in mp.registry.sets.values():
                if not mpset.closed:
                    mpset.write(bytes(op) * 300)
        if op & 16:
            clock.advance(31)
        if op & 32 and not leg.closed:
            leg.close()
            mp.registry.legClosed(leg)
        if len(mp.registry.sets) > MAX_SETS:
            raise AssertionError(f"{len(mp.registry.sets)} sets at one exit")
        for mpset in mp.registry.sets.values():
            _checkSet(mpset)
    clock.advance(3600)


def _atOrigin(data):
    clock = Clock()
    receiver = _Receiver()
    mpset = MultipathSet(clock, _NONCE, True, receiver)
    legs = [_Leg(f"leg{i}") for i in range(2)]
    mpset.addLeg(legs[0], streamId=1)
    mpset.addLeg(legs[1])
    for op, command, body in _messages(data, 1):
        leg = legs[op & 1]
        try:
            mpset.relayReceived(leg, command, body)
        except MultipathViolation:
            pass
        if op & 8 and not mpset.closed:
            mpset.write(bytes(op) * 600)
        if op & 16:
            clock.advance(31)
        if op & 32:
            mpset.legClosed(leg)
        _checkSet(mpset)
    clock.advance(3600)


def _run(data):
    if not data:
        return
    (_atOrigin if data[0] & 1 else _atExit)(data)
    return


def _msg(op, command, body):
    body = body + b"\0" * (len(body) % 2)
    return bytes([op, _COMMANDS.index(command), len(body) // 2]) + body


def _seeds():
    link = MpLink(_NONCE).encode()
    # exit: leg0 creates the set for its stream 1, leg1 joins it by nonce
    atExit = bytes([0]) + _msg(0 | 4, RelayCommand.MP_LINK, link) + _msg(1, RelayCommand.MP_LINK, link)
    atExit += _msg(0, RelayCommand.MP_LINKED_ACK, b"") + _msg(1, RelayCommand.MP_LINKED_ACK, b"")
    atExit += _msg(0, RelayCommand.MP_SWITCH, MpSwitch(1).encode()) + _msg(0 | 8, RelayCommand.MP_DATA, b"GET /")
    atExit += _msg(1, RelayCommand.MP_ACK, MpAck(1).encode()) + _msg(1, RelayCommand.MP_SWITCH, MpSwitch(2).encode())
    atExit += _msg(1 | 32, RelayCommand.MP_FIN, b"")
    # origin: both legs get MP_LINKED, then data arrives in sequence on both and out of order
    linked = MpLink(_NONCE, 0, 0).encode()
    atOrigin = bytes([1]) + _msg(0, RelayCommand.MP_LINKED, linked) + _msg(1, RelayCommand.MP_LINKED, linked)
    atOrigin += _msg(0, RelayCommand.MP_SWITCH, MpSwitch(1).encode()) + _msg(0, RelayCommand.MP_DATA, b"hello")
    atOrigin += _msg(1, RelayCommand.MP_SWITCH, MpSwitch(3).encode()) + _msg(1, RelayCommand.MP_DATA, b"late!!")
    atOrigin += _msg(0 | 8, RelayCommand.MP_DATA, b"second") + _msg(1, RelayCommand.MP_ACK, MpAck(0).encode())
    atOrigin += _msg(1, RelayCommand.MP_FIN, b"")
    return [atExit, atOrigin]


TARGET = FuzzTarget("multipath", "MP_LINK..MP_REFUSED through streams/multipathexit.py and circuits/mpset.py, "
                    "mplinks.py, mpreorder.py, mpsend.py (both ends of a set)", (MultipathViolation,), _run, _seeds)
