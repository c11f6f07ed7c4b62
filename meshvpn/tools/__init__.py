"""What runs MeshVPN rather than being it: the local testnet, real processes, namespaces, benchmarks, fixtures.

Shipped so that ``meshvpn testnet`` and ``meshvpn bench`` work from an
installed package, and so that tests and benchmarks build their networks
the same way; no node imports anything from here.
"""
