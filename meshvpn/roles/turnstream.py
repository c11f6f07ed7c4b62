"""The client's ``--turn-tcp``: for a host whose UDP is blocked, the node's datagram socket is a TURN allocation.

A client behind a firewall that drops all UDP cannot query the DHT or keep
a datagram link.  With ``--turn-tcp NODEID@HOST:PORT`` (a relay started
with ``--turn-tcp``; repeatable, tried in turn) the node binds no UDP
socket: its multiplexer runs on an allocation at that relay reached over
TCP, reopened when the stream drops (L{meshvpn.nat.turn_stream_socket}).
"""

from meshvpn.config import Setting


def parseTurnTcpRelays(raw):
    """One C{NODEID@HOST:PORT}, a TOML list of them, or several on separate lines."""
    from meshvpn.client.meshlink import parseMeshRelay

    if raw in (None, "", []):
        return []
    if isinstance(raw, str):
        raw = [line for line in raw.splitlines() if line.strip()]
    if not isinstance(raw, list):
        raise ValueError("expected NODEID@HOST:PORT (a list of them in TOML)")
    return [parseMeshRelay(line.strip() if isinstance(line, str) else line) for line in raw]


def turnTcpSetting():
    return Setting(
        "turn-tcp", parseTurnTcpRelays, [],
        "NODEID@HOST:PORT of a relay's TURN-over-TCP port (relay --turn-tcp), for a host whose UDP is blocked: "
        "the node's datagram socket becomes a TURN allocation there, reopened with backoff if the stream drops "
        "(repeatable: tried in turn).",
    )


def useTurnStreamSocket(node, relays):
    """
    Replace the node's UDP socket service by a L{TurnStreamSocketService}
    on C{relays} (before the node starts).  @return: that service.
    """
    from meshvpn.link.tlsctx import sharedLinkTLS
    from meshvpn.nat.turn_stream_client import streamOpener
    from meshvpn.nat.turn_stream_socket import TurnStreamSocketService

    if node.udp6Service is not None:
        raise SystemExit(f"meshvpn-{node.role}: config error: --turn-tcp replaces the UDP sockets; drop --udp6")
    node.udpService.disownServiceParent()
    socket = TurnStreamSocketService(node.reactor, node.udp, relays, streamOpener(node.reactor, node.identity, sharedLinkTLS()))
    socket.setName("udp")
    socket.setServiceParent(node)
    node.udpService = socket
    node.status.addSource("turn_tcp", socket)
    return socket
