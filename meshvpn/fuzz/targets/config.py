"""Fuzz target: a node's --config TOML file (config.py loadToml + resolveSettings) against every role's schema."""

import os
import tempfile

from meshvpn.config import loadToml, resolveSettings
from meshvpn.errors import ConfigError
from meshvpn.fuzz.target import FuzzTarget
from meshvpn.roles import client, issuer, relay

_SCHEMAS = [relay.Options.schema, client.Options.schema, issuer.Options.schema]
_DIR = tempfile.mkdtemp(prefix="meshvpn-fuzz-config-")
_PATH = os.path.join(_DIR, "node.toml")


def _run(data):
    if not data:
        return
    with open(_PATH, "wb") as f:
        f.write(data[1:])
    values = loadToml(_PATH)
    resolveSettings(_SCHEMAS[data[0] % len(_SCHEMAS)], {}, values, _PATH)


def _seeds():
    relayToml = (b'data-dir = "/var/lib/meshvpn/relay"\nudp = "0.0.0.0:9000"\nflags = "guard,middle,exit"\n'
                 b'exit-policy = "accept *:80\\naccept *:443\\nreject *:*"\nbootstrap = "198.18.0.1:9000"\n')
    clientToml = (b'data-dir = "/home/u/.local/share/meshvpn/client"\nsocks-listen = "127.0.0.1:9050"\n'
                  b'bootstrap = "198.18.0.1:9000"\ntun = true\ntun-mtu = 1400\n')
    issuerToml = b'udp = "0.0.0.0:0"\nprice = 10000\npacks = "10,100"\nepoch-length = 3600\n'
    return [b"\0" + relayToml, b"\1" + clientToml, b"\2" + issuerToml]


TARGET = FuzzTarget("config", "config.py loadToml + resolveSettings for the relay, client and issuer schemas (--config files)",
                    (ConfigError,), _run, _seeds)
