"""The client edge: where applications' traffic enters MeshVPN (SOCKS5, the VPN's TUN, mesh links to peers)."""
