"""A relay that attacks the circuits it carries, on a script: the tool behind the attack tests.

MeshVPN exists to protect its users from the relays they route through, so
the tests need a relay that lies.  L{installHostile} turns a relay's
L{CircuitSwitch} into one: every circuit created on it from then on is a
L{HostileRelayCircuit}, which follows a L{Plan} -- inject a TRUNCATED,
forge stream cells (END, CONNECTED, RESOLVED, stream SENDME, DATA, PACKET)
that come from its own hop rather than the exit's, replay cells, send
garbage, wrong-size or oversized cells, refuse or stall EXTEND2, drop,
swallow or delay cells -- and records its I{view}: every forward payload
once its own layer is off, which is everything it could ever read of what
the client sends.  A test checks that view for the client's secrets.

It is test tooling, never configuration: the in-memory harness
(L{meshvpn.onion.test.hostile}) installs it directly, and a real relay
process only when its environment asks for it in the way only tests do
(L{fromEnvironment}: C{MESHVPN_TEST_HOSTILE} is read only when
C{MESHVPN_TESTING=1} is set too and the relay binds a loopback or
benchmark-network address).  It lives among the shipped modules only
because a relay process must be able to load it.

A plan is text, C{RULE;RULE;...}, each rule C{TRIGGER=ACTION+ACTION...},
plus options C{circuits=N} (attack the first N circuits a rule fires on,
then carry the rest honestly) and C{view=PATH} (append the view there):

  triggers: C{open} (the first forward RELAY cell: the circuit is built and
  in use; RELAY_EARLY only carries EXTEND2), C{extend} (an EXTEND2 for
  this hop), C{cell:N} (the Nth forward cell of the circuit).

  actions: C{truncated[:REASON]}, C{end:IDS}, C{connected:IDS},
  C{resolved:IDS:IPV4}, C{sendme:IDS}, C{data:IDS}, C{packet} (forged
  cells from this hop; IDS is C{3} or C{1-8}); C{replay} (the triggering
  cell once more to the next hop), C{replay-back} (the last cell sent
  toward the origin once more), C{garbage} (a random relay cell toward the
  origin), C{short} (a cell of the wrong size), C{oversized} (a link
  record larger than the protocol allows); C{drop} (this cell), C{swallow}
  (this cell and every later forward cell), C{delay:SECONDS} (hold this
  and later forward cells that long).  On C{extend}, C{truncated},
  C{drop} and C{swallow} keep the relay from extending.
"""

import ipaddress
import os
import struct

import attrs
from twisted.logger import Logger
from zope.interface import implementer

from meshvpn.interfaces import IStatusSource
from meshvpn.link import wire
from meshvpn.link.cellsize import CELL_SIZE
from meshvpn.onion.circhandshake import TOR1
from meshvpn.onion.cells import CellError, Command, DestroyReason, RelayCommand, Truncated
from meshvpn.onion.flow import FlowError
from meshvpn.onion.relaycircuit import RelayCircuit
from meshvpn.onion.streammsgs import AnswerType, Connected, End, Resolved

log = Logger()

ENV_PLAN = "MESHVPN_TEST_HOSTILE"
ENV_TESTING = "MESHVPN_TESTING"
VIEW_FILE = "hostile-view.bin"  # in a hostile relay process's data directory
VIEW_LIMIT = 64 * 1024 * 1024  # bytes of view kept; a test never needs more
TRIGGERS = ("open", "extend", "cell")
_FORGED = {"end", "connected", "resolved", "sendme", "data"}
_SIMPLE = {"packet", "replay", "replay-back", "garbage", "short", "oversized", "drop", "swallow"}
_STOPS_EXTEND = {"truncated", "drop", "swallow"}
_RELAY = bytes([Command.RELAY])


class PlanError(ValueError):
    """A hostile plan that cannot be parsed; the message says which part."""


@attrs.frozen
class Action:
    name: str
    ids: tuple = ()  # stream ids for forged stream cells
    arg: object = None  # TRUNCATED reason, RESOLVED address, delay seconds


@attrs.frozen
class Rule:
    trigger: str
    n: int  # for "cell": which forward cell
    actions: tuple


@attrs.frozen
class Plan:
    rules: tuple
    circuits: int = None  # attack this many circuits, then behave (None: all)
    view: str = None  # file the view is appended to (None: kept in memory)


