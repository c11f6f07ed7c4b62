"""A made-up internet in network namespaces for the VPN tests and ``meshvpn bench tun``.

Topology (all addresses from 198.18.0.0/15)::

    cl (client, 198.18.1.2) ---------------------+
    g  (guard 198.18.2.2:9001,                   +-- inet (router; web 198.18.100.1:80,
        middle 127.30.0.1:9001, DHT :9100) ------+         DNS 198.18.100.53)
    ex (exit, 198.19.4.2, packet exit) ----------+

L{TunWorld.buildDirectory} builds the other world, where the client knows
only a bootstrap node and finds every relay in the DHT, from behind a NAT.

The client namespace's resolv.conf (C{/etc/netns/<ns>/resolv.conf}) names
the internet's DNS server directly, so any query that skipped the tunnel
would show on the client's uplink capture.
"""

import json
import os
import shutil
import subprocess
import sys
import time

from meshvpn.hostport import formatHostPort
from meshvpn.tools.netns import run

DOMAIN = "files.meshvpn-example"
WEB = "198.18.100.1"
DNS = "198.18.100.53"
# IPv6 of the made-up internet (buildTwistd(ipv6=True)): RFC 5180's
# benchmarking space, 2001:2::/48; one /64 per namespace uplink.
WEB6 = "2001:2:100::1"
POOL6 = "fd6d:6573:6801::/112"


