"""The user's pinned and excluded relays: a filter on the directory before every path is chosen.

Tor's ExcludeNodes, EntryNodes, MiddleNodes and ExitNodes are the anchor,
strict (StrictNodes 1): an excluded relay is never on a new path; a relay
pinned at a position (guard, middle or exit) is the only one used there, so
if it leaves the directory no circuit can be built until the pin is cleared,
and the build error says so.  The choice is kept in C{steering.json} in
the data dir (0600, atomic: the user's choice survives a restart, as a
torrc line would) and applied through the circuit manager's
C{relayFilter}, so path selection itself stays as it is.
"""

import json
import os

import attrs

from meshvpn.errors import ControlError
from meshvpn.secretfile import writeSecretFile

STEERING_FILE = "steering.json"
POSITIONS = ("guard", "middle", "exit")


class RelaySteering:
    """
    @param path: where the choice is kept (C{None}: memory only).
    """

    def __init__(self, path=None):
        self.path = path
        self.pinned = {}  # position -> node id hex
        self.excluded = set()  # node id hex
        self._load()

    def _load(self):
        if self.path is None:
            return
        try:
            with open(self.path) as f:
                data = json.load(f)
            pinned = {p: h for p, h in data.get("pinned", {}).items() if p in POSITIONS and _isId(h)}
            excluded = {h for h in data.get("excluded", []) if _isId(h)}
        except (FileNotFoundError, ValueError, AttributeError, TypeError):
            return  # a missing or damaged file only loses the user's pins
        self.pinned, self.excluded = pinned, excluded

    def _save(self):
        if self.path is not None:
            body = {"pinned": self.pinned, "excluded": sorted(self.excluded)}
            writeSecretFile(self.path, json.dumps(body, indent=1).encode())

    def __call__(self, relays):
        """The circuit manager's relay filter: L{RelayInfo}s in, the ones a path may use out."""
        out = []
        for r in relays:
            nodeHex = r.nodeId.hex()
            if nodeHex in self.excluded:
                continue
            # a pinned position belongs to its relay alone
            taken = {p for p, h in self.pinned.items() if h != nodeHex}
            out.append(attrs.evolve(r, roles=r.roles - taken) if r.roles & taken else r)
        return out

    def pin(self, nodeHex, position):
        if position not in POSITIONS:
            raise ControlError(f"position must be one of {', '.join(POSITIONS)}", code=400)
        self.excluded.discard(nodeHex)
        self.pinned[position] = nodeHex
        self._save()

    def exclude(self, nodeHex):
        self.pinned = {p: h for p, h in self.pinned.items() if h != nodeHex}
        self.excluded.add(nodeHex)
        self._save()

    def clear(self, nodeHex):
        self.pinned = {p: h for p, h in self.pinned.items() if h != nodeHex}
        self.excluded.discard(nodeHex)
        self._save()

    def markOf(self, nodeHex):
        """C{{"pinned": [positions], "excluded": bool}} for one relay."""
        return {"pinned": sorted(p for p, h in self.pinned.items() if h == nodeHex), "excluded": nodeHex in self.excluded}

    def status(self):
        return {"pinned": dict(self.pinned), "excluded": sorted(self.excluded)}


def _isId(value):
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def steeringPath(dataDir):
    return os.path.join(dataDir, STEERING_FILE)