def _ids(text):
    lo, dash, hi = text.partition("-")
    try:
        first, last = int(lo), int(hi) if dash else int(lo)
    except ValueError:
        raise PlanError(f"stream ids {text!r} are not N or N-M") from None
    if not 1 <= first <= last <= 0xFFFF or last - first > 4096:
        raise PlanError(f"stream ids {text!r} out of range 1..65535 (at most 4096 at once)")
    return tuple(range(first, last + 1))


def _action(text):
    name, _, rest = text.partition(":")
    if name == "truncated":
        if not rest:
            return Action(name, arg=DestroyReason.CONNECTFAILED)
        code = rest if not rest.isdigit() else int(rest)
        for number, label in DestroyReason.NAMES.items():
            if code == number or (isinstance(code, str) and code.upper() == label):
                return Action(name, arg=number)
        raise PlanError(f"unknown TRUNCATED reason {rest!r}")
    if name in _FORGED:
        ids, _, arg = rest.partition(":")
        if not ids:
            raise PlanError(f"{name} needs stream ids ({name}:1 or {name}:1-8)")
        if name == "resolved":
            try:
                arg = ipaddress.IPv4Address(arg).packed
            except ValueError:
                raise PlanError(f"resolved needs an IPv4 answer (resolved:1:6.6.6.6), not {arg!r}") from None
        elif arg:
            raise PlanError(f"{name} takes only stream ids")
        return Action(name, _ids(ids), arg)
    if name == "delay":
        try:
            seconds = float(rest)
        except ValueError:
            raise PlanError(f"delay needs seconds (delay:2), not {rest!r}") from None
        if not 0 < seconds <= 3600:
            raise PlanError("delay must be in (0, 3600] seconds")
        return Action(name, arg=seconds)
    if name in _SIMPLE and not rest:
        return Action(name)
    raise PlanError(f"unknown hostile action {text!r}")


def parsePlan(text):
    """@return: the L{Plan} C{text} describes. @raise PlanError: it does not parse."""
    rules, circuits, view = [], None, None
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        key, eq, value = part.partition("=")
        if not eq or not value:
            raise PlanError(f"{part!r} is not TRIGGER=ACTIONS or OPTION=VALUE")
        if key == "circuits":
            if not value.isdigit() or int(value) < 1:
                raise PlanError("circuits must be a positive number")
            circuits = int(value)
            continue
        if key == "view":
            view = value
            continue
        trigger, _, n = key.partition(":")
        if trigger not in TRIGGERS or (trigger == "cell") != bool(n):
            raise PlanError(f"unknown trigger {key!r} (open, extend or cell:N)")
        if n and (not n.isdigit() or int(n) < 1):
            raise PlanError(f"cell:N needs a positive N, not {n!r}")
        rules.append(Rule(trigger, int(n or 0), tuple(_action(a) for a in value.split("+"))))
    if not rules:
        raise PlanError("a hostile plan needs at least one rule")
    return Plan(tuple(rules), circuits, view)


class View:
    """What the hostile relay could read: every forward payload without its layer (bounded)."""

    def __init__(self, path=None, limit=VIEW_LIMIT):
        self.path = path
        self.limit = limit
        self.size = 0
        self._data = bytearray() if path is None else None
        self._file = open(path, "ab", buffering=0) if path is not None else None

    def record(self, payload):
        if self.size >= self.limit:
            return
        self.size += len(payload)
        if self._file is not None:
            self._file.write(payload)
        else:
            self._data += payload

    def read(self):
        if self._data is not None:
            return bytes(self._data)
        with open(self.path, "rb") as f:
            return f.read()

    def close(self):
        if self._file is not None:
            self._file.close()


class _RecordingLayer:
    """A relay layer that shows the hostile relay its view and keeps the last backward cell for replays."""

    __slots__ = ("_layer", "_view", "lastForward", "lastBackward")

    def __init__(self, layer, view):
        self._layer = layer
        self._view = view
        self.lastForward = self.lastBackward = None

    def decryptForward(self, payload):
        plain = self._layer.decryptForward(payload)
        self._view.record(plain)
        self.lastForward = plain
        return plain

    def recognizeForward(self, plain):
        return self._layer.recognizeForward(plain)

    def encryptBackward(self, payload):
        ct = self._layer.encryptBackward(payload)
        self.lastBackward = ct
        return ct

    def originateBackward(self, plain):
        ct, tag = self._layer.originateBackward(plain)
        self.lastBackward = ct
        return ct, tag


