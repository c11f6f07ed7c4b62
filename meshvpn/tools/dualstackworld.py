"""A dual-stack made-up internet with an IPv6-only client, for the tests of DHT, links and the VPN over IPv6.

Topology (IPv4 from 198.18.0.0/15, IPv6 from RFC 5180's 2001:2::/48, as in
L{meshvpn.tools.tunworld})::

    cl  IPv6-only client 2001:2:1::2 (no IPv4 address, no IPv4 route) --+
    g   guard  198.18.2.2 + 2001:2:2::2 (DHT and links on both),        +-- inet (router; web
        middle DHT on both, links on 127.30.0.1 only ------------------+   198.18.100.1 and
    ex  exit   198.19.4.2 + 2001:2:4::2 (DHT on both, links on IPv4, ---+   2001:2:100::1,
        exits to IPv6: --exit-ipv6, announced ipv6-exit; packet exit       DNS 198.18.100.53)
        with NAT66 for the VPN)

Every relay is in both DHTs, so the client, which speaks only IPv6, finds
all three in the IPv6 one; it can enter only through the guard's IPv6
link address, and the relays link among themselves over IPv4.  Path
selection keeps the hops' link hosts in distinct /16s (IPv6: /32s): the
guard's are 198.18/16 and 2001:2::/32, the middle's 127/16 (the guard's
namespace loopback), the exit's 198.19/16.  The namespaces and servers
are L{TunWorld.internet}'s, as in the dual-stack VPN world.
"""

from meshvpn.tools.tunworld import DNS, POOL6, TunWorld

GUARD, GUARD6 = "198.18.2.2", "2001:2:2::2"
EXIT, EXIT6 = "198.19.4.2", "2001:2:4::2"
CLIENT6 = "2001:2:1::2"
MIDDLE_LINK = "127.30.0.1"


def _tcp6(host, port):
    return f"tcp6:{port}:interface=" + host.replace(":", "\\:")


class DualStackWorld(TunWorld):
    def build(self):
        self.internet([("cl", 1, None), ("g", 2, "198.18.2"), ("ex", 4, "198.19.4")], ipv6=True)
        self.boot6 = f"[{GUARD6}]:9000"
        boot = f"{GUARD}:9000"
        self._node("guard", "g", "relay", ["--udp", boot, "--udp6", self.boot6, "--flags", "guard",
                                           "--listen", f"tcp:9001:interface={GUARD}", "--listen6", _tcp6(GUARD6, 9001)])
        self.waitNode("guard")
        self._node("middle", "g", "relay", ["--udp", f"{GUARD}:9100", "--udp6", f"[{GUARD6}]:9100", "--flags", "middle",
                                            "--listen", f"tcp:9001:interface={MIDDLE_LINK}",
                                            "--bootstrap", f"{boot},{self.boot6}"])
        self._node("exit", "ex", "relay", ["--udp", f"{EXIT}:9000", "--udp6", f"[{EXIT6}]:9000", "--flags", "exit",
                                           "--exit-ipv6", "true", "--listen", f"tcp:9001:interface={EXIT}",
                                           "--bootstrap", f"{boot},{self.boot6}", "--exit-dns", f"{DNS}:53",
                                           "--packet-exit", "--packet-exit-pool6", POOL6])
        for name in ("guard", "middle", "exit"):
            try:
                self.waitNode(name)
            except RuntimeError as e:
                raise RuntimeError(f"{e}: {self.log(name)[-1500:]} {self.nodeLog(name)[-1500:]}") from None
            self.waitLog(name, "published relay descriptor")
        return self

    def startSocksClient(self, *args):
        """The IPv6-only client: its one socket on [::], SOCKS on its namespace's loopback."""
        self._node("client", "cl", "client", ["--udp", "[::]:0", "--bootstrap", self.boot6,
                                              "--socks-listen", "127.0.0.1:1080", "--dht-sample-interval", "5", *args])
        return self.waitNode("client", 40)

    def clientArgs6(self):
        """What an IPv6-only client needs beyond the defaults: its socket on [::] and the IPv6 bootstrap node."""
        return ["--udp", "[::]:0", "--bootstrap", self.boot6, "--dht-sample-interval", "5"]

    def startVpnClient(self, *args):
        """The IPv6-only client in VPN mode (C{--tun}: routes, kill switch, DNS through the exit)."""
        self._node("client", "cl", "client", [*self.clientArgs6(), "--tun", *args])
        return self.waitNode("client", 40)