def _waitFile(path, proc, timeout=30.0, what="process"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with open(path) as f:
                return json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            time.sleep(0.05)
    raise RuntimeError(f"{what} not ready after {timeout}s")


class TunWorld:
    """
    @param netns: a L{meshvpn.tools.netns.Netns} (cleans namespaces up).
    @param addCleanup: where to register cleanups (a test's C{addCleanup}).
    """

    def __init__(self, netns, addCleanup, workdir):
        self.netns = netns
        self.addCleanup = addCleanup
        self.workdir = workdir
        self.procs = {}
        self.logs = {}

    def python(self, ns, name, *args):
        return self.spawn(ns, name, [sys.executable, *args])

    def spawn(self, ns, name, argv):
        log = open(os.path.join(self.workdir, f"{name}.log"), "wb")
        self.addCleanup(log.close)
        proc = self.netns.popen(ns, argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs[name] = proc
        self.logs[name] = log.name
        return proc

    def log(self, name):
        with open(self.logs[name], errors="replace") as f:
            return f.read()

    def buildTwistd(self, clientArgs=(), ipv6=False):
        """
        The same internet with real ``twistd meshvpn-relay``/``meshvpn-client``
        processes that find each other through the DHT.  With C{ipv6}, the
        internet is dual-stack: every uplink also has 2001:2:N::2/64 (the
        router ::1), the web server also listens on L{WEB6}, L{DOMAIN} has
        an AAAA record, and the exit carries IPv6 (C{--packet-exit-pool6}).

        Path selection keeps the three hops in distinct /16s, and the made-up
        internet (198.18.0.0/15) holds only two: the guard is 198.18.2.2, the
        exit 198.19.4.2, and the middle lives in the guard's namespace with
        its link port on that namespace's loopback (127.30.0.1) -- only the
        guard ever links to it, and its DHT port is on 198.18.2.2.
        """
        self.internet([("cl", 1, "198.18.1"), ("g", 2, "198.18.2"), ("ex", 3, "198.19.4")], ipv6)
        guard, exit = self.address["g"], self.address["ex"]
        boot = formatHostPort(guard, 9000)
        self.relayPorts = {"guard": (guard, 9001), "middle": ("127.30.0.1", 9001), "exit": (exit, 9001)}
        self._node("guard", "g", "relay", ["--udp", boot, "--listen", f"tcp:9001:interface={guard}",
                                           "--flags", "guard"])
        self._node("middle", "g", "relay", ["--udp", formatHostPort(guard, 9100), "--listen", "tcp:9001:interface=127.30.0.1",
                                            "--flags", "middle", "--bootstrap", boot])
        self._node("exit", "ex", "relay", ["--udp", formatHostPort(exit, 9000), "--listen", f"tcp:9001:interface={exit}",
                                           "--flags", "exit", "--bootstrap", boot, "--exit-dns", formatHostPort(DNS, 53),
                                           "--packet-exit", *(["--packet-exit-pool6", POOL6] if ipv6 else [])])
        for name in ("guard", "middle", "exit"):
            self.waitNode(name)
        self.clientArgs = ["--bootstrap", boot, "--tun", "--dht-sample-interval", "5", *clientArgs]
        return self

    def internet(self, hosts, ipv6):
        """
        The router namespace C{inet} with the web and DNS servers, and one
        namespace per C{(short, k, net)} of C{hosts} on its own uplink:
        C{net}.2/24 (the router C{net}.1) unless C{net} is C{None} (no IPv4
        at all), and with C{ipv6} also 2001:2:C{k}::2/64 (the router ::1).
        The guard's namespace C{g} gets the middle's link address,
        127.30.0.1, on its loopback; the client's resolv.conf names L{DNS}.
        """
        n = self.netns
        self.inet = n.add("inet")
        n.exec(self.inet, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        n.exec(self.inet, "ip", "addr", "add", f"{WEB}/32", "dev", "lo")
        n.exec(self.inet, "ip", "addr", "add", f"{DNS}/32", "dev", "lo")
        if ipv6:
            n.exec(self.inet, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
            n.exec(self.inet, "ip", "-6", "addr", "add", f"{WEB6}/128", "dev", "lo")
        self.ns, self.uplink, self.address, self.address6 = {}, {}, {}, {}
        for short, k, net in hosts:
            ns = self.ns[short] = n.add(short)
            inetSide, own = n.veth(self.inet, f"{net}.1/24" if net else None, ns, f"{net}.2/24" if net else None)
            self.uplink[short] = own
            if net:
                self.address[short] = f"{net}.2"
                n.exec(ns, "ip", "route", "add", "default", "via", f"{net}.1")
            if ipv6:
                net6 = f"2001:2:{k}::"
                n.exec(self.inet, "ip", "-6", "addr", "add", f"{net6}1/64", "dev", inetSide, "nodad")
                n.exec(ns, "ip", "-6", "addr", "add", f"{net6}2/64", "dev", own, "nodad")
                n.exec(ns, "ip", "-6", "route", "add", "default", "via", f"{net6}1")
                self.address6[short] = f"{net6}2"
        n.exec(self.ns["g"], "ip", "addr", "add", "127.30.0.1/32", "dev", "lo")
        self._resolvConf()
        self._internetServers(ipv6)
        from meshvpn.tools.processes import twistdPath

        self.twistd = twistdPath()

    def buildDirectory(self):
        """
        A world where no guard is a bootstrap node and the client learns
        every relay through the DHT, from behind a port-restricted NAT::

            b   bootstrap 198.18.1.2:9000 (meshvpn-relay --flags bootstrap) --+
            r   guard1 198.18.2.2:9001 (DHT :9000), guard2 198.18.3.2:9001 --+-- inet (router;
                (DHT :9000), middle1 127.31.0.1:9001 (DHT 198.18.2.2:9100),  |   web, DNS)
                middle2 127.32.0.1:9001 (DHT 198.18.3.2:9100) ---------------+
            ex  packet exit 198.19.4.2:9001 (DHT :9000) ---------------------+
            nat port-restricted NAT box, WAN 198.18.5.2 ----------------------+
              cl  client 198.19.5.2 (default via 198.19.5.1, the box)

        Path selection keeps the three hops in distinct /16s and
        198.18.0.0/15 holds only two: guards are in 198.18/16, the exit in
        198.19/16, so the middles sit on their namespace's loopback (their
        own /16s, reached only by the guards beside them).  The client
        namespace has IPv6 turned off, so a capture started before the
        client shows nothing of the namespace's own IPv6 chatter.  Start the
        client with L{startTwistdClient} (C{self.clientArgs}: bootstrap and
        --tun only, every other option at its default).
        """
        n = self.netns
        self.inet = n.add("inet")
        n.exec(self.inet, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        n.exec(self.inet, "ip", "addr", "add", f"{WEB}/32", "dev", "lo")
        n.exec(self.inet, "ip", "addr", "add", f"{DNS}/32", "dev", "lo")
        self.ns, self.uplink, self.address = {}, {}, {}
        for short, net in (("b", "198.18.1"), ("r", "198.18.2"), ("ex", "198.19.4"), ("nat", "198.18.5")):
            ns = self.ns[short] = n.add(short)
            inetSide, own = n.veth(self.inet, f"{net}.1/24", ns, f"{net}.2/24")
            self.uplink[short] = own
            self.address[short] = f"{net}.2"
            n.exec(ns, "ip", "route", "add", "default", "via", f"{net}.1")
        n.exec(self.inet, "ip", "addr", "add", "198.18.3.1/24", "dev", _peerOf(n, self.inet, "198.18.2.1"))
        n.exec(self.ns["r"], "ip", "addr", "add", "198.18.3.2/24", "dev", self.uplink["r"])
        for lo in ("127.31.0.1", "127.32.0.1"):
            n.exec(self.ns["r"], "ip", "addr", "add", f"{lo}/32", "dev", "lo")
        # the client behind its NAT box
        cl = self.ns["cl"] = n.add("cl")
        for key in ("all", "default"):
            n.exec(cl, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1")
        box = self.ns["nat"]
        self.boxLan, self.uplink["cl"] = n.veth(box, "198.19.5.1/24", cl, "198.19.5.2/24")
        self.address["cl"] = "198.19.5.2"
        self.gateway = "198.19.5.1"
        n.exec(cl, "ip", "route", "add", "default", "via", self.gateway)
        n.exec(box, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        from meshvpn.tools.nattestbed import natRules

        n.exec(box, "nft", "-f", "-", input=natRules("port-restricted", self.uplink["nat"], self.boxLan, "198.19.5.2",
                                                      self.address["nat"]).encode())
        self._resolvConf()
        self._internetServers()
        from meshvpn.tools.processes import twistdPath

        self.twistd = twistdPath()
        boot = "198.18.1.2:9000"
        self.endpoints = {  # name -> (link ip, port), (DHT ip, port)
            "bootstrap": (("198.18.1.2", 9001), ("198.18.1.2", 9000)),
            "guard1": (("198.18.2.2", 9001), ("198.18.2.2", 9000)),
            "guard2": (("198.18.3.2", 9001), ("198.18.3.2", 9000)),
            "middle1": (("127.31.0.1", 9001), ("198.18.2.2", 9100)),
            "middle2": (("127.32.0.1", 9001), ("198.18.3.2", 9100)),
            "exit": (("198.19.4.2", 9001), ("198.19.4.2", 9000)),
        }
        flags = {"bootstrap": "bootstrap", "guard1": "guard,middle", "guard2": "guard,middle", "middle1": "middle",
                 "middle2": "middle", "exit": "exit"}
        where = {"bootstrap": "b", "exit": "ex"}
        for name, ((lip, lport), (uip, uport)) in self.endpoints.items():
            args = ["--udp", f"{uip}:{uport}", "--listen", f"tcp:{lport}:interface={lip}", "--flags", flags[name]]
            if name != "bootstrap":
                args += ["--bootstrap", boot]
            if name == "exit":
                args += ["--exit-dns", f"{DNS}:53", "--packet-exit"]
            self._node(name, where.get(name, "r"), "relay", args)
            if name == "bootstrap":
                self.waitNode(name)
        self.nodeIds = {name: self.waitNode(name)["node_id"] for name in self.endpoints}
        for name in self.endpoints:
            if name != "bootstrap":
                self.waitLog(name, "published relay descriptor")
        self.clientArgs = ["--bootstrap", boot, "--tun"]
        return self

    def waitLog(self, name, text, timeout=30):
        deadline = time.monotonic() + timeout
        while text not in self.nodeLog(name):
            if self.procs[name].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name}: no {text!r} in its log: {self.nodeLog(name)[-2000:]}")
            time.sleep(0.05)

    def _node(self, name, short, role, args):
        dataDir = os.path.join(self.workdir, name)
        os.makedirs(dataDir, mode=0o700, exist_ok=True)
        self.dataDirs = getattr(self, "dataDirs", {})
        self.dataDirs[name] = dataDir
        if role == "relay":
            # The middles listen on 127.x inside a namespace, which a real relay refuses to extend to.
            args = [*args, "--extend-allow-private", "true"]
        argv = [self.twistd, "-n", "--pidfile=", "--logfile", os.path.join(dataDir, "twistd.log"),
                f"meshvpn-{role}", "--data-dir", dataDir, *args]
        return self.spawn(self.ns[short], name, argv)

    def waitNode(self, name, timeout=30):
        return _waitFile(os.path.join(self.dataDirs[name], "node.json"), self.procs[name], timeout, name)

    def nodeLog(self, name):
        with open(os.path.join(self.dataDirs[name], "twistd.log"), errors="replace") as f:
            return f.read()

    def startTwistdClient(self):
        self._node("client", "cl", "client", self.clientArgs)
        return self.waitNode("client", 40)

    def _resolvConf(self):
        self.etcDir = f"/etc/netns/{self.ns['cl']}"
        self.addCleanup(shutil.rmtree, self.etcDir, True)
        os.makedirs(self.etcDir, exist_ok=True)
        self.resolvConf = os.path.join(self.etcDir, "resolv.conf")
        with open(self.resolvConf, "w") as f:
            f.write(f"nameserver {DNS}\n")

    def _internetServers(self, ipv6=False):
        dnsReady = os.path.join(self.workdir, "dns.json")
        zone = f"{DOMAIN}={WEB}" + (f",{DOMAIN}={WEB6}" if ipv6 else "")
        p = self.python(self.inet, "dns", "-m", "meshvpn.tools.tunnet", "dns", "--listen", DNS,
                        "--zone", zone, "--ready", dnsReady)
        _waitFile(dnsReady, p, what="dns")
        servers = [("web", f"tcp:80:interface={WEB}")]
        if ipv6:
            servers.append(("web6", "tcp6:80:interface=" + WEB6.replace(":", "\\:")))
        for name, listen in servers:
            portFile = os.path.join(self.workdir, f"{name}.port")
            p = self.python(self.inet, name, "-m", "meshvpn.tools.webfixture", "--listen", listen, "--port-file", portFile)
            deadline = time.monotonic() + 20
            while not os.path.exists(portFile) and time.monotonic() < deadline and p.poll() is None:
                time.sleep(0.05)

    def stop(self, name, timeout=10):
        p = self.procs[name]
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout)
            except Exception:
                p.kill()
                p.wait()
        return p.returncode

    def inClient(self, *argv, check=True, timeout=30):
        return run("ip", "netns", "exec", self.ns["cl"], *argv, check=check, timeout=timeout)


def _peerOf(netns, ns, ip):
    """The interface in C{ns} that has C{ip}."""
    for line in netns.exec(ns, "ip", "-o", "-4", "addr", "show").splitlines():
        fields = line.split()
        if fields[3].split("/")[0] == ip:
            return fields[1].split("@")[0]
    raise RuntimeError(f"no interface with {ip} in {ns}")
