"""MeshVPN: a decentralized, censorship-resistant VPN on Twisted.

See doc/architecture.md and ../shared/DESIGN.md for the shape of the code.
"""

__version__ = "0.1.0"
