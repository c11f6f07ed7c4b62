"""The control plane's settings, the same for every role (appended to each role's schema)."""

import ipaddress

from meshvpn.config import Setting, parseHostPort


def parseLoopbackHostPort(raw):
    """C{HOST:PORT} on a loopback address: the control API never listens anywhere else."""
    host, port = parseHostPort(raw)
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError("HOST:PORT on a loopback address (127.0.0.0/8 or [::1]), e.g. 127.0.0.1:7151")
    return host, port


def parseOptionalHostPort(raw):
    if raw in (None, "", "off", "none"):
        return None
    return parseHostPort(raw)


def controlSettings(defaultHost="127.0.0.1"):
    return [
        Setting("control-listen", parseLoopbackHostPort, (defaultHost, 0),
                "Loopback HOST:PORT of the control API and dashboard (port 0: any free port, "
                "announced in node.json; see `meshvpn dashboard`)."),
        Setting("metrics-listen", parseOptionalHostPort, None,
                "HOST:PORT to serve Prometheus metrics on at /metrics (no authentication); off when unset."),
    ]
