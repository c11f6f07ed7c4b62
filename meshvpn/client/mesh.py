"""Mesh mode: clients reach each other's TUN addresses over datagram links, no exit.

Every node has a mesh address derived from its node id: C{100.96.0.0/11}
plus the low 21 bits of the first three id bytes (shared address space, RFC
6598; the exit pool, 100.64.0.0/16, does not overlap).  A client that knows
a peer's node id therefore knows its address; packets to it go over a
datagram link from the L{PeerConnector} (hole-punched when both NATs allow
it, through the relay's TURN otherwise).  Incoming mesh packets are accepted
only from configured peers, only with the peer's own mesh address as source
and ours as destination, so a peer cannot spoof another or reach past us.

The mesh route carries its own MTU (L{MESH_MTU}): a mesh packet rides one
UDP datagram with the link's header and tag, so it must leave room for them
under a 1500-byte path.
"""

import ipaddress

from twisted.logger import Logger

from meshvpn.tun.packets import ICMP_UNREACH, UNREACH_FRAG_NEEDED, PacketError, icmpError, parseIPv4

MESH_NET = ipaddress.ip_network("100.96.0.0/11")
MESH_MTU = 1400
MAX_QUEUED = 64
MAX_INBOX = 256  # packets held for one TUN write at most (a reactor turn reads about 180 full ones)


def meshAddress(nodeId):
    """@return: the mesh IPv4 address (C{str}) of the node with id C{nodeId} (32 bytes)."""
    host = int.from_bytes(nodeId[:3], "big") & 0x1FFFFF
    return str(MESH_NET.network_address + host)


def isMesh(dst):
    return dst[0] == 100 and (dst[1] & 0xE0) == 96


