"""The node's one UDP socket, shared by STUN, the DHT and datagram links.

It must be one socket: the NAT mapping that STUN observes is the mapping that
hole punching and the DHT then use.  Datagrams are routed by their first byte
through a 256-entry table (one list index per datagram, RFC 7983 style); the
byte ranges each protocol owns are in doc/protocol.md.  Unknown datagrams
and handler failures are dropped and counted, never raised into the reactor.

In VPN mode (C{meshvpn-client --tun}) an egress gate
(L{meshvpn.interfaces.IDirectEgress}) is consulted before each datagram: one
to a destination that has no host route and kill-switch exception yet is
held, in a small bounded queue, until the gate has put them in place, then
sent.  Without a gate the send path is one attribute test longer.

A dual-stack node has a second socket for the other address family
(C{--udp6}): L{DatagramMultiplexer.secondSocket} is the protocol bound to
it.  Both feed the same table, and each datagram leaves through the socket
of its destination's family (one NAT or firewall mapping per family is all
there can be).  A destination of a family the node has no socket for is
dropped and counted (C{no_route}): an IPv6-only node told of an IPv4 contact.

Bulk senders (the datagram link carrying mesh packets) hand a whole burst
to one destination to L{DatagramMultiplexer.sendDatagrams}: runs of
equal-sized datagrams leave in one C{sendmsg} with Linux's UDP
segmentation offload (C{UDP_SEGMENT}), the kernel cutting them into the
same datagrams on the wire.  One system call per run instead of one per
datagram: the per-datagram C{sendto} was half of a mesh sender's CPU.
Where the kernel or the route refuses it, the socket falls back to one
C{sendto} per datagram for good.
"""

import errno
import struct
from collections import Counter

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from zope.interface import implementer

from meshvpn.interfaces import IDatagramMultiplexer

# First-byte ranges, fixed here so every subsystem registers the same table.
STUN_BYTES = range(0x00, 0x04)  # RFC 7983: STUN's top two bits are 0
TURN_CHANNEL_BYTES = range(0x40, 0x50)  # RFC 7983: TURN ChannelData
DHT_BYTES = range(0x80, 0x90)  # MeshVPN DHT messages
LINK_BYTES = range(0x90, 0xA0)  # MeshVPN datagram link
LINK_FIRST_BYTES = range(0x90, 0x9E)  # of those, link messages; 0x9E-0x9F are hole-punch probes

# Datagrams held for destinations the egress gate has not let out yet.
HOLD_PER_DESTINATION = 128  # a directory sampling sends ~60 queries to each new contact at once
HOLD_DESTINATIONS = 256
HOLD_TOTAL = 1024

# Linux UDP segmentation offload (since 4.18); Python 3.11's socket module does not name it.
_SOL_UDP = 17
_UDP_SEGMENT = 103
GSO_MAX_SEGMENTS = 64  # the kernel's limit was 64 before 5.x (now 128): the lower is safe everywhere
GSO_MAX_BYTES = 65000  # one UDP payload holds at most 65507 bytes
# A full socket buffer drops, as a congested link would; anything else disables offload.
_SEND_DROPS = (errno.EAGAIN, errno.ENOBUFS, errno.ECONNREFUSED, errno.EINTR)


