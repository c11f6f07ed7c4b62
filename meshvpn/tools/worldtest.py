"""The whole world: one made-up internet, two clients behind different NATs, one in SOCKS and one in VPN mode.

Built on L{meshvpn.tools.tunworld.TunWorld.buildDirectory} (bootstrap node,
guards and middles, a packet exit, web and DNS servers on 198.18.0.0/15, a
VPN client's namespace behind a port-restricted NAT box), it adds:

- a third guard (198.18.7.2:9001, beside the others, so it reaches the
  same middles), so that both clients' guards can be killed and one is
  left;
- a symmetric NAT box (WAN 198.18.6.2, a new port for every destination)
  with a SOCKS client behind it (198.19.6.2), which resolves names at the
  exit (SOCKS5 with host names).

Both clients know only the bootstrap node: every relay comes from the DHT.
"""

import os

from meshvpn.tools.nattestbed import natRules
from meshvpn.tools.tunworld import TunWorld, _peerOf

GUARD3 = ("198.18.7.2", 9001)
GUARD3_DHT = ("198.18.7.2", 9000)
SOCKS = ("127.0.0.1", 1080)


class World(TunWorld):
    def build(self):
        self.buildDirectory()
        n = self.netns
        # guard3: another address of the relays' namespace
        n.exec(self.inet, "ip", "addr", "add", "198.18.7.1/24", "dev", _peerOf(n, self.inet, "198.18.2.1"))
        n.exec(self.ns["r"], "ip", "addr", "add", "198.18.7.2/24", "dev", self.uplink["r"])
        self.endpoints["guard3"] = (GUARD3, GUARD3_DHT)
        self._node("guard3", "r", "relay", ["--udp", f"{GUARD3_DHT[0]}:{GUARD3_DHT[1]}",
                                            "--listen", f"tcp:{GUARD3[1]}:interface={GUARD3[0]}",
                                            "--flags", "guard,middle", "--bootstrap", "198.18.1.2:9000"])
        self.nodeIds["guard3"] = self.waitNode("guard3")["node_id"]
        self.waitLog("guard3", "published relay descriptor")
        # the SOCKS client behind a symmetric NAT
        box = self.ns["nat2"] = n.add("nat2")
        _inetSide, self.uplink["nat2"] = n.veth(self.inet, "198.18.6.1/24", box, "198.18.6.2/24")
        n.exec(box, "ip", "route", "add", "default", "via", "198.18.6.1")
        cl2 = self.ns["cl2"] = n.add("cl2")
        for key in ("all", "default"):
            n.exec(cl2, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1")
        lan, self.uplink["cl2"] = n.veth(box, "198.19.6.1/24", cl2, "198.19.6.2/24")
        n.exec(cl2, "ip", "route", "add", "default", "via", "198.19.6.1")
        n.exec(box, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        n.exec(box, "nft", "-f", "-", input=natRules("symmetric", self.uplink["nat2"], lan, "198.19.6.2",
                                                      "198.18.6.2").encode())
        n.exec(cl2, "ip", "link", "set", "lo", "up")
        return self

    def startSocksClient(self):
        self._node("socks-client", "cl2", "client", ["--bootstrap", "198.18.1.2:9000",
                                                     "--socks-listen", f"{SOCKS[0]}:{SOCKS[1]}"])
        return self.waitNode("socks-client", 40)

    def inSocksClient(self, *argv, check=True, timeout=30):
        from meshvpn.tools.netns import run

        return run("ip", "netns", "exec", self.ns["cl2"], *argv, check=check, timeout=timeout)

    def guardOf(self, name):
        """The node name of the guard of client C{name}'s circuit in use (from its status file), or C{None}."""
        from meshvpn.control.status import readStatus

        status = readStatus(self.dataDirs[name]) or {}
        byId = {v: k for k, v in self.nodeIds.items()}
        tun = status.get("tun") or {}
        if tun.get("circuit"):
            return byId.get(tun["circuit"][0])
        circuits = (status.get("circuits") or {}).get("circuits") or []
        used = [c for c in circuits if not c.get("spare")] or circuits
        return byId.get(used[0]["path"][0]) if used else None

    def dataDir(self, name):
        return os.path.join(self.workdir, name)
