"""What a running node shows its user and what it lets the user do: the control API's model.

One object answers every read of the control API, the dashboard, the CLI
and the metrics, from the services the role hands it (DHT, relay finder,
links, circuits, onion switch, VPN client, exit) through their interfaces
and C{status()} dicts; a service the role does not have is simply absent
from the answer.  Actions go to the same services (new identity, closing a
circuit, pinning a relay, VPN up and down, run-time settings) and each is
published as an event.

Privacy: no key, no payload, and no stream target unless the user turned
history on (C{history}); relays are public (their descriptors are in the
DHT), the circuits' paths are the user's own and never leave loopback.
"""

import os
import time

import attrs
from twisted.internet import defer
from zope.interface import implementer

from meshvpn import __version__
from meshvpn.control.bandwidth import BandwidthSampler
from meshvpn.control.circuitview import CircuitTracker
from meshvpn.control.events import LogTail
from meshvpn.control.relayweights import measuredEntries, weightsSummary
from meshvpn.errors import ControlError
from meshvpn.interfaces import IControlModel


@attrs.define
class Parts:
    """The services the control plane reads and steers; the role fills in the ones it has."""

    dht: object = None  # DHTService: status()
    finder: object = None  # RelayFinder: usable(), relays
    links: object = None  # ILinkManager: status(), links()
    circuits: object = None  # ICircuitManager + ICircuitSteering
    onion: object = None  # the onion service (its switch's status()) on relays
    tun: object = None  # the VPN client (TunClient), a service
    exit: object = None  # ExitParts: status()
    nat: object = None  # ConnectivityCheck
    steering: object = None  # RelaySteering
    runtime: object = None  # RuntimeSettings
    weights: object = None  # IRelayWeights (a client): what the traffic reports measure of each relay


