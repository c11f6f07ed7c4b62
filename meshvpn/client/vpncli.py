"""The VPN's command-line pieces: ``meshvpn vpn-restore``.

``vpn-restore`` is for after a crash of ``meshvpn-client --tun`` (see
doc/vpn.md): the TUN device and its routes died with the process, but the
kill-switch table (failing closed) and the rewritten resolv.conf are still
there, and so are the host routes to relays.  It removes every
C{meshvpn-client-*} nftables table, writes the saved resolv.conf back and
deletes the host routes the client marked as its own (protocol 196).
"""

import json
import re

from meshvpn.config import defaultDataDir


def addTunCommands(sub):
    p = sub.add_parser("vpn-restore", help="undo a crashed 'meshvpn-client --tun': kill switch and resolv.conf",
                       description=__doc__.split("\n\n")[1])
    p.add_argument("--data-dir", default=defaultDataDir("client"), help="the client's data directory")
    p.add_argument("--resolv-conf", default="/etc/resolv.conf", help="the resolver file the client rewrote")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_restoreCommand)


def clientTables(listing):
    """The C{meshvpn-client-*} inet tables named in C{nft list tables} output."""
    return re.findall(r"^table inet (meshvpn-client-[0-9a-f]+)$", listing, re.M)


def _restoreCommand(args):
    done = restoreAll(args.data_dir, args.resolv_conf)
    if args.json:
        print(json.dumps({"restored": done}))
    else:
        for line in done or ["nothing to restore"]:
            print(line)
    return 0


def restoreAll(dataDir, resolvConf):
    """
    Undo everything a client in VPN mode leaves behind when it dies
    (also what ``meshvpn down`` runs).  @return: a list of what was done.
    """
    import subprocess

    from meshvpn.client.capture import restoreSystem

    try:
        listing = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    except FileNotFoundError:
        listing = ""
    done = []
    tables = clientTables(listing)
    for table in tables:
        done += restoreSystem(table, dataDir, resolvConf)
    if not tables:
        done += restoreSystem("meshvpn-client-none", dataDir, resolvConf)[1:]
    try:
        from pyroute2 import IPRoute

        from meshvpn.client.capture import deleteHostRoutes

        with IPRoute() as ipr:
            n = deleteHostRoutes(ipr)
        if n:
            done.append(f"{n} host routes (proto 196) deleted")
    except Exception as e:
        done.append(f"host routes: {e}")
    return done
