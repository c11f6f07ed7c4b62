"""MeshVPN: a decentralized, censorship-resistant VPN on Twisted.

Each subpackage is one plane of the data path, from the ground up: dht and
nat (discovery, connectivity), link, onion, circuits, streams and tun, the
client and exit edges, control, roles, tools.  A plane imports only the
planes below it (meshvpn/test/test_layers.py keeps it so);
doc/architecture.md explains how a request crosses them.
"""

__version__ = "0.1.0"
