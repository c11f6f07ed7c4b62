"""A Linux TUN device read and written through the reactor (L{ITunDevice}).

The client (whole-system VPN) and the packet exit both move IP packets
between a TUN device and circuits.  The fd comes from C{/dev/net/tun}
(C{IFF_TUN | IFF_NO_PI}: bare IP packets, no 4-byte header); addresses, MTU,
link state and routes go through pyroute2 (netlink), never by shelling out.

Reading: the fd is non-blocking and registered with C{reactor.addReader};
one wakeup drains up to L{READ_BATCH} packets and hands them to the receiver
as one list, so the layers above (circuit framing, cell batching) see whole
bursts.  Writing: a TUN write never sleeps -- the kernel queues the packet on
the device's receive path or drops it (C{EAGAIN}/C{ENOBUFS} when its queue
is full); a dropped IP packet is what a congested router does, so we count
it and go on instead of buffering without bound.

With C{offload}, the device is opened with C{IFF_VNET_HDR}: every packet
read or written carries a 10-byte C{virtio_net_hdr}.  Reads ask for
offload too (C{TUNSETOFFLOAD}: checksum, TSO for IPv4 and IPv6): the
kernel then hands us TCP segments of up to 64 KB and checksums left
unfinished, as it would a NIC that segments (L{meshvpn.tun.offload});
they come out as L{OffloadPacket}s, written back to a TUN the same way.
A write joins each burst of plain TCP segments that Linux's GRO would join
into one (L{meshvpn.tun.coalesce}), with a complete checksum the kernel
checks.  A kernel that refuses read offload leaves reads one packet each;
one that refuses a joined or offloaded write makes the device cut them in
software from then on.

The device exists as long as the fd is open: L{TunDevice.close} (or the
process dying) removes it together with its addresses and routes.
"""

import errno
import fcntl
import os
import struct

from meshvpn.onion.packets import OffloadPacket
from meshvpn.tun.coalesce import PLAIN_HDR, VNET_HDR_LEN, coalesce
from meshvpn.tun.offload import (
    TUN_F_CSUM,
    TUN_F_TSO4,
    TUN_F_TSO6,
    TUNSETOFFLOAD,
    OffloadError,
    fromRead,
    plainPackets,
    segment,
    vnetHeader,
)

from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from zope.interface import implementer

from meshvpn.errors import MeshVPNError
from meshvpn.interfaces import ITunDevice

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
READ_BATCH = 256
MAX_READ = 65535
# No TSO_ECN: the kernel cuts segments with CWR itself; no USO: UDP keeps its datagrams (a tunnel's own pacing).
OFFLOAD_FLAGS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
MAX_OFFLOAD_READ = VNET_HDR_LEN + 65536 + 256  # a 64 KB TSO segment, its header and room to spare
# EINVAL: a malformed packet the kernel refused; ENOBUFS: full.
_WRITE_DROPS = (errno.EINVAL, errno.ENOBUFS, errno.EIO, errno.EMSGSIZE)


class TunError(MeshVPNError):
    """The TUN device could not be created or configured."""


def enableOffload(fd):
    """Ask the kernel for offloaded reads (L{OFFLOAD_FLAGS}) on a TUN opened with C{IFF_VNET_HDR}.  @return: whether it agreed."""
    try:
        fcntl.ioctl(fd, TUNSETOFFLOAD, OFFLOAD_FLAGS)
    except OSError as e:
        TunDevice.log.warn("TUN offload refused ({e}): one packet per read", e=e.strerror)
        return False
    return True


def openTun(name="mvtun%d", vnetHeader=False):
    """
    Create a TUN device (with C{vnetHeader}: C{IFF_VNET_HDR}).  @return: C{(fd, name)}; the fd is non-blocking.
    @raise TunError: no /dev/net/tun, no permission, bad name.
    """
    if len(name.encode()) > 15:
        raise TunError(f"interface name {name!r} longer than 15 bytes")
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise TunError(f"cannot open /dev/net/tun: {e.strerror}") from None
    try:
        ifr = fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(),
                                                  IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if vnetHeader else 0)))
    except OSError as e:
        os.close(fd)
        raise TunError(f"cannot create TUN device {name!r}: {e.strerror}") from None
    return fd, ifr[:16].rstrip(b"\0").decode()


