"""IP packets in the kernel's terms: the TUN device and the IPv4 parsing both VPN ends share.

The client's VPN mode and the exit's packet exit move the same packets
between a TUN device and circuits, so the device, the packet codec and the
privilege check live here, below both edges.
"""