class MeshRouter:
    """
    @param connector: a L{meshvpn.nat.connect.PeerConnector} (C{connect(peerId)},
        C{linkObservers}).
    @param peers: node ids (bytes) of the peers we exchange packets with.
    @param deliver: C{callable(packets)} writing to our TUN.
    @param reactor: with one, what the links deliver in one reactor turn
        reaches C{deliver} as one list (one TUN write for a TCP burst);
        without, each packet at once.
    """

    log = Logger()

    def __init__(self, nodeId, connector, peers, deliver, mtu=MESH_MTU, reactor=None):
        self.address = ipaddress.IPv4Address(meshAddress(nodeId)).packed
        self.deliver = deliver
        self.reactor = reactor
        self._inbox = None  # packets received this reactor turn, not yet delivered
        self.mtu = mtu
        self.peers = {}
        for peerId in peers:
            a = ipaddress.IPv4Address(meshAddress(peerId)).packed
            if a in self.peers or a == self.address:
                self.log.warn("mesh peer {p} collides with another address; ignored", p=peerId.hex()[:16])
                continue
            self.peers[a] = peerId
        self._byId = {v: k for k, v in self.peers.items()}
        self.links = {}  # peer address -> DatagramLink
        self.paths = {}  # peer address -> "direct" or "relay" (links we opened)
        self._pending = {}  # peer address -> queued packets while connecting
        self.counters = {"tx": 0, "rx": 0, "dropped": 0, "spoofed": 0}
        self.connector = None
        self.setConnector(connector)

    def setConnector(self, connector):
        """Use C{connector} for mesh links (it may come up after the TUN)."""
        if connector is None or connector is self.connector:
            return
        self.connector = connector
        connector.linkObservers.append(self._linkUp)

    def _linkUp(self, link):
        address = self._byId.get(link.peerId)
        if address is None:
            return
        self.links[address] = link
        link.setPacketReceiver(lambda data, a=address: self._received(a, data))
        link.whenClosed().addBoth(lambda _, a=address, l=link: self.links.get(a) is l and self.links.pop(a))
        queued = self._pending.pop(address, [])
        for p in queued:
            link.sendPacket(p)

    def sendPackets(self, packets):
        """
        Packets from our TUN to mesh addresses (one TUN read's worth).  Those
        to a peer whose link is up leave as one burst per link (one
        C{sendmsg} on the node's socket); the rest take L{send}.
        @return: the ICMP errors to write back (a list).
        """
        errors = []
        bursts = {}  # link -> packets
        links, mtu = self.links, self.mtu
        for packet in packets:
            if len(packet) <= mtu:
                link = links.get(packet[16:20])
                if link is not None and not link.closed:
                    burst = bursts.get(link)
                    if burst is None:
                        bursts[link] = [packet]
                    else:
                        burst.append(packet)
                    continue
            err = self.send(packet)
            if err is not None:
                errors.append(err)
        for link, burst in bursts.items():
            link.sendPackets(burst)
            self.counters["tx"] += len(burst)
        return errors

    def send(self, packet):
        """A packet from our TUN to a mesh address. @return: an ICMP error to write back, or C{None}."""
        dst = packet[16:20]
        if len(packet) > self.mtu:
            try:
                info = parseIPv4(packet)
            except PacketError:
                return None
            if info.dontFragment:
                # From the peer's address: our own would be a martian source.
                return icmpError(packet, info, ICMP_UNREACH, UNREACH_FRAG_NEEDED, info.dst, self.mtu)
            self.counters["dropped"] += 1
            return None
        link = self.links.get(dst)
        if link is not None and not link.closed:
            link.sendPacket(packet)
            self.counters["tx"] += 1
            return None
        peerId = self.peers.get(dst)
        if peerId is None or self.connector is None:
            self.counters["dropped"] += 1
            return icmpUnreachable(packet, self.address)
        queue = self._pending.get(dst)
        if queue is None:
            queue = self._pending[dst] = []
            d = self.connector.connect(peerId)
            d.addCallbacks(lambda r, a=dst: self._connected(a, r), lambda f, a=dst: self._failed(a, f))
        if len(queue) < MAX_QUEUED:
            queue.append(packet)
        else:
            self.counters["dropped"] += 1
        return None

    def _connected(self, address, result):
        link, path = result
        self.paths[address] = path
        self._linkUp(link)  # the connector's observers may have run already; idempotent

    def _failed(self, address, failure):
        self.counters["dropped"] += len(self._pending.pop(address, []))
        self.log.warn("mesh link to {a} failed: {e}", a=str(ipaddress.IPv4Address(address)), e=failure.getErrorMessage())

    def _received(self, peerAddress, data):
        # Only what decides whether the peer may send it: an IPv4 header whose
        # lengths hold, from the peer's address to ours.  The kernel checks
        # the header checksum and everything past the header when we write
        # it to the TUN (a full parse here was a tenth of a receiver's CPU).
        n = len(data)
        if n < 20 or data[0] >> 4 != 4 or not 20 <= (data[0] & 15) * 4 <= n or (data[2] << 8 | data[3]) != n:
            self.counters["dropped"] += 1
            return
        if data[12:16] != peerAddress or data[16:20] != self.address:
            self.counters["spoofed"] += 1
            return
        self.counters["rx"] += 1
        if self.reactor is None:
            self.deliver([data])
            return
        inbox = self._inbox
        if inbox is None:
            self._inbox = [data]
            self.reactor.callLater(0, self._flushInbox)
        else:
            inbox.append(data)
            if len(inbox) >= MAX_INBOX:
                self._flushInbox()

    def _flushInbox(self):
        inbox, self._inbox = self._inbox, None
        if inbox:  # None when a full inbox went early and nothing came since
            self.deliver(inbox)

    def status(self):
        return {
            "address": str(ipaddress.IPv4Address(self.address)),
            "peers": {str(ipaddress.IPv4Address(a)): {**l.status(), "path": self.paths.get(a)} for a, l in self.links.items()},
            **self.counters,
        }


def icmpUnreachable(packet, source):
    try:
        info = parseIPv4(packet)
    except PacketError:
        return None
    return icmpError(packet, info, ICMP_UNREACH, 1, source)  # host unreachable