@implementer(IControlModel)
class NodeModel:
    """
    @param theNode: the L{Node} (identity, role, addresses(), reactor).
    @param bus: the L{EventBus}.
    @param parts: the node's services (L{Parts}), each optional.
    """

    def __init__(self, theNode, bus, parts, history=False):
        self.theNode = theNode
        self.bus = bus
        self.parts = parts
        self.history = history
        self.clock = theNode.reactor
        self.startedAt = self.clock.seconds()
        self.wallStarted = time.time()
        self.logTail = LogTail(bus)
        self.bandwidthSampler = BandwidthSampler(self.clock, parts.links)
        self.tracker = None
        if parts.circuits is not None:
            self.tracker = CircuitTracker(self.clock, parts.circuits, bus, self.describeHop, lambda: self.history)
        self._vpnState = None

    # -- ticks (the control service calls this every second)

    def tick(self):
        sample = self.bandwidthSampler.sample()
        self.bus.publish("bandwidth", sample)
        if self.tracker is not None:
            self.tracker.refresh()
        vpn = self.vpn()
        state = (vpn.get("state"), vpn.get("detail"))
        if vpn.get("configured") and state != self._vpnState:
            self._vpnState = state
            self.bus.publish("vpn", vpn)

    # -- reads

    def node(self):
        info = {
            "node_id": self.theNode.identity.nodeIdHex,
            "role": self.theNode.role,
            "version": __version__,
            "pid": os.getpid(),
            "uptime_s": round(self.clock.seconds() - self.startedAt, 1),
            "started": self.wallStarted,
        }
        try:
            info["addresses"] = self.theNode.addresses()
        except Exception:
            info["addresses"] = {}  # not bound yet
        flags = getattr(self.node, "settings", {}).get("flags")
        if flags:
            info["flags"] = sorted(f.strip() for f in str(flags).split(",") if f.strip())
        return info

    def summary(self):
        out = {"node": self.node(), "nat": self.natStatus(), "dht": self.dhtStatus(), "links": self.linkCounts(),
               "vpn": self.vpn(), "bandwidth": self.bandwidthNow(), "history": self.history}
        if self.tracker is not None:
            out["circuits"] = self.tracker.counts()
        if self.parts.onion is not None:
            out["relay"] = self._switchStatus()
        if self.parts.exit is not None:
            out["exit"] = self.parts.exit.status()
        if self.parts.steering is not None:
            out["steering"] = self.parts.steering.status()
        return out

    def natStatus(self):
        if self.parts.nat is None:
            return {"type": "unknown", "detail": "no NAT check on this node"}
        return self.parts.nat.status()

    def dhtStatus(self):
        out = {}
        if self.parts.dht is not None:
            status = self.parts.dht.status()
            out.update(contacts=status.get("contacts", 0), records=status.get("records", 0))
        if self.parts.finder is not None:
            relays = self.parts.finder.usable()
            out["relays_known"] = len(relays)
            roles = {}
            for d in relays:
                for flag in d.flags:
                    roles[flag] = roles.get(flag, 0) + 1
            out["relays_by_role"] = dict(sorted(roles.items()))
        return out

    def _switchStatus(self):
        switch = getattr(self.parts.onion, "switch", self.parts.onion)
        return switch.status()

    def linkCounts(self):
        if self.parts.links is None:
            return {}
        status = self.parts.links.status()
        return {"open": status.get("links_open", 0), "handshaking": status.get("links_handshaking", 0),
                "opened_out": status.get("opened_out", 0), "opened_in": status.get("opened_in", 0),
                "failed": status.get("failed", 0)}

    def links(self):
        out = {"counts": self.linkCounts(), "links": []}
        if self.parts.links is None:
            return out
        for link in self.parts.links.links():
            peer = getattr(link, "peerId", None)
            state = getattr(link, "state", None)
            out["links"].append({
                "peer": peer.hex() if isinstance(peer, bytes) else None,
                "state": getattr(state, "name", str(state)).lower(),
                "outgoing": bool(getattr(link, "isInitiator", False)),
                "transport": getattr(link, "transportName", None),
                "cells_in": getattr(link, "cellsIn", 0),
                "cells_out": getattr(link, "cellsOut", 0),
            })
        return out

    def describeHop(self, nodeId):
        d = self.parts.finder.relays.get(nodeId) if self.parts.finder is not None else None
        if d is None:
            return {"known": False}
        links = d.linkAddresses
        return {"known": True, "flags": sorted(d.flags), "address": links[0][1] if links else None}

    def circuits(self):
        if self.tracker is None:
            return []
        return self.tracker.circuits()

    def relays(self):
        if self.parts.finder is None:
            return []
        now = self.clock.seconds()
        out = []
        usable = sorted(self.parts.finder.usable(), key=lambda d: d.nodeId)
        measured = measuredEntries(self.parts.weights, [d.nodeId for d in usable])
        for d in usable:
            links = d.linkAddresses
            entry = {
                "id": d.nodeId.hex(),
                "flags": sorted(d.flags),
                "address": links[0][1] if links else None,
                "bandwidth": d.bandwidth,
                "exit_policy": d.exitPolicy if "exit" in d.flags else None,
                "family": [f.hex() for f in d.family],
                "published_ago_s": round(now - d.published, 1),
                "expires_in_s": round(d.expires - now, 1),
                "measured": measured[d.nodeId],
            }
            if self.parts.steering is not None:
                entry.update(self.parts.steering.markOf(entry["id"]))
            out.append(entry)
        return out

    def weightsSummary(self):
        return weightsSummary(self.parts.weights)

    def streams(self):
        if not self.history:
            return {"history": False, "streams": []}
        return {"history": True, "streams": self.tracker.streams() if self.tracker is not None else []}

    def vpn(self):
        if self.parts.tun is None:
            return {"configured": False, "state": "off", "detail": "started without --tun (VPN mode needs root)"}
        status = self.parts.tun.status() if self.parts.tun.running else {}
        running = bool(self.parts.tun.running)
        state = status.get("state", "stopped") if running else "stopped"
        captured = running and status.get("routes") is not None
        return {
            "configured": True,
            "running": running,
            "state": state,
            "detail": status.get("detail", "turned off" if not running else ""),
            "up_after_s": status.get("up_after_s"),
            # The kill switch holds from capture to restore: while running and capturing,
            # whether or not a circuit is up.
            "kill_switch": "on" if captured else "off",
            "address": status.get("address") or getattr(self.parts.tun, "address", None),
            "to_circuit_packets": status.get("to_circuit", 0),
            "from_circuit_packets": status.get("from_circuit", 0),
            "dropped_no_circuit": status.get("no_circuit_dropped", 0),
        }

    def bandwidthNow(self):
        samples = self.bandwidthSampler.recent(1)
        last = samples[-1] if samples else {"up": 0, "down": 0}
        return {"up": last["up"], "down": last["down"], **self.bandwidthSampler.totals()}

    def bandwidth(self, seconds=600):
        return self.bandwidthSampler.recent(seconds)

    def logs(self, level="info", limit=200):
        try:
            return self.logTail.tail(level, limit)
        except ValueError as e:
            raise ControlError(str(e), code=400) from None

    def settings(self):
        return self.parts.runtime.list() if self.parts.runtime is not None else []

    # -- actions

    def _needCircuits(self):
        if self.parts.circuits is None or self.tracker is None:
            raise ControlError(f"a {self.theNode.role} builds no circuits of its own", code=409)

    def newIdentity(self):
        self._needCircuits()
        count = self.parts.circuits.newIdentity()
        result = {"retired": count}
        self.bus.publish("newnym", result)
        return result

    def closeCircuit(self, circuitId):
        self._needCircuits()
        circuit = self.tracker.find(circuitId)
        circuit.close("finished")
        return {"closed": circuitId}

    def findRelay(self, prefix):
        """A relay id (hex, 8 digits or more) -> the full id of the one known relay it starts."""
        prefix = (prefix or "").lower()
        if len(prefix) < 8 or any(c not in "0123456789abcdef" for c in prefix):
            raise ControlError("a relay id is 8 to 64 hex digits", code=400)
        known = [r["id"] for r in self.relays()]
        if self.parts.steering is not None:
            known += [h for h in self.parts.steering.status()["excluded"] if h not in known]
        matches = [h for h in known if h.startswith(prefix)]
        if not matches:
            raise ControlError(f"no known relay {prefix}", code=404)
        if len(matches) > 1:
            raise ControlError(f"relay id {prefix} is ambiguous ({len(matches)} relays)", code=400)
        return matches[0]

    def steerRelay(self, relayId, action, position=None):
        self._needCircuits()
        if self.parts.steering is None:
            raise ControlError("this node has no relay steering", code=409)
        nodeHex = self.findRelay(relayId)
        closed = 0
        if action == "pin":
            if position is None:
                flags = next((r["flags"] for r in self.relays() if r["id"] == nodeHex), [])
                position = "exit" if "exit" in flags else "guard" if "guard" in flags else "middle"
            self.parts.steering.pin(nodeHex, position)
        elif action == "exclude":
            self.parts.steering.exclude(nodeHex)
            # the user wants it gone: close the circuits through it (each is rebuilt elsewhere)
            for circuit in self.tracker.through(bytes.fromhex(nodeHex)):
                circuit.close("finished")
                closed += 1
        elif action == "clear":
            self.parts.steering.clear(nodeHex)
        else:
            raise ControlError("action must be pin, exclude or clear", code=400)
        result = {"relay": nodeHex, "action": action, **self.parts.steering.markOf(nodeHex), "circuits_closed": closed}
        self.bus.publish("relay.steering", result)
        return result

    def setVpn(self, up):
        if self.parts.tun is None:
            raise ControlError("this node was started without --tun: VPN mode needs root and --tun", code=409)
        if not isinstance(up, bool):
            raise ControlError("'up' must be true or false", code=400)
        if up == bool(self.parts.tun.running):
            return defer.succeed(self.vpn())
        try:
            d = defer.maybeDeferred(self.parts.tun.startService if up else self.parts.tun.stopService)
        except Exception as e:
            return defer.fail(ControlError(f"could not turn the VPN {'on' if up else 'off'}: {e}"))

        def done(_):
            vpn = self.vpn()
            self.bus.publish("vpn", vpn)
            return vpn

        def failed(f):
            raise ControlError(f"could not turn the VPN {'on' if up else 'off'}: {f.getErrorMessage()}")

        return d.addCallbacks(done, failed)

    def setSetting(self, key, value):
        if self.parts.runtime is None:
            raise ControlError("no setting of this node changes at run time", code=409)
        return self.parts.runtime.set(key, value)

    def checkNat(self):
        if self.parts.nat is None:
            raise ControlError("no NAT check on this node", code=409)
        return self.parts.nat.check()