class _CircuitScript:
    """One circuit's progress through the plan."""

    __slots__ = ("forward", "opened", "attacked", "swallowing", "held", "eligible")

    def __init__(self, eligible):
        self.forward = 0
        self.opened = False
        self.attacked = False
        self.swallowing = False
        self.held = None  # forward cells held by a delay, in order
        self.eligible = eligible


@implementer(IStatusSource)
class Hostility:
    """
    The plan a switch follows, its view, and what it has done (L{status}).
    Made by L{installHostile}.
    """

    def __init__(self, switch, plan, clock, rng=os.urandom):
        self.switch = switch
        self.plan = plan
        self.clock = clock
        self.rng = rng
        self.view = View(plan.view)
        self.attackedCircuits = 0
        self.counts = {}

    def eligible(self):
        return self.plan.circuits is None or self.attackedCircuits < self.plan.circuits

    def fire(self, circuit, trigger):
        """
        Run the rules for C{trigger} on C{circuit}.

        @return: the set of names of the actions that ran.
        """
        script = circuit.hostileScript
        ran = set()
        for rule in self.plan.rules:
            if rule.trigger != trigger or (trigger == "cell" and rule.n != script.forward):
                continue
            if not script.attacked:
                if not (script.eligible and self.eligible()):
                    return ran
                script.attacked = True
                self.attackedCircuits += 1
            for action in rule.actions:
                self._run(circuit, action)
                self.counts[action.name] = self.counts.get(action.name, 0) + 1
                ran.add(action.name)
        return ran

    def _run(self, circuit, action):
        name = action.name
        if name == "truncated":
            circuit.sendRelay(RelayCommand.TRUNCATED, 0, Truncated(action.arg).encode())
        elif name in _FORGED:
            body = {
                "end": lambda: End(2).encode(),
                "connected": lambda: Connected("6.6.6.6", 300).encode(),
                "resolved": lambda: Resolved([(AnswerType.IPV4, action.arg, 300)]).encode(),
                "sendme": lambda: b"",
                "data": lambda: b"HTTP/1.0 200 OK\r\n\r\nforged by a relay",
            }[name]()
            command = {"end": RelayCommand.END, "connected": RelayCommand.CONNECTED,
                       "resolved": RelayCommand.RESOLVED, "sendme": RelayCommand.SENDME,
                       "data": RelayCommand.DATA}[name]
            for sid in action.ids:
                circuit.sendRelay(command, sid, body)
        elif name == "packet":
            # An IPv4/UDP packet from 6.6.6.6 framed as PACKET records: length(2) | packet.
            packet = _udpPacket(b"\x06\x06\x06\x06", b"\x64\x60\x00\x01")
            circuit.sendRelay(RelayCommand.PACKET, 0, struct.pack(">H", len(packet)) + packet)
        elif name == "replay-back":
            last = circuit.layer.lastBackward
            if last is not None:
                circuit.prev.send(circuit.prevPrefix + _RELAY + last)
        elif name == "garbage":
            circuit.prev.send(circuit.prevPrefix + _RELAY + self.rng(CELL_SIZE - 5))
        elif name == "short":
            circuit.prev.send(circuit.prevPrefix + _RELAY + self.rng(100))
        elif name == "oversized":
            self._oversized(circuit)
        elif name == "swallow":
            circuit.hostileScript.swallowing = True
        elif name == "delay":
            script = circuit.hostileScript
            if script.held is None:
                script.held = []
                self.clock.callLater(action.arg, circuit.hostileRelease)
        # "drop" and "replay" act on the triggering cell (see HostileRelayCircuit).

    def _oversized(self, circuit):
        """More than a cell: a memory link carries it as is; a real link gets a record over the protocol's bound."""
        cell = circuit.prevPrefix + _RELAY + self.rng(CELL_SIZE)
        link = circuit.prev.link
        transport = getattr(link, "transport", None)
        if transport is not None and hasattr(link, "state"):
            # The record header claims more cells than any record may hold.
            transport.write(struct.pack(">BH", wire.CELLS, wire.MAX_CELLS_PER_RECORD + 1) + cell)
        else:
            link.sendCells([cell])

    def status(self):
        return {"plan_rules": len(self.plan.rules), "circuits_attacked": self.attackedCircuits,
                "actions": dict(self.counts), "view_bytes": self.view.size}