@implementer(IDatagramMultiplexer)
class DatagramMultiplexer(DatagramProtocol):
    """
    Routes each datagram on the node's socket to the handler registered for
    its first byte.
    """

    log = Logger()

    def __init__(self):
        self._routes = [None] * 256
        self._names = {}
        self._counters = Counter()
        self._loggedError = set()
        self._gate = None  # an IDirectEgress while a --tun client captures the machine
        self._held = {}  # addr -> datagrams waiting for the gate
        self._heldCount = 0
        self._second = None  # the other family's socket, if the node is dual-stack
        self._families = {}  # socket -> whether it is IPv6
        self._noOffload = set()  # sockets whose kernel or route refused UDP_SEGMENT

    def secondSocket(self):
        """
        The protocol to bind the other family's socket to: what it receives
        goes through this table, and sends to that family leave through it.
        """
        if self._second is None:
            self._second = _SecondSocket(self)
        return self._second

    def register(self, name, firstBytes, handler, accept=None):
        firstBytes = list(firstBytes)
        if name in self._names:
            raise ValueError(f"a handler named {name!r} is already registered")
        for b in firstBytes:
            if not 0 <= b <= 255:
                raise ValueError(f"first byte {b} is outside 0..255")
            if self._routes[b] is not None:
                raise ValueError(f"first byte 0x{b:02x} is already routed to {self._routes[b][0]!r}")
        route = (name, handler.datagramReceived, accept)
        for b in firstBytes:
            self._routes[b] = route
        self._names[name] = firstBytes

    def unregister(self, name):
        for b in self._names.pop(name):
            self._routes[b] = None

    def datagramReceived(self, data, addr):
        route = self._routes[data[0]] if data else None
        if route is None:
            self._counters["dropped_unknown"] += 1
            return
        name, receive, accept = route
        if accept is not None and not accept(data):
            self._counters["dropped_unknown"] += 1
            return
        self._counters[name] += 1
        try:
            receive(data, addr)
        except Exception:
            self._counters["handler_errors"] += 1
            # Log the first failure of each handler only: a hostile peer must
            # not be able to flood the log.  Never the payload.
            if name not in self._loggedError:
                self._loggedError.add(name)
                self.log.failure("{name} handler failed on a datagram; further failures only counted", name=name)

    def setEgressGate(self, gate):
        """
        Consult C{gate} (an L{IDirectEgress}) before each send; C{None} drops
        what it held.  Another gate keeps it: what waits on the old one's
        C{allow} (a VPN's hold before its gate is up) goes when that fires.
        """
        self._gate = gate
        if gate is None and self._held:
            self._counters["egress_dropped"] += self._heldCount
            self._held, self._heldCount = {}, 0

    def sendDatagram(self, data, addr):
        gate = self._gate
        if gate is not None and not gate.passes("udp", addr):
            self._hold(data, addr)
            return
        self._write(data, addr)

    def _write(self, data, addr):
        transport = self.transport
        if (":" in addr[0]) is not self._isIPv6(transport):
            second = self._second
            transport = second.transport if second is not None else None
            if transport is None or (":" in addr[0]) is not self._isIPv6(transport):
                self._counters["no_route"] += 1
                return
        try:
            transport.write(data, addr)
        except (OSError, ValueError):  # ValueError: Twisted refusing an address it cannot send to
            self._counters["send_errors"] += 1

    def sendDatagrams(self, datagrams, addr):
        """
        Send every datagram of C{datagrams} (a list) to C{addr}, in as few
        system calls as the kernel allows; the same promise as
        L{sendDatagram} for each (lossy, counted, never raises).
        """
        gate = self._gate
        if gate is not None and not gate.passes("udp", addr):
            for data in datagrams:
                self._hold(data, addr)
            return
        transport = self.transport
        if len(datagrams) < 2 or (":" in addr[0]) is not self._isIPv6(transport) or transport in self._noOffload:
            for data in datagrams:
                self._write(data, addr)
            return
        sock = transport.socket
        i, n = 0, len(datagrams)
        while i < n:
            # A run: datagrams of one size, the last one possibly shorter (what UDP_SEGMENT allows).
            size = len(datagrams[i])
            j, total = i + 1, size
            while j < n and j - i < GSO_MAX_SEGMENTS and total + size <= GSO_MAX_BYTES:
                length = len(datagrams[j])
                if length > size:
                    break
                j += 1
                total += length
                if length < size:
                    break
            if j - i == 1:
                self._write(datagrams[i], addr)
            elif not self._sendSegmented(transport, sock, datagrams[i:j], size, addr):
                for data in datagrams[i:]:
                    self._write(data, addr)
                return
            i = j

    def _sendSegmented(self, transport, sock, run, size, addr):
        """One C{sendmsg} for C{run}; C{False} (and never again on this socket) if offload is refused."""
        try:
            sock.sendmsg([b"".join(run)], [(_SOL_UDP, _UDP_SEGMENT, struct.pack("=H", size))], 0, addr)
        except OSError as e:
            if e.errno in _SEND_DROPS:
                self._counters["send_errors"] += len(run)
                return True
            if len(self._noOffload) > 8:
                self._noOffload.clear()  # sockets of earlier restarts
            self._noOffload.add(transport)
            self.log.info("UDP segmentation offload refused ({e}); one datagram per send from now on",
                          e=e.strerror)
            return False
        self._counters["offload_sends"] += 1
        return True

    def _hold(self, data, addr):
        """Keep C{data} until the gate lets C{addr} out (bounded: the rest is dropped and counted)."""
        queue = self._held.get(addr)
        if queue is not None:
            if len(queue) < HOLD_PER_DESTINATION and self._heldCount < HOLD_TOTAL:
                queue.append(data)
                self._heldCount += 1
            else:
                self._counters["egress_dropped"] += 1
            return
        if self._heldCount >= HOLD_TOTAL or len(self._held) >= HOLD_DESTINATIONS:
            self._counters["egress_dropped"] += 1
            return
        self._held[addr] = [data]
        self._heldCount += 1
        self._counters["egress_held"] += 1
        self._gate.allow([("udp", addr[0], addr[1])]).addCallbacks(self._release, self._refused, (addr,), None, (addr,))

    def _release(self, _, addr):
        queue = self._held.pop(addr, ())
        self._heldCount -= len(queue)
        for data in queue:
            self._write(data, addr)

    def _refused(self, failure, addr):
        queue = self._held.pop(addr, ())
        self._heldCount -= len(queue)
        self._counters["egress_dropped"] += len(queue)

    def _isIPv6(self, transport):
        # asked per datagram, so remembered per socket (a restart binds new ones)
        known = self._families
        if transport not in known:
            if len(known) > 8:
                known.clear()
            known[transport] = transport is not None and ":" in transport.getHost().host
        return known[transport]

    def getHost(self):
        return self.transport.getHost()

    def counters(self):
        return dict(self._counters)


class _SecondSocket(DatagramProtocol):
    """The other family's socket: hands what it receives to the multiplexer's table."""

    def __init__(self, mux):
        self._mux = mux

    def datagramReceived(self, data, addr):
        self._mux.datagramReceived(data, addr)
