"""The mesh world: two-host pairs behind NAT boxes of the NAT testbed, each a real VPN client.

Shared by the mesh test and ``meshvpn bench tun`` (mesh figures): a NAT
relay (signalling + TURN) on the made-up internet and one ``twistd
meshvpn-client --tun --tun-capture false`` per host, each knowing its pair.
"""

import os
import subprocess
import time

from meshvpn.client.mesh import meshAddress
from meshvpn.hostport import formatHostPort
from meshvpn.identity import NodeIdentity


def meshWorld(testCase, pairs, workdir):
    """
    The NAT testbed with a NAT relay and one ``twistd meshvpn-client --tun
    --tun-capture false --mesh-relay ...`` per host, each knowing its pair's
    node id.  @return: C{(testbed, {name: info}, names in pair order)}.
    """
    from meshvpn.tools import natmatrix as matrix
    from meshvpn.tools.processes import twistdPath
    from meshvpn.tools import nattestbed

    tb = nattestbed.build(testCase, natTypes=(), meshvpnStun=False)
    relayNs = tb.addPublic("rly", [matrix.RELAY_IP])
    relayId = matrix.startRelay(tb, relayNs)
    ids, names = {}, []
    for i, (a, b, _expected) in enumerate(pairs):
        for t, side in ((a, 1), (b, 2)):
            name = f"{t}-{i}{side}"
            host = tb.addHost(name, t)
            if host.box is not None:
                tb.netns.exec(host.box, "nft", "-f", "-", input=matrix._INPUT_FIREWALL.format(wan=matrix._wanOf(tb, host)).encode())
            ids[name] = NodeIdentity.loadOrCreate(os.path.join(workdir, name)).nodeId
            names.append(name)
    infos = {}
    for i, _pair in enumerate(pairs):
        a, b = names[2 * i], names[2 * i + 1]
        for me, peer in ((a, b), (b, a)):
            dataDir = os.path.join(workdir, me)
            argv = [twistdPath(), "-n", "--pidfile=", "--logfile", os.path.join(dataDir, "twistd.log"), "meshvpn-client",
                    "--data-dir", dataDir, "--tun", "--tun-capture", "false",
                    "--mesh-relay", f"{relayId}@{formatHostPort(matrix.RELAY_IP, matrix.RELAY_PORT)}",
                    "--mesh-turn", formatHostPort(matrix.RELAY_IP, matrix.TURN_PORT), "--mesh-peers", ids[peer].hex()]
            proc = tb.popen(me, argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
            infos[me] = {"dataDir": dataDir, "proc": proc, "peer": peer, "address": meshAddress(ids[me]),
                         "log": os.path.join(dataDir, "twistd.log")}
    deadline = time.monotonic() + 40
    for name, info in infos.items():
        while "mesh: registered" not in _read(info["log"]):
            if info["proc"].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mesh client {name} did not register: {_read(info['log'])[-2000:]}")
            time.sleep(0.05)
    return tb, infos, names


def _read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def meshPeers(info):
    """The mesh peers in the client's status file (rewritten every second)."""
    from meshvpn.control.status import readStatus

    return ((readStatus(info["dataDir"]) or {}).get("tun") or {}).get("mesh", {}).get("peers", {})
