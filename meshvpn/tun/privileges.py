"""Whether this process may run a TUN device with nftables: asked before a VPN client or packet exit starts.

Both edges need the same privileges; saying what is missing in one line
beats a traceback from deep inside netlink.
"""


def privilegeProblem():
    """@return: why this process cannot run a TUN with nftables, or C{None}."""
    import os
    import shutil

    if not os.access("/dev/net/tun", os.R_OK | os.W_OK):
        return "needs /dev/net/tun and root (CAP_NET_ADMIN)"
    if os.geteuid() != 0:
        return "needs root (CAP_NET_ADMIN) for the TUN device and nftables"
    if shutil.which("nft") is None:
        return "needs nftables (the nft command)"
    return None
