"""The client's circuits as its user sees them: numbered, aged, and announced when built and closed.

The circuit manager keeps circuits, not names for them; a user who wants to
close "that one" needs a handle that stays the same while it lives.  The
tracker numbers each circuit the first time it sees it (1, 2, ... for the
node's lifetime), remembers when, and publishes C{circuit.built} then, and
C{circuit.closed} the moment the circuit closes.  It is the manager's
L{ICircuitObserver}, so both events go out in the same reactor turn as the
build and the close; the manager's list is still compared on every read, a
net for a circuit listed before the tracker was registered.

Bytes each way and the streams come from the manager's own C{status()}
(what its stream layer counts); a stream's target is dropped unless the
user turned history on.
"""

from zope.interface import implementer

from meshvpn.errors import ControlError
from meshvpn.interfaces import ICircuitObserver

CLOSED_KEPT = 20  # recently closed circuits still listed, so a user sees why one went away


@implementer(ICircuitObserver)
class CircuitTracker:
    """
    @param clock: an C{IReactorTime}.
    @param manager: an L{ICircuitManager} (with C{status()}); the tracker
        registers itself as its observer.
    @param bus: an L{IControlEvents}.
    @param describeHop: C{callable(nodeId bytes) -> dict} (flags, address).
    """

    def __init__(self, clock, manager, bus, describeHop=lambda nodeId: {}, history=lambda: False):
        self.clock = clock
        self.manager = manager
        self.bus = bus
        self.describeHop = describeHop
        self.history = history
        self.nextId = 1
        self._live = {}  # circuit -> {"id", "since", "path", "bytes_sent", "bytes_received"}
        self.closed = []  # recent closed entries, newest last
        manager.addObserver(self)

    # -- ICircuitObserver

    def circuitBuilt(self, circuit):
        self.refresh()

    def circuitClosed(self, circuit, reason):
        self._closed(reason, circuit)

    def refresh(self):
        """Number the circuits the manager has that we have not seen; @return: the live entries, by circuit."""
        statuses = self._statuses()
        for circuit, status in statuses:
            entry = self._live.get(circuit)
            if entry is None:
                entry = self._live[circuit] = {
                    "id": self.nextId, "since": self.clock.seconds(), "path": _pathOf(circuit),
                    "bytes_sent": 0, "bytes_received": 0,
                }
                self.nextId += 1
                self.bus.publish("circuit.built", self._view(circuit, entry, status))
                circuit.whenClosed().addBoth(self._closed, circuit)
            entry["bytes_sent"] = status.get("bytes_sent", 0)
            entry["bytes_received"] = status.get("bytes_received", 0)
        return statuses

    def _statuses(self):
        """C{[(circuit, status dict)]}: the manager lists both in the same order; paths confirm it."""
        circuits = list(self.manager.circuits())
        entries = self.manager.status().get("circuits", [])
        out = []
        for i, circuit in enumerate(circuits):
            status = entries[i] if i < len(entries) else {}
            if status.get("path") != [h.hex() for h in _pathOf(circuit)]:
                status = {}  # the lists moved between the two calls: counts unknown this once
            out.append((circuit, status))
        return out

    def _closed(self, reason, circuit):
        entry = self._live.pop(circuit, None)
        if entry is None:
            return
        view = self._view(circuit, entry, {}, state="closed")
        view["reason"] = _reasonText(reason)
        self.closed.append(view)
        del self.closed[:-CLOSED_KEPT]
        self.bus.publish("circuit.closed", view)

    def _view(self, circuit, entry, status, state=None):
        if state is None:
            state = "retired" if status.get("retired") else "spare" if status.get("spare") else "in-use"
        hops = []
        postQuantum = status.get("post_quantum_hops") or entry.get("post_quantum_hops") or ()
        entry["post_quantum_hops"] = postQuantum
        crypto = status.get("relay_crypto") or entry.get("relay_crypto") or ()  # per hop: "cgo" or "tor1"
        for i, nodeId in enumerate(entry["path"]):
            hop = {"id": nodeId.hex(), "post_quantum": bool(postQuantum[i]) if i < len(postQuantum) else False,
                   "relay_crypto": crypto[i] if i < len(crypto) else None}
            hop.update(self.describeHop(nodeId))
            hops.append(hop)
        view = {
            "id": entry["id"],
            "state": state,
            "hops": hops,
            "age_s": round(self.clock.seconds() - entry["since"], 1),
            "bytes_sent": status.get("bytes_sent", entry["bytes_sent"]),
            "bytes_received": status.get("bytes_received", entry["bytes_received"]),
            "streams": len(status.get("streams") or ()),
        }
        return view

    def circuits(self):
        """Every live circuit, oldest first, then the recently closed ones."""
        views = [self._view(c, self._live[c], s) for c, s in self.refresh()]
        return sorted(views, key=lambda v: v["id"]) + list(self.closed)

    def streams(self):
        """Open streams per circuit, with targets (call only when history is on)."""
        out = []
        for circuit, status in self.refresh():
            for s in status.get("streams") or ():
                out.append({"circuit": self._live[circuit]["id"], **s})
        return out

    def find(self, circuitId):
        """@return: the live circuit numbered C{circuitId}. @raise ControlError: none (404)."""
        self.refresh()
        for circuit, entry in self._live.items():
            if entry["id"] == circuitId:
                return circuit
        raise ControlError(f"no open circuit {circuitId}", code=404)

    def through(self, nodeId):
        """@return: the live circuits with C{nodeId} on their path."""
        self.refresh()
        return [c for c, e in self._live.items() if nodeId in e["path"]]

    def counts(self):
        """@return: C{{state: number}} of live circuits, plus C{building}."""
        counts = {"spare": 0, "in-use": 0, "retired": 0, "post-quantum": 0}
        for circuit, status in self.refresh():
            counts["retired" if status.get("retired") else "spare" if status.get("spare") else "in-use"] += 1
            hops = status.get("post_quantum_hops")
            if hops and all(hops):
                counts["post-quantum"] += 1
        counts["building"] = self.manager.status().get("building", 0)
        return counts


def _pathOf(circuit):
    return [h.nodeId for h in getattr(circuit, "path", None) or ()]


def _reasonText(reason):
    message = getattr(reason, "getErrorMessage", None)
    return message() if message is not None else str(reason)
