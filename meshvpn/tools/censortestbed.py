"""A censor between a client and the made-up internet, and a bridge it does not know (root, namespaces).

Built on L{meshvpn.tools.tunworld.TunWorld.buildDirectory}: a bootstrap
node, guards, middles and a packet exit in 198.18.0.0/15, and a client
namespace behind a box.  Here the box is also the censor; its nftables
table C{censor} (forward hook, before the NAT) drops:

 - all traffic to the public relays and the DHT bootstrap node (the
   censor read the public directory: it knows every listed address);
 - all UDP;
 - TCP segments, among the first of a flow, whose payload starts like a
   TLS record (C{0x16 0x03}: a ClientHello, and so also our TLS link's
   first bytes).  The payload is matched at the inner header (C{@ih}, the
   first byte after the TCP header whatever its options), and also at the
   two usual TCP header lengths with C{@th} (20 bytes bare, 32 with
   timestamps), for kernels without inner-header matching.

Each rule counts what it dropped (L{CensorWorld.drops}).  A bridge runs
beside the guards (namespace C{r}, a new address 198.18.6.2 the censor
was never told of), reachable only through obfs4proxy on TCP 443; its
bridge line is what a user would be handed.  L{analyseCapture} reads a
pcap of the client's uplink and says which destinations it saw and
whether any packet matched a censor pattern.
"""

import os
import shutil
import struct
import subprocess
import time

from meshvpn.tools.tunworld import TunWorld

BRIDGE_ADDRESS = "198.18.6.2"
BRIDGE_PORT = 443
OBFS4PROXY = "/usr/bin/obfs4proxy"


def censorRules(lan, blocked):
    """The censor's nftables table: C{lan} is the box's interface towards the censored clients."""
    addresses = ", ".join(sorted(blocked))
    first = "ct original packets < 8"
    return f"""
table inet censor {{
  chain forward {{
    type filter hook forward priority filter - 10; policy accept;
    iifname "{lan}" ip daddr {{ {addresses} }} counter drop comment "public relays and DHT bootstrap"
    iifname "{lan}" meta l4proto udp counter drop comment "all UDP"
    iifname "{lan}" meta l4proto tcp {first} @ih,0,16 0x1603 counter drop comment "TLS ClientHello (payload)"
    iifname "{lan}" tcp doff 5 {first} @th,160,16 0x1603 counter drop comment "TLS ClientHello (bare TCP header)"
    iifname "{lan}" tcp doff 8 {first} @th,256,16 0x1603 counter drop comment "TLS ClientHello (TCP timestamps)"
  }}
}}
"""


class CensorWorld(TunWorld):
    """L{TunWorld}'s directory world with the box turned censor and a bridge outside it."""

    def build(self):
        self.buildDirectory()
        n = self.netns
        box = self.ns["nat"]
        self.blocked = sorted({ip for (link, dht) in self.endpoints.values() for ip, _ in (link, dht)
                               if not ip.startswith("127.")})
        n.exec(box, "nft", "-f", "-", input=censorRules(self.boxLan, self.blocked).encode())
        # the bridge: in the guards' namespace, on an address of its own the censor has never seen
        r = self.ns["r"]
        n.exec(self.inet, "ip", "addr", "add", "198.18.6.1/24", "dev", _peer(n, self.inet, "198.18.2.1"))
        n.exec(r, "ip", "addr", "add", f"{BRIDGE_ADDRESS}/24", "dev", self.uplink["r"])
        self.transportLine = f"obfs4 exec {shutil.which('obfs4proxy') or OBFS4PROXY}"
        self._node("bridge", "r", "relay", [
            "--udp", "198.18.2.2:9300", "--listen", f"tcp:{BRIDGE_PORT}:interface={BRIDGE_ADDRESS}",
            "--flags", "guard,middle", "--bootstrap", "198.18.1.2:9000", "--link-transport", "obfs4",
            "--transport", self.transportLine, "--bridge-mode"])
        self.nodeIds["bridge"] = self.waitNode("bridge", 60)["node_id"]
        path = os.path.join(self.dataDirs["bridge"], "bridge_line.txt")
        deadline = time.monotonic() + 30
        while not (os.path.exists(path) and open(path).read().strip()):
            if time.monotonic() > deadline or self.procs["bridge"].poll() is not None:
                raise RuntimeError(f"the bridge wrote no bridge line: {self.nodeLog('bridge')[-2000:]}")
            time.sleep(0.1)
        with open(path) as f:
            self.bridgeLine = f.read().strip()
        return self

    def drops(self):
        """C{{comment: packets}} of the censor's rules."""
        import json

        out = json.loads(self.netns.exec(self.ns["nat"], "nft", "-j", "list", "table", "inet", "censor"))
        counts = {}
        for item in out.get("nftables", []):
            rule = item.get("rule")
            if not rule:
                continue
            packets = next((e["counter"]["packets"] for e in rule["expr"] if "counter" in e), 0)
            counts[rule.get("comment", "?")] = packets
        return counts

    def startClient(self, name, args):
        """A client in the censored namespace, with its own data dir and SOCKS port."""
        proc = self._node(name, "cl", "client", args)
        self.procs[name] = proc
        return self.waitNode(name, 40)

    def startCapture(self, pcap):
        proc = self.netns.popen(
            self.ns["cl"],
            ["tcpdump", "-i", self.uplink["cl"], "-nn", "-U", "--immediate-mode", "-w", pcap, "not", "arp"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        proc.stderr.readline()  # "listening on ...": the capture is live
        return proc


def _peer(netns, ns, ip):
    for line in netns.exec(ns, "ip", "-o", "-4", "addr", "show").splitlines():
        parts = line.split()
        if f"{ip}/" in line:
            return parts[1]
    raise RuntimeError(f"no interface with {ip} in {ns}")


def readPcap(path):
    """@return: the frames (C{bytes}) of a classic little- or big-endian pcap file (Ethernet link type)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 24:
        return []
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    frames, pos = [], 24
    while pos + 16 <= len(data):
        _, _, caplen, _ = struct.unpack_from(endian + "IIII", data, pos)
        pos += 16
        frames.append(data[pos:pos + caplen])
        pos += caplen
    return frames


def analyseCapture(path, you):
    """
    @param you: the client's own address (packets from it are what the censor sees leaving).
    @return: C{{"destinations": {(proto, ip, port)}, "udp": n, "tls_like": n, "packets": n, "non_ip": n}}
        where C{tls_like} counts TCP payloads starting with C{0x16 0x03}.
    """
    out = {"destinations": set(), "udp": 0, "tls_like": 0, "packets": 0, "non_ip": 0}
    for frame in readPcap(path):
        if len(frame) < 14 + 20 or frame[12:14] != b"\x08\x00":
            out["non_ip"] += 1
            continue
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        proto = ip[9]
        src = ".".join(str(b) for b in ip[12:16])
        dst = ".".join(str(b) for b in ip[16:20])
        out["packets"] += 1
        l4 = ip[ihl:]
        if proto == 17:
            out["udp"] += 1
        if src != you or len(l4) < 4:
            continue
        port = struct.unpack_from(">H", l4, 2)[0]
        out["destinations"].add(({6: "tcp", 17: "udp", 1: "icmp"}.get(proto, str(proto)), dst, port))
        if proto == 6 and len(l4) >= 20:
            payload = l4[(l4[12] >> 4) * 4:]
            if payload[:2] == b"\x16\x03":
                out["tls_like"] += 1
    return out
