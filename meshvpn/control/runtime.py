"""Settings a running node can change, checked exactly as the config file checks them.

A setting changes at run time only where the service that uses it reads it
afresh (the circuit manager's spare count, the relay finder's interval);
the role lists those when it builds the control plane, each with how to
read and apply it.  A value goes through the same L{Setting} parser and
the same L{resolveSettings} as a value in the TOML file, so a bad one is
refused with the same one line (naming the key and what was expected) and
nothing changes.  Everything else in the schema is refused by name: it
takes a restart.
"""

import attrs

from meshvpn.config import parseBool, resolveSettings
from meshvpn.errors import ConfigError
from meshvpn.hostport import formatHostPort

SOURCE = "control request"


@attrs.frozen
class Tunable:
    """How a running node reads and applies one setting."""

    name: str
    get: object  # callable() -> current parsed value
    apply: object  # callable(parsed value)


class RuntimeSettings:
    """
    @param schema: the role's L{Setting}s (its C{Options.schema}).
    @param tunables: L{Tunable}s for the settings that can change now.
    @param settings: the node's parsed settings dict, kept in step.
    @param bus: an L{IControlEvents} told of every change.
    """

    def __init__(self, schema, tunables, settings, bus=None):
        self.schema = {s.name: s for s in schema}
        self.tunables = {t.name: t for t in tunables if t.name in self.schema}
        self.settings = settings
        self.bus = bus

    def list(self):
        out = []
        for name, t in sorted(self.tunables.items()):
            s = self.schema[name]
            out.append({"key": name, "value": _json(t.get()), "default": _json(s.default), "help": s.help,
                        "type": _typeOf(s)})
        return out

    def set(self, key, raw):
        """
        @return: C{{"key", "value"}} as now in force.
        @raise ConfigError: unknown key, a setting that needs a restart, or a
            bad value: one line, nothing changed.
        """
        if not isinstance(key, str) or key not in self.schema:
            known = ", ".join(sorted(self.tunables))
            raise ConfigError(f"unknown key {key!r} in {SOURCE}; keys that change at run time: {known}")
        if key not in self.tunables:
            raise ConfigError(f"key {key!r} cannot change while the node runs: set it in --config and restart")
        setting = self.schema[key]
        value = resolveSettings([setting], {}, {key: raw}, SOURCE)[setting.attr]
        self.tunables[key].apply(value)
        self.settings[setting.attr] = value
        change = {"key": key, "value": _json(value)}
        if self.bus is not None:
            self.bus.publish("settings.changed", change)
        return change


def _json(value):
    if isinstance(value, tuple):
        return formatHostPort(*value)
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return str(value)


def _typeOf(setting):
    if setting.parse is parseBool:
        return "bool"
    if isinstance(setting.default, bool):
        return "bool"
    if isinstance(setting.default, (int, float)):
        return "number"
    return "text"