def _udpPacket(src, dst):
    payload = b"forged"
    udp = struct.pack(">HHHH", 53, 40000, 8 + len(payload), 0) + payload
    total = 20 + len(udp)
    header = struct.pack(">BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, 17, 0, src, dst)
    return header + udp


class HostileRelayCircuit(RelayCircuit):
    """A L{RelayCircuit} that follows its switch's L{Hostility} (made by L{installHostile})."""

    def onRelay(self, cmd, payload):
        script = self.hostileScript
        if script.held is not None:
            script.held.append((cmd, payload))
            return
        if script.swallowing:
            self.layer.decryptForward(payload)  # read it, pass nothing on
            return
        script.forward += 1
        hostility = self.switch.hostility
        ran = hostility.fire(self, "cell")
        if cmd == Command.RELAY and not script.opened:
            script.opened = True
            ran |= hostility.fire(self, "open")
        if "drop" in ran or "swallow" in ran:
            self.layer.decryptForward(payload)
            return
        if script.held is not None:
            script.held.append((cmd, payload))
            return
        super().onRelay(cmd, payload)
        if "replay" in ran and self.next is not None and not self.closed:
            # What the next hop just got, once more: its tag check must catch it.
            self.next.send(self.nextPrefix + bytes([cmd]) + self.layer.lastForward)

    def hostileRelease(self):
        """The delay is over: pass the held cells on, in order."""
        script = self.hostileScript
        held, script.held = script.held or [], None
        for cmd, payload in held:
            if self.closed:
                return
            try:
                super().onRelay(cmd, payload)
            except (CellError, FlowError) as e:
                self.destroy(DestroyReason.PROTOCOL, str(e))
                return

    def _hostileExtend2(self, cellCommand, hdr, hop):
        ran = self.switch.hostility.fire(self, "extend")
        if ran & _STOPS_EXTEND:
            return
        RelayCircuit._onExtend2(self, cellCommand, hdr, hop)

    ACCEPTS = {**RelayCircuit.ACCEPTS, RelayCommand.EXTEND2: _hostileExtend2}


def installHostile(switch, plan, clock):
    """
    Make every circuit created on C{switch} from now on follow C{plan} (a
    L{Plan} or its text).

    @return: the L{Hostility} (its C{view} and C{status()}).
    """
    if isinstance(plan, str):
        plan = parsePlan(plan)
    hostility = Hostility(switch, plan, clock)
    switch.hostility = hostility
    # The plans act on the original relay crypto's layer (its views, replays and
    # forgeries): a hostile relay offers only that scheme.  CGO's own attack (a
    # tagging guard) is meshvpn/onion/test/test_cgocircuit.py's.
    switch.relaySchemes = (TOR1,)
    created = switch.createReceived

    def createReceived(channel, circId, payload):
        created(channel, circId, payload)
        end = channel.circuits.get(circId)
        if type(end) is RelayCircuit:
            # Same object, hostile behaviour: the channel's map and every
            # identity check keep working.
            end.__class__ = HostileRelayCircuit
            end.layer = _RecordingLayer(end.layer, hostility.view)
            end.hostileScript = _CircuitScript(hostility.eligible())

    switch.createReceived = createReceived
    log.warn("HOSTILE TEST RELAY: this relay attacks the circuits it carries ({n} rules)", n=len(plan.rules))
    return hostility


def _testAddress(host):
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip in ipaddress.ip_network("198.18.0.0/15")


def fromEnvironment(host, environ=os.environ):
    """
    The plan a relay process on C{host} is told to follow, or C{None}.

    C{MESHVPN_TEST_HOSTILE} counts only with C{MESHVPN_TESTING=1} beside it,
    and only on a loopback or benchmark-network (198.18.0.0/15) address:
    tests set both, nobody's relay on the internet can be made hostile by
    one stray variable.

    @raise PlanError: the plan is set for a relay that may not follow it, or
        does not parse (the relay then refuses to start).
    """
    text = environ.get(ENV_PLAN)
    if not text:
        return None
    if environ.get(ENV_TESTING) != "1":
        raise PlanError(f"{ENV_PLAN} is for tests only and needs {ENV_TESTING}=1")
    if not _testAddress(host):
        raise PlanError(f"{ENV_PLAN} only works on a loopback or 198.18.0.0/15 address, not {host!r}")
    return parsePlan(text)