def _drain(fd, size):
    """
    Up to L{READ_BATCH} reads of at most C{size} bytes each from the
    non-blocking C{fd}, until it has nothing left (an interrupted read
    counts as one of them).
    """
    read = os.read
    for _ in range(READ_BATCH):
        try:
            yield read(fd, size)
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno != errno.EINTR:
                raise


@implementer(ITunDevice, IReadDescriptor)
class TunDevice:
    """
    @ivar packetsRead / packetsWritten / writeDrops: counters for status.
    @ivar packetsJoined: packets written as part of a joined TCP write.
    """

    log = Logger()

    def __init__(self, reactor, name="mvtun%d", mtu=1500, ipr=None, offload=False, join=True):
        self.reactor = reactor
        try:
            self.fd, self.name = openTun(name, vnetHeader=offload)
        except TunError:
            if not offload:
                raise
            # A kernel without virtio headers on TUN: the device works, one packet per write.
            self.fd, self.name = openTun(name)
            offload = False
        self.offload = offload  # every read and write carries a virtio_net_hdr
        # Writes may join plain TCP segments (until the kernel refuses one); not where the kernel forwards
        # them (the exit): it would cut them again with fresh checksums, dropping each segment's own.
        self.joining = offload and join
        self.readOffload = offload and enableOffload(self.fd)  # reads may be 64 KB segments, checksums unfinished
        self.offloadWrites = offload  # OffloadPackets are written as they are (until the kernel refuses one)
        self.packetsJoined = 0
        self.offloadRead = 0  # reads that were offloaded packets
        self.offloadWritten = 0
        self.offloadDrops = 0  # offloaded packets whose headers did not hold what their offload needs
        self.mtu = mtu
        self._receiver = None
        self._reading = False
        self._ipr = ipr
        self.packetsRead = 0
        self.packetsWritten = 0
        self.writeDrops = 0
        self.index = None

    # -- configuration (pyroute2)

    def _iproute(self):
        if self._ipr is None:
            from pyroute2 import IPRoute

            self._ipr = IPRoute()
        return self._ipr

    def configure(self, addresses=(), routes=(), mtu=None):
        """
        Set the MTU, add C{addresses} (CIDR strings, IPv4 or IPv6), bring the
        link up, then add C{routes} (CIDR strings) through the device.
        """
        ipr = self._iproute()
        try:
            (self.index,) = ipr.link_lookup(ifname=self.name)
            if mtu is not None:
                self.mtu = mtu
            ipr.link("set", index=self.index, mtu=self.mtu)
            for cidr in addresses:
                address, _, length = cidr.partition("/")
                family = 10 if ":" in address else 2
                ipr.addr("add", index=self.index, address=address, prefixlen=int(length or (128 if family == 10 else 32)),
                         family=family)
            ipr.link("set", index=self.index, state="up")
            for cidr in routes:
                self.addRoute(cidr)
        except Exception as e:
            raise TunError(f"cannot configure {self.name}: {e}") from None
        return self

    def addRoute(self, cidr, table=None, metric=None, mtu=None):
        """Route C{cidr} into the device (in C{table} if given; with its own C{mtu} if given)."""
        kw = {"dst": cidr, "oif": self.index}
        if mtu is not None:
            kw["metrics"] = {"mtu": mtu}
        if ":" in cidr:
            kw["family"] = 10
        if table is not None:
            kw["table"] = table
        if metric is not None:
            kw["priority"] = metric
        self._iproute().route("add", **kw)

    # -- ITunDevice

    def setPacketReceiver(self, receiver):
        self._receiver = receiver
        if receiver is not None and not self._reading and self.fd is not None:
            self._reading = True
            self.reactor.addReader(self)

    def writePackets(self, packets):
        fd = self.fd
        if fd is None:
            return
        if self.offload:
            self._writeWithHeaders(fd, packets)
            return
        packets = plainPackets(packets)
        write = os.write
        for p in packets:
            try:
                write(fd, p)
            except BlockingIOError:
                self.writeDrops += 1
            except OSError as e:
                # EINVAL: a malformed packet the kernel refused; ENOBUFS: full.
                if e.errno not in _WRITE_DROPS:
                    raise
                self.writeDrops += 1
        self.packetsWritten += len(packets)

    def _writeWithHeaders(self, fd, packets):
        writev = os.writev
        if any(type(p) is OffloadPacket for p in packets):
            packets = self._writeOffloaded(fd, packets)
            if not packets:
                return
        if self.joining and len(packets) > 1:
            writes, joined = coalesce(packets)
        else:
            writes, joined = [[PLAIN_HDR, p] for p in packets], 0
        for buffers in writes:
            plain = buffers[0] is PLAIN_HDR
            try:
                writev(fd, buffers)
            except BlockingIOError:
                self.writeDrops += 1 if plain else len(buffers) - 3
            except OSError as e:
                if e.errno not in _WRITE_DROPS:
                    raise
                self.writeDrops += 1 if plain else len(buffers) - 3
                if not plain and e.errno != errno.ENOBUFS and self.joining:
                    # Lost like a congested queue's packets (TCP resends them); never joined again.
                    self.joining = False
                    self.log.warn("{tun}: the kernel refused a joined TCP write ({e}); one packet per write from now "
                                  "on", tun=self.name, e=e.strerror)
        self.packetsJoined += joined
        self.packetsWritten += len(packets)

    def _writeOffloaded(self, fd, packets):
        """
        Write the L{OffloadPacket}s of C{packets} with their own headers, in
        runs between the plain packets, which go through L{coalesce} as
        before.  @return: the plain packets after the last offloaded one.
        """
        plain = []
        for p in packets:
            if type(p) is not OffloadPacket:
                plain.append(p)
                continue
            if plain:
                self._writeWithHeaders(fd, plain)
                plain = []
            if not self.offloadWrites:
                try:
                    pieces = segment(p)
                except OffloadError:
                    self.offloadDrops += 1
                    continue
                self._writeWithHeaders(fd, pieces)
                continue
            try:
                header = vnetHeader(p)
            except OffloadError:
                self.offloadDrops += 1
                continue
            try:
                os.writev(fd, (header, p))
            except BlockingIOError:
                self.writeDrops += 1
                continue
            except OSError as e:
                if e.errno not in _WRITE_DROPS:
                    raise
                self.writeDrops += 1
                if e.errno != errno.ENOBUFS:
                    # This one is lost, as a congested queue's would be; cut in software from now on.
                    self.offloadWrites = False
                    self.log.warn("{tun}: the kernel refused an offloaded write ({e}); segmenting in software from "
                                  "now on", tun=self.name, e=e.strerror)
                continue
            self.offloadWritten += 1
            self.packetsWritten += 1
        return plain

    def close(self):
        if self.fd is None:
            return
        if self._reading:
            self.reactor.removeReader(self)
            self._reading = False
        os.close(self.fd)
        self.fd = None
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    # -- IReadDescriptor

    def fileno(self):
        return -1 if self.fd is None else self.fd

    def logPrefix(self):
        return f"tun:{self.name}"

    def doRead(self):
        fd = self.fd
        if fd is None:
            return
        packets = []
        if self.readOffload:
            self._readOffloaded(fd, packets)
        elif self.offload:
            packets.extend(raw[VNET_HDR_LEN:] for raw in _drain(fd, MAX_READ + VNET_HDR_LEN))
        else:
            packets.extend(_drain(fd, MAX_READ))
        if packets:
            self.packetsRead += len(packets)
            receiver = self._receiver
            if receiver is not None:
                try:
                    receiver(packets)
                except Exception:
                    # One bad batch must not unregister the device from the reactor.
                    self.log.failure("packet receiver failed on {tun}", tun=self.name)

    def _readOffloaded(self, fd, packets):
        reads = 0
        for raw in _drain(fd, MAX_OFFLOAD_READ):
            if raw[0] & 1 or raw[1]:
                self.offloadRead += 1
                self.offloadDrops += fromRead(raw, packets)
            else:
                packets.append(raw[VNET_HDR_LEN:])
            reads += 1
        return reads

    def connectionLost(self, reason):
        self.close()

    def status(self):
        return {
            "name": self.name,
            "mtu": self.mtu,
            "packets_read": self.packetsRead,
            "packets_written": self.packetsWritten,
            "write_drops": self.writeDrops,
            "packets_joined": self.packetsJoined,
            "read_offload": self.readOffload,
            "offload_read": self.offloadRead,
            "offload_written": self.offloadWritten,
            "offload_drops": self.offloadDrops,
        }
